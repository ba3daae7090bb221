"""scripts/gpu_check.py --dry_run: the GPU check's steps run on the CPU and write a report."""

from __future__ import annotations

import json

import pytest


def test_gpu_check_dry_run_writes_a_row_per_method(tmp_path):
    from scripts import gpu_check

    report = gpu_check.main(dry_run=True, out_dir=str(tmp_path))
    assert set(report["methods"]) == set(gpu_check.METHODS)
    for method, row in report["methods"].items():
        assert "error" not in row, f"{method}: {row.get('error')}"
        if method != "vgg16_svr":
            assert row["samples_per_s"] > 0 and row["precision"] == "fp32"
    assert json.loads((tmp_path / "gpu_check.json").read_text())["dry_run"] is True
    assert "| resnet3d |" in (tmp_path / "gpu_check.md").read_text()


def test_gpu_check_needs_cuda_without_dry_run(tmp_path):
    import torch

    from scripts import gpu_check

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(RuntimeError, match="no CUDA device"):
        gpu_check.main(out_dir=str(tmp_path))
