"""Mid-slice classifier: slice extraction, training-only equalisation, head, weights handling."""

from __future__ import annotations

import json
import os
import urllib.error

import nibabel as nib
import numpy as np
import pytest
import torch

from common.data.checks import BadImageError
from common.pretrained import WeightsUnavailableError
from midslice_classifier.data import HistogramMatcher, extract_mid_slice, mid_slice_index, to_uint8
from midslice_classifier.model import build_resnet18_classifier, parameter_groups
from midslice_classifier.train import CLASS_NAMES, SliceDataset


def _volume(tmp_path, shape=(20, 24, 68), nan_mask=True):
    data = np.zeros(shape, np.int16)
    for z in range(shape[2]):
        data[4:16, 4:20, z] = 100 + z  # each axial slice has its own value
    data[0, 0, :] = -50  # outside the mask: removed by masking, so the minimum comes from the brain
    affine = np.diag([-2.0, 2.0, 2.0, 1.0])  # LAS, like the SPM-normalised ds000228 volumes
    img = tmp_path / "sub-x_normed_anat.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(img))
    mask = np.zeros(shape, np.float32)
    mask[2:18, 2:22, :] = 1
    if nan_mask:
        mask[10, 10, :] = np.nan
    mpath = tmp_path / "sub-x_analysis_mask.nii.gz"
    nib.save(nib.Nifti1Image(mask, affine), str(mpath))
    return img, mpath


def test_mid_slice_index_matches_matlab_round():
    assert mid_slice_index(68) == 33  # MATLAB 1-based round(68/2) = 34
    assert mid_slice_index(5) == 2  # round(2.5) = 3 (halves away from zero) -> 0-based 2


def test_extract_mid_slice_index_mask_nan_and_shape(tmp_path):
    img, mask = _volume(tmp_path)
    slc = extract_mid_slice(img, mask)
    assert slc.shape == (20, 24)
    assert slc.max() == pytest.approx(100 + 33), "the 0-based slice 33 was taken, minimum 0 subtracted"
    assert slc[0, 0] == 0 and slc[10, 10] == 0, "outside-mask and NaN-mask voxels are zero"
    assert slc.min() == 0


def test_extract_mid_slice_reports_bad_input(tmp_path):
    img, mask = _volume(tmp_path)
    empty = tmp_path / "empty_mask.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((20, 24, 68), np.float32), np.diag([-2.0, 2, 2, 1])), str(empty))
    with pytest.raises(BadImageError, match="empty after masking"):
        extract_mid_slice(img, empty)


def test_equalisation_is_fitted_on_training_images_only():
    rng = np.random.default_rng(0)
    train = [to_uint8(rng.gamma(2.0, 1.0, (30, 30))) for _ in range(5)]
    test_a = to_uint8(rng.uniform(0, 1, (30, 30)))
    matcher = HistogramMatcher().fit(train)
    target = matcher.target.copy()
    out = matcher.transform(test_a)
    assert out.dtype == np.uint8 and out.shape == test_a.shape
    np.testing.assert_array_equal(matcher.target, target)  # transforming test images never changes the target
    matched = np.bincount(out.ravel(), minlength=256) / out.size
    assert np.abs(np.cumsum(matched) - np.cumsum(target)).max() < 0.1, "output follows the training histogram"
    with pytest.raises(ValueError):
        HistogramMatcher().fit([])


def test_head_replacement_and_tenfold_head_learning_rate():
    model, provenance = build_resnet18_classifier(3, "none")
    assert model.fc.out_features == 3 and "random" in provenance
    groups = parameter_groups(model, lr=1e-3)
    assert [g["name"] for g in groups] == ["backbone", "fc"]
    assert groups[1]["lr"] == pytest.approx(1e-2)
    assert {id(p) for p in groups[1]["params"]} == {id(model.fc.weight), id(model.fc.bias)}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_forward_backward_tiny_batch():
    model, _ = build_resnet18_classifier(3, "none")
    data = SliceDataset([np.full((20, 24), 100, np.uint8)] * 2, [0, 2], [False, True], train=True, size=64)
    batch = torch.stack([data[i]["image"] for i in range(2)])
    assert batch.shape == (2, 3, 64, 64)
    logits = model(batch)
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2])).backward()
    assert model.conv1.weight.grad is not None and model.fc.weight.grad.abs().sum() > 0


def test_missing_imagenet_weights_fail_clearly(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsUnavailableError, match="not cached at .*resnet18-.*--weights=none"):
        build_resnet18_classifier(3, "IMAGENET1K_V1")


def test_local_state_dict_is_loaded_except_the_head(tmp_path):
    torch.manual_seed(1)
    donor, _ = build_resnet18_classifier(4, "none")  # e.g. a 4-class alz_cnn ResNet-18
    torch.save({"method": "alz_resnet18", "model_state": donor.state_dict()}, tmp_path / "donor.pt")
    model, provenance = build_resnet18_classifier(len(CLASS_NAMES), str(tmp_path / "donor.pt"))
    assert torch.equal(model.conv1.weight, donor.conv1.weight)
    assert torch.equal(model.layer4[1].bn2.running_mean, donor.layer4[1].bn2.running_mean)
    assert model.fc.out_features == 3 and "donor.pt" in provenance
    with pytest.raises(FileNotFoundError):
        build_resnet18_classifier(3, str(tmp_path / "missing.pt"))


def test_method_name_says_where_the_weights_came_from(tmp_path):
    import torch

    from midslice_classifier.train import _method_name

    ckpt = tmp_path / "best.pt"
    torch.save({"method": "alz_resnet18", "model_state": {}}, ckpt)
    plain = tmp_path / "resnet18_custom.pth"
    torch.save({"fc.weight": torch.zeros(1)}, plain)
    assert _method_name("none") == "midslice_resnet18"
    assert _method_name("IMAGENET1K_V1") == "midslice_resnet18_imagenet1k_v1"
    assert _method_name(str(ckpt)) == "midslice_resnet18_from_alz_resnet18"
    assert _method_name(str(plain)) == "midslice_resnet18_resnet18_custom"


def test_in_domain_wrapper_needs_the_alz_resnet18_run(tmp_path):
    import subprocess

    env = {**os.environ, "RESULTS_DIR": str(tmp_path)}
    out = subprocess.run(["bash", "midslice_classifier/train_from_alz.sh"], capture_output=True, text=True, env=env)
    assert out.returncode == 2 and "alz_resnet18__alzheimer4.json not found" in out.stderr
    (tmp_path / "alz_resnet18__alzheimer4.json").write_text(json.dumps({"run_dir": str(tmp_path / "gone")}))
    out = subprocess.run(["bash", "midslice_classifier/train_from_alz.sh"], capture_output=True, text=True, env=env)
    assert out.returncode == 2 and "best.pt" in out.stderr and "missing" in out.stderr
