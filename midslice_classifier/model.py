"""ResNet-18 (torchvision) with only its final layer replaced by a K-way linear layer.

Source: MathWorks "Brain MRI Age Classification Using Deep Learning": ``resnet18`` with the
``fc1000`` layer replaced by a fully connected layer with ``WeightLearnRateFactor`` and
``BiasLearnRateFactor`` 10, trained with SGD with momentum. He et al., CVPR 2016.
"""

from __future__ import annotations

import torchvision
from torch import nn

from common.pretrained import load_pretrained


def build_resnet18_classifier(num_classes: int, weights: str = "none") -> tuple[nn.Module, str]:
    """ResNet-18 with a new ``fc`` of ``num_classes`` outputs.

    Args:
        num_classes: number of classes K.
        weights: ``"none"``, ``"IMAGENET1K_V1"`` (torchvision weights API), or a path to a
            ResNet-18 state dict (e.g. the ``alz_cnn`` ResNet-18 checkpoint); the old head is not loaded.

    Returns:
        ``(model, provenance)``; the model maps (B, 3, 224, 224) float32 -> (B, K) logits.

    Raises:
        common.pretrained.WeightsUnavailableError: ImageNet weights neither cached nor downloadable.
    """
    model = torchvision.models.resnet18(weights=None)
    provenance = load_pretrained(model, "resnet18", weights, skip_prefixes=("fc.",))
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model, provenance


def parameter_groups(model: nn.Module, lr: float, head_lr_factor: float = 10.0,
                     weight_decay: float = 1e-4) -> list[dict]:
    """Optimizer groups: the new ``fc`` layer learns ``head_lr_factor`` times faster (source: 10)."""
    head = list(model.fc.parameters())
    head_ids = {id(p) for p in head}
    body = [p for p in model.parameters() if id(p) not in head_ids]
    return [{"params": body, "lr": lr, "weight_decay": weight_decay, "name": "backbone"},
            {"params": head, "lr": lr * head_lr_factor, "weight_decay": weight_decay, "name": "fc"}]


