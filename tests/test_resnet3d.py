"""3D ResNet-18: shapes, gradients, parameter count, scheduler and checkpoint safety."""

from __future__ import annotations

import pytest
import torch

from common.io import save_torch
from common.training import CheckpointMismatchError, load_checkpoint
from resnet3d.model import BrainAgeResNet3D
from resnet3d.train import PROFILES, _warmup_cosine

TINY = (4, 8, 8, 16)


@pytest.mark.parametrize("batch", [1, 2])
def test_forward_backward_tiny(batch):
    torch.manual_seed(0)
    model = BrainAgeResNet3D(widths=TINY, init_age_bias=40.0)
    x = torch.randn(batch, 1, 32, 32, 32)
    model.train(batch > 1)
    out = model(x)
    assert out.shape == (batch,) and torch.isfinite(out).all()
    torch.nn.HuberLoss()(out, torch.full((batch,), 50.0)).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.trunk.conv1.weight.grad.abs().sum() > 0, "gradient reaches the stem"


def test_architecture_matches_source():
    model = BrainAgeResNet3D()
    assert model.trunk.conv1.kernel_size == (7, 7, 7) and model.trunk.conv1.stride == (2, 2, 2)
    assert model.trunk.conv1.out_channels == 64
    assert [len(getattr(model.trunk, f"layer{i}")) for i in range(1, 5)] == [2, 2, 2, 2]
    assert model.trunk.layer4[-1].conv2.out_channels == 512
    assert model.dropout.p == 0.3 and model.fc.in_features == 512 and model.fc.out_features == 1
    # the source's shortcut 1x1x1 convolutions have no bias (BatchNorm follows)
    assert all(m.bias is None for m in model.trunk.modules() if isinstance(m, torch.nn.Conv3d))
    assert sum(p.numel() for p in model.parameters()) == 33_160_513
    assert float(model.fc.bias) == 0.0


def test_output_layer_is_xavier_uniform():
    torch.manual_seed(0)
    weight = BrainAgeResNet3D().fc.weight
    bound = (6 / (512 + 1)) ** 0.5  # Xavier uniform, as the source; PyTorch's default would be 1/sqrt(512)
    assert weight.abs().max() <= bound and weight.abs().max() > 0.9 * bound


def test_output_bias_initialisation():
    model = BrainAgeResNet3D(widths=TINY, init_age_bias=47.5).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 1, 32, 32, 32))
    assert float(model.fc.bias) == 47.5 and torch.isfinite(out).all()


def test_paper_profile_is_the_source():
    p = PROFILES["paper"]
    assert (p["image_size"], p["spacing_mm"], p["batch_size"], p["lr"], p["weight_decay"], p["epochs"]) == \
        (96, 2.0, 2, 1e-5, 1e-4, 100)
    assert (p["warmup_epochs"], p["min_lr"], p["huber_delta"], p["dropout"], p["grad_clip"]) == (5, 1e-6, 1.0, 0.3, 1.0)
    assert p["init_bias_to_mean"] is False


def test_warmup_then_cosine_schedule():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-5)
    sched = _warmup_cosine(opt, epochs=100, warmup=5, min_lr=1e-6)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # the source's LambdaLR (e + 1) / 5: epochs 1-5 at 0.2, 0.4, ..., 1.0 of the peak
    assert lrs[:5] == pytest.approx([2e-6, 4e-6, 6e-6, 8e-6, 1e-5])
    assert lrs[5] == pytest.approx(1e-5)  # the cosine starts at the peak
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))
    assert lrs[-1] == pytest.approx(1e-6, rel=0.05)


def test_checkpoint_from_another_method_is_refused(tmp_path):
    save_torch(tmp_path / "x.pt", {"method": "tsan_stage1", "model_state": {}})
    with pytest.raises(CheckpointMismatchError, match="tsan_stage1"):
        load_checkpoint(tmp_path / "x.pt", "resnet3d")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt", "resnet3d")


def test_augmentation_flip_axes():
    from monai.transforms import RandFlip

    from resnet3d.train import _augmentation

    assert [t.flipper.spatial_axis for t in _augmentation(0, (0, 1, 2)).transforms if isinstance(t, RandFlip)] == [0, 1, 2]
    assert [t.flipper.spatial_axis for t in _augmentation(0, (0,)).transforms if isinstance(t, RandFlip)] == [0]
    assert PROFILES["paper"]["flip_axes"] == "0,1,2", "the source flips along every axis"
