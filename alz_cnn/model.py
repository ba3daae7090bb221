"""AltzCNN, the DoRA classification head, and the torchvision models of the transfer comparison.

Source: "DL-Project-Brain-MRI-Classification" (Kaplun et al., AltzCNN notebook): AltzCNN, and
ResNet-50, EfficientNet-B0 (each also with a DoRA head) and ViT-B/16 fine-tuned on 4 Alzheimer
severity classes. DoRA: Liu et al., "DoRA: Weight-Decomposed Low-Rank Adaptation", ICML 2024
(arXiv:2402.09353).
"""

from __future__ import annotations

import math

import torch
import torchvision
from torch import nn

from common.pretrained import load_pretrained


def _conv(cin: int, cout: int, groups: int | None) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1)]
    if groups:
        layers.append(nn.GroupNorm(groups, cout))
    layers.append(nn.ReLU(inplace=True))
    return layers


class AltzCNN(nn.Module):
    """The source's AltzCNN: six 3x3 convolutions with GroupNorm and four max-pools, then a 5-layer MLP.

    Convolutions (padding 1, ReLU after each): 3->32 (GN 8, max-pool) -> 64 (GN 8) -> 128 (GN 8,
    max-pool, Dropout2d 0.05) -> 128 (GN 16) -> 256 (no norm, max-pool, Dropout2d 0.05) -> 256 (GN 16,
    max-pool); flatten 256x4x4 = 4096 -> FC 1024 -> 512 -> 256 -> 128 -> ``num_classes`` with ReLU and
    Dropout 0.5 before each of the first four. 6,012,164 parameters for 4 classes.

    Shapes: ``x`` (B, 3, 64, 64) float in [0, 1] (no normalisation) -> (B, num_classes) logits.
    """

    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.features = nn.Sequential(
            *_conv(3, 32, 8), nn.MaxPool2d(2),
            *_conv(32, 64, 8),
            *_conv(64, 128, 8), nn.MaxPool2d(2), nn.Dropout2d(0.05),
            *_conv(128, 128, 16),
            *_conv(128, 256, None), nn.MaxPool2d(2), nn.Dropout2d(0.05),
            *_conv(256, 256, 16), nn.MaxPool2d(2),
        )
        widths = [4096, 1024, 512, 256, 128]
        mlp: list[nn.Module] = [nn.Flatten()]
        for cin, cout in zip(widths[:-1], widths[1:]):
            mlp += [nn.Dropout(0.5), nn.Linear(cin, cout), nn.ReLU(inplace=True)]
        mlp.append(nn.Linear(widths[-1], num_classes))
        self.classifier = nn.Sequential(*mlp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (64, 64):
            raise ValueError(f"AltzCNN expects 64x64 inputs (flatten size 4096), got {tuple(x.shape[-2:])}")
        return self.classifier(self.features(x))


class DoRALinear(nn.Module):
    """A linear layer adapted with DoRA (weight-decomposed low-rank adaptation), as the source's
    ``LowRankLayer`` (notebook cell 29) defines it.

    ``W' = m * (W0 + alpha * (A B)^T) / ||W0 + alpha * (A B)^T||_0`` where ``||.||_0`` is the L2 norm
    over dim 0 of the (out_features, in_features) weight, i.e. one norm per *input* feature; the
    magnitude ``m`` has shape (1, in_features) and starts at ``||W0||_0``; ``A`` (in_features, rank)
    is drawn from N(0, 1/rank), ``B`` (rank, out_features) is zero, and ``alpha`` is used as given
    (the source does not divide it by the rank). So the layer equals the wrapped one at
    initialisation and adds ``in*rank + rank*out + in`` parameters (EfficientNet-B0's 1280 -> 4 head:
    6,416; ResNet-50's 2048 -> 4: 10,256, the differences of the source's printed parameter counts).
    ``W0`` and the bias stay trainable, as in the source, which trains the whole network. Liu et al.
    2024 (eq. 5) normalise per output unit and scale the update by alpha/rank; the source's choice is
    kept here.

    Shapes: (..., in_features) -> (..., out_features).
    """

    def __init__(self, base: nn.Linear, rank: int = 4, alpha: float = 8.0):
        super().__init__()
        if rank < 1:
            raise ValueError(f"DoRA rank must be >= 1, got {rank}")
        self.weight = nn.Parameter(base.weight.detach().clone())
        self.bias = nn.Parameter(base.bias.detach().clone()) if base.bias is not None else None
        self.lora_a = nn.Parameter(torch.randn(base.in_features, rank) / math.sqrt(rank))
        self.lora_b = nn.Parameter(torch.zeros(rank, base.out_features))
        self.magnitude = nn.Parameter(self.weight.detach().norm(dim=0, keepdim=True))
        self.rank, self.alpha = rank, float(alpha)

    def adapted_weight(self) -> torch.Tensor:
        """The effective (out_features, in_features) weight ``m * V / ||V||_0``."""
        direction = self.weight + self.alpha * (self.lora_a @ self.lora_b).T
        return self.magnitude * direction / direction.norm(dim=0, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.adapted_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"in={self.weight.shape[1]}, out={self.weight.shape[0]}, rank={self.rank}, alpha={self.alpha}"


#: Transfer models: torchvision builder, the attribute path of the final linear layer.
TRANSFER_ARCHS = {
    "resnet18": ("resnet18", "fc"),
    "resnet50": ("resnet50", "fc"),
    "efficientnet_b0": ("efficientnet_b0", "classifier.1"),
    "vit_b_16": ("vit_b_16", "heads.head"),
}


def _get(module: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        module = getattr(module, part)
    return module


def _set(module: nn.Module, path: str, value: nn.Module) -> None:
    *parents, last = path.split(".")
    for part in parents:
        module = getattr(module, part)
    setattr(module, last, value)


def build_transfer_model(arch: str, num_classes: int, weights: str = "none", dora: bool = False,
                         dora_rank: int = 4, dora_alpha: float = 8.0, image_size: int = 224) -> tuple[nn.Module, str]:
    """A torchvision ImageNet architecture with its final layer replaced by a ``num_classes`` head.

    Args:
        arch: a key of :data:`TRANSFER_ARCHS`.
        num_classes: K.
        weights: ``"none"``, ``"IMAGENET1K_V1"`` (torchvision weights API; fails clearly when the
            file is neither cached nor downloadable), or a path to a compatible state dict.
        dora: wrap the new head in :class:`DoRALinear` (rank ``dora_rank``, ``dora_alpha``).
        image_size: input size; only ViT needs it (its position embedding is sized by it).

    Returns:
        ``(model, provenance)``; the model maps (B, 3, S, S) float32 -> (B, K) logits.

    Raises:
        KeyError: unknown ``arch``.
        common.pretrained.WeightsUnavailableError: ImageNet weights requested but unavailable.
    """
    if arch not in TRANSFER_ARCHS:
        raise KeyError(f"unknown architecture {arch!r}; choose from {sorted(TRANSFER_ARCHS)}")
    builder, head_path = TRANSFER_ARCHS[arch]
    kwargs = {"image_size": image_size} if arch.startswith("vit") else {}
    model = getattr(torchvision.models, builder)(weights=None, **kwargs)
    provenance = load_pretrained(model, builder, weights, skip_prefixes=(head_path + ".",))
    old = _get(model, head_path)
    head: nn.Module = nn.Linear(old.in_features, num_classes)
    if dora:
        head = DoRALinear(head, dora_rank, dora_alpha)
    _set(model, head_path, head)
    return model, provenance


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def model_size_mb(model: nn.Module) -> float:
    """Size of the parameters and buffers in MB as the source reports it (2^20 bytes: AltzCNN 22.93)."""
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers())) / 2**20
