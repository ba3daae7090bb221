"""Loading pretrained weights for torchvision architectures, with a clear error when missing.

ImageNet weights cannot be downloaded on machines without internet access. The real path stays:
``weights="IMAGENET1K_V1"`` goes through torchvision's weights API (its hub cache, then a
download); a file path loads a compatible state dict; ``"none"`` gives random initialisation.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

#: Per-channel mean and SD of ImageNet (RGB, [0, 1] scale) that torchvision's pretrained models expect.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class WeightsUnavailableError(RuntimeError):
    """Requested pretrained weights are neither cached nor downloadable."""


def describe_weights(weights: str) -> str:
    """Human-readable provenance of a ``weights`` argument, recorded in results."""
    if weights in ("none", "", None):
        return "random initialisation (no pretrained weights)"
    if Path(weights).exists():
        try:  # a checkpoint of this repository names the method that trained it
            method = torch.load(weights, map_location="cpu", weights_only=True).get("method")
        except Exception:  # noqa: BLE001 (a plain or unreadable state dict: its file name is all we can say)
            method = None
        return f"fine-tuned from the {method} checkpoint {Path(weights).name}" if method else \
            f"state dict from {Path(weights).name}"
    return f"torchvision {weights}"


def load_pretrained(model: nn.Module, arch: str, weights: str | None, skip_prefixes: tuple[str, ...] = ()) -> str:
    """Load ``weights`` into ``model`` (a torchvision ``arch`` such as ``"resnet18"``).

    Args:
        model: the freshly built model.
        arch: torchvision builder name, used to find the weights enum (``ResNet18_Weights``...).
        weights: ``"none"``, a torchvision weights name (``"IMAGENET1K_V1"``, ``"DEFAULT"``), or a
            path to a state dict (a plain state dict, or a checkpoint with ``model_state``).
        skip_prefixes: parameter prefixes not loaded (e.g. the replaced classification head
            ``("fc.",)``); tensors whose shape differs from the model's are skipped as well.

    Returns:
        The provenance string of :func:`describe_weights`.

    Raises:
        WeightsUnavailableError: torchvision weights requested but not cached and not downloadable.
        FileNotFoundError: ``weights`` looks like a path that does not exist.
        ValueError: unknown weights name, or a state dict sharing no tensor with the model.
    """
    if weights in ("none", "", None):
        return describe_weights("none")
    path = Path(weights)
    if path.suffix in {".pt", ".pth", ".ckpt"} or "/" in str(weights):
        if not path.is_file():
            raise FileNotFoundError(f"weights file {path} not found")
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("model_state", state)
    else:
        import torchvision.models as tvm

        try:
            enum = tvm.get_model_weights(arch)
            spec = enum[weights] if weights != "DEFAULT" else enum.DEFAULT
        except (KeyError, ValueError) as err:
            raise ValueError(f"unknown weights {weights!r} for {arch}: {err}") from None
        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(spec.url).name
        try:
            state = spec.get_state_dict(progress=False, check_hash=False)
        except Exception as err:  # URLError, HTTPError, OSError, RuntimeError from the hub
            raise WeightsUnavailableError(
                f"{arch} {weights} weights are not available: not cached at {cache} and the download from "
                f"{spec.url} failed ({type(err).__name__}: {err}). Copy the file there, pass a local state "
                f"dict with --weights=/path/to/file.pth, or use --weights=none") from None
    own = model.state_dict()
    usable = {k: v for k, v in state.items()
              if k in own and own[k].shape == v.shape and not k.startswith(skip_prefixes)}
    if not usable:
        raise ValueError(f"weights {weights} share no tensor with {arch}; is it the right architecture?")
    missing = sorted(set(own) - set(usable))
    model.load_state_dict(usable, strict=False)
    log.info("loaded %d tensors from %s (%d left at initialisation: %s)", len(usable), weights, len(missing),
             missing[:6])
    return describe_weights(str(weights))
