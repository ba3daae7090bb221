"""Results that do not depend on the CPU: precision fixed by the profile, AVX2-pinned kernels,
deterministic runs with identical result files, non-finite steps skipped and counted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from common import device as device_mod
from common import numerics
from common.cv import pool_folds
from common.data.datasets import VolumeDataset
from common.runlog import RunLogger
from common.training import FitConfig, NonFiniteTrainingError, fit_model
from tests.conftest import fold_result, write_study
from tests.test_training import TinyRegressor, _frame, tiny_loaders

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def _brain_age_profiles():
    from baselines.oasis_resblock.train import PROFILES as OASIS
    from resnet3d.train import PROFILES as RESNET3D
    from tsan.train import PROFILES as TSAN

    return {"resnet3d": RESNET3D, "oasis_resblock": OASIS, "tsan": TSAN}


def test_cpu_profiles_train_in_fp32_even_with_native_bf16(monkeypatch):
    monkeypatch.setattr(device_mod, "cpu_has_fast_bf16", lambda: True)
    for method, profiles in _brain_age_profiles().items():
        assert device_mod.resolve_precision(CPU, profiles["cpu"]["amp_dtype"]) == "fp32", method
        # a paper profile run on a CPU (tests, a laptop) is fp32 too: fp16 is CUDA mixed precision
        assert device_mod.resolve_precision(CPU, profiles["paper"]["amp_dtype"]) == "fp32", method


def test_precision_is_asked_for_never_detected(monkeypatch):
    monkeypatch.setattr(device_mod, "cpu_has_fast_bf16", lambda: False)
    assert device_mod.resolve_precision(CPU, "bf16") == "bf16", "an explicit bf16 is honoured (with a warning)"
    assert device_mod.resolve_precision(torch.device("cuda"), "fp16") == "fp16"
    assert device_mod.autocast_dtype("fp32") is None and device_mod.autocast_dtype("bf16") == torch.bfloat16
    with pytest.raises(ValueError, match="unknown precision"):
        device_mod.resolve_precision(CPU, "fp8")
    # the paper profiles' CUDA precision: fp16 where the source uses CUDA AMP, fp32 where it does not
    profiles = _brain_age_profiles()
    assert profiles["resnet3d"]["paper"]["amp_dtype"] == "fp16"
    assert profiles["oasis_resblock"]["paper"]["amp_dtype"] == "fp32"
    assert profiles["tsan"]["paper"]["amp_dtype"] == "fp32"


def test_precision_of_runs_recorded_before_the_precision_key():
    assert device_mod.precision_of_run({"precision": "bf16"}) == "bf16"
    assert device_mod.precision_of_run({"amp": True, "amp_dtype": "torch.bfloat16"}) == "bf16"
    assert device_mod.precision_of_run({"amp": True, "amp_dtype": "None"}) == "fp32"


def _python(code: str, **env) -> str:
    full = {k: v for k, v in os.environ.items()
            if k not in numerics.AVX2_PIN and k not in (numerics.ISA_ENV, numerics.ONEDNN_ENV, numerics.ITK_THREADS[0])}
    full.update({"PYTHONPATH": str(REPO), **env})
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=full, capture_output=True, text=True,
                          check=True, timeout=120).stdout


@pytest.mark.skipif("avx2" not in numerics.cpu_flags(), reason="x86-64 CPU with AVX2 only")
def test_importing_common_pins_every_kernel_library_to_avx2():
    code = ("import resnet3d.train, torch; x = torch.randn(2, 4, 16, 16, 16);"
            "torch.nn.Conv3d(4, 8, 3)(x).sum().backward(); print(torch.backends.cpu.get_cpu_capability())")
    out = _python(code, ONEDNN_VERBOSE="1", **{numerics.ONEDNN_ENV: "1"})  # oneDNN asked for: capped
    assert out.strip().splitlines()[-1] == "AVX2"
    kernels = [line for line in out.splitlines() if line.startswith("onednn_verbose") and ",exec," in line]
    assert kernels and not any("avx512" in line or "amx" in line for line in kernels), kernels


@pytest.mark.skipif("avx2" not in numerics.cpu_flags(), reason="x86-64 CPU with AVX2 only")
def test_fp32_runs_no_onednn_kernel_unless_asked():
    code = ("import resnet3d.train, torch; x = torch.randn(2, 4, 16, 16, 16);"
            "torch.nn.BatchNorm3d(8)(torch.nn.Conv3d(4, 8, 3)(x)).sum().backward();"
            "print(torch.backends.mkldnn.enabled)")
    out = _python(code, ONEDNN_VERBOSE="1")
    assert out.strip().splitlines()[-1] == "False"
    assert not [line for line in out.splitlines() if line.startswith("onednn_verbose") and ",exec," in line]
    bf16 = ("import torch; from common.device import configure_numerics;"
            "print(configure_numerics(torch.device('cpu'), 'bf16')['onednn'])")
    assert _python(bf16).strip().splitlines()[-1] == "True"  # CPU bf16 convolutions need oneDNN
    with pytest.raises(subprocess.CalledProcessError):
        _python("import common.device", **{numerics.ONEDNN_ENV: "yes"})


@pytest.mark.skipif("avx2" not in numerics.cpu_flags(), reason="x86-64 CPU with AVX2 only")
def test_fp32_training_gives_the_bits_measured_on_both_epyc_kinds():
    """5 AdamW steps of the 3D ResNet-18 (``scripts/bench.py --fingerprint_worker``) end in the weights
    that an AVX2-only EPYC (Zen 3, 2026-12-04) and an AVX-512 EPYC (Zen 4, 2026-12-05) both gave
    without oneDNN (benchmarks/BENCHMARKS.md, numerics section); with oneDNN they differed."""
    out = _python(f"import runpy, sys; sys.argv = ['bench', '--fingerprint_worker'];"
                  f"runpy.run_path({str(REPO / 'scripts' / 'bench.py')!r}, run_name='__main__')", OMP_NUM_THREADS="2")
    fingerprint = json.loads(out.strip().splitlines()[-1])
    assert fingerprint["sha256"] == "0ce4052ab2f9436e"
    assert {"matmul", "conv3d backward", "AdamW step", "numpy matmul"} <= set(fingerprint["ops"]), "per-kernel digests"
    native = _python("import common, os; print(os.environ.get('ATEN_CPU_CAPABILITY'))", BRAINMRI_CPU_ISA="native")
    assert native.strip() == "None", "BRAINMRI_CPU_ISA=native leaves the libraries alone"


def test_mkl_is_pinned_to_its_cpu_independent_branch():
    """MKL's AVX2 branch gave different sgemm bits on an Intel Xeon and an AMD EPYC; COMPATIBLE did not."""
    assert numerics.AVX2_PIN["MKL_CBWR"] == "COMPATIBLE"
    if "avx2" in numerics.cpu_flags():
        assert _python("import common, os; print(os.environ.get('MKL_CBWR'))").strip() == "COMPATIBLE"


def test_itk_runs_one_thread_so_registration_is_reproducible():
    """ITK's threads sum in a varying order: importing common keeps it to one (a user's value stays)."""
    assert _python("import common, os; print(os.environ.get('ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS'))").strip() == "1"
    mine = _python("import common, os; print(os.environ.get('ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS'))",
                   ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS="3")
    assert mine.strip() == "3"


def test_every_adam_step_is_ieee_exact_so_no_cpu_vendor_changes_it():
    """The project's Adam/AdamW step (common.training.adam) uses only IEEE-exact vector arithmetic: with
    betas 0 and eps 0 one step from zero is -g / sqrt(g * g) in float32, bit for bit. The unfused step
    takes its square root from MKL's VML, which is not correctly rounded and differs between CPU vendors."""
    from common.training import adam

    g = torch.randn(100_003, generator=torch.Generator().manual_seed(0))
    expected = torch.from_numpy(-(g.numpy() / np.sqrt(g.numpy() * g.numpy())))
    for decoupled in (False, True):
        param = nn.Parameter(torch.zeros_like(g))
        param.grad = g.clone()
        opt = adam([param], lr=1.0, betas=(0.0, 0.0), eps=0.0, decoupled=decoupled)
        assert opt.defaults["fused"] is True
        opt.step()
        assert torch.equal(param.detach(), expected)


def test_result_files_record_precision_and_cpu(tmp_path):
    from common.runlog import environment_info

    env = environment_info(CPU)
    cpu = env["cpu"]
    assert set(cpu["cpu_flags"]) == {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}
    assert cpu["threads"] == torch.get_num_threads() and cpu["torch"] == torch.__version__
    assert cpu["cpu_capability"] in env["device_name"]


def _train_resnet3d(tmp_path: Path, run_name: str, **overrides) -> Path:
    from resnet3d.train import train

    args = dict(dataset="study", data_root=str(tmp_path / "data"), results_dir=str(tmp_path / "results"),
                cache_dir=str(tmp_path / "cache"), runs_dir=str(tmp_path / "runs"), profile="cpu", epochs=2,
                batch_size=2, image_size=16, spacing_mm=3.0, widths="4,4,8,8", pipeline="monai", run_name=run_name, fold=0)
    return Path(train(**{**args, **overrides}))


VOLATILE = {"wall_time_s", "finished_utc", "run_dir", "predictions"}


def test_same_command_twice_gives_identical_checkpoints_and_result_files(tmp_path):
    write_study(tmp_path, 20)
    run_a = _train_resnet3d(tmp_path, "a")
    doc_a = fold_result(run_a, "resnet3d__study")
    run_b = _train_resnet3d(tmp_path, "b")
    doc_b = fold_result(run_b, "resnet3d__study")
    a, b = torch.load(run_a / "best.pt", weights_only=True), torch.load(run_b / "best.pt", weights_only=True)
    for name, tensor in a["model_state"].items():
        assert torch.equal(tensor, b["model_state"][name]), name
    assert {k: v for k, v in doc_a.items() if k not in VOLATILE} == {k: v for k, v in doc_b.items() if k not in VOLATILE}
    assert doc_a["precision"] == "fp32" and doc_a["parameters"]["nonfinite_steps"] == 0
    assert doc_a["environment"]["cpu"]["deterministic"] is True
    for run in (run_a, run_b):
        assert (pd.read_csv(run / "metrics.csv")["train/nonfinite_steps"] == 0).all()
    log = (run_a / "train.log").read_text()
    assert "epoch 1/2: train loss" in log and "epoch 2/2: train loss" in log and "precision fp32" in log
    assert "\r" not in log and "\x1b" not in log, "no progress-bar control codes in the log file"
    for plot in ("scatter_test.png", "gap_vs_age_test.png", "training_curves.png"):
        assert (run_a / plot).stat().st_size > 0, plot


def test_bf16_is_an_explicit_option_and_shown_in_the_leaderboard(tmp_path):
    from scripts.make_leaderboard import load_results, render

    write_study(tmp_path, 20)
    run = _train_resnet3d(tmp_path, "bf16", epochs=1, amp_dtype="bf16")
    assert json.loads((run / "config.json").read_text())["precision"] == "bf16"
    assert fold_result(run, "resnet3d__study")["precision"] == "bf16"
    pool_folds([run], run.parent, tmp_path / "results")
    assert "| cpu, bf16 |" in render(load_results(tmp_path / "results"), tmp_path / "results")


class NaNForSteps(nn.Module):
    """Huber loss that returns NaN on the steps listed in ``bad`` (0-based, counted over the run)."""

    def __init__(self, bad: set[int]):
        super().__init__()
        self.bad, self.calls, self.inner = bad, 0, nn.HuberLoss()

    def forward(self, pred, target):
        loss = self.inner(pred, target)
        if torch.is_grad_enabled():  # training steps only, not the validation loss
            step, self.calls = self.calls, self.calls + 1
            if step in self.bad:
                return loss * float("nan")
        return loss


def _fit_with_loss(tmp_path, loss_fn, epochs=2, limit=5, run="nan"):
    frame = _frame(tmp_path)
    torch.manual_seed(0)
    model = TinyRegressor()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    loaders = tiny_loaders(frame, batch_size=2)
    logger = RunLogger(tmp_path / run, {"test": True}, CPU)
    out = fit_model(model, opt, None, loss_fn, *loaders, CPU, FitConfig(epochs=epochs, seed=3, max_nonfinite_steps=limit),
                    tmp_path / run, logger, {"method": "tiny"})
    logger.close()
    return out, model, tmp_path / run


def test_nonfinite_steps_are_skipped_counted_and_logged(tmp_path, caplog):
    out, _, run = _fit_with_loss(tmp_path, NaNForSteps({1, 5, 6}))  # 4 steps per epoch: epoch 0 has 1, epoch 1 has 2
    assert out["nonfinite_steps"] == 3
    assert list(pd.read_csv(run / "metrics.csv")["train/nonfinite_steps"]) == [1, 2]
    assert "skipped a training step" in caplog.text
    assert np.isfinite(pd.read_csv(run / "metrics.csv")["loss/train"]).all(), "the mean loss is over finite steps"


def test_skipped_step_leaves_weights_unchanged(tmp_path):
    _, skipped, _ = _fit_with_loss(tmp_path, NaNForSteps({0, 1, 2, 3}), epochs=1, run="all_bad")
    torch.manual_seed(0)
    fresh = TinyRegressor()
    for name, tensor in fresh.state_dict().items():
        if "running" in name or "num_batches" in name:
            continue  # BatchNorm statistics move in the forward pass
        assert torch.equal(tensor, skipped.state_dict()[name]), name


def test_consecutive_nonfinite_steps_stop_the_run_with_a_clear_error(tmp_path):
    with pytest.raises(NonFiniteTrainingError, match="3 consecutive training steps"):
        _fit_with_loss(tmp_path, NaNForSteps(set(range(100))), limit=3, run="dead")


class WrongGradientUnderAutocast(nn.Conv3d):
    """Same forward value with and without autocast, but 100x gradients under autocast (what the
    oneDNN bf16 backward-weights fault does to a real convolution)."""

    def forward(self, x):
        y = super().forward(x)
        if torch.is_autocast_enabled("cpu"):
            y = y.detach() + (y - y.detach()) * 100
        return y


def test_autocast_kernel_check_refuses_wrong_gradients_and_passes_sound_ones(tmp_path):
    from common.training import AutocastGradientError, check_autocast_kernels

    frame = _frame(tmp_path)
    batch = next(iter(DataLoader(VolumeDataset(frame), batch_size=4)))
    torch.manual_seed(0)
    sound = TinyRegressor()
    before = {k: v.clone() for k, v in sound.state_dict().items()}
    rng = torch.random.get_rng_state()
    errors = check_autocast_kernels(sound, batch, CPU, torch.bfloat16)
    assert set(errors) == {"net.0", "net.6"} and max(errors.values()) < 0.02, errors
    assert all(torch.equal(v, sound.state_dict()[k]) for k, v in before.items()), "the model is not touched"
    assert torch.equal(rng, torch.random.get_rng_state()), "the random state is not touched"
    sound.net[0] = WrongGradientUnderAutocast(1, 4, 3)
    with pytest.raises(AutocastGradientError, match=r"net.0 at input \(4, 1, 8, 8, 8\): 99"):
        check_autocast_kernels(sound, batch, CPU, torch.bfloat16)
