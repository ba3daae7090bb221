"""One epoch of every brain-age method's ``paper`` profile on a CUDA machine: does the GPU code path
run, how fast, how much memory. Then, with 2 or more GPUs, the same for resnet3d under a 2-process
nccl torchrun.

    bash scripts/gpu_check.sh                  # on a CUDA machine, real data (ixi_hh)
    bash scripts/gpu_check.sh --dry_run        # anywhere: the same steps on the CPU, a tiny synthetic study

Writes ``benchmarks/gpu_check.json`` and ``benchmarks/gpu_check.md`` (per method: samples/s of the
training epoch, peak GPU memory, wall time, precision, the error if it failed). Nothing is published to
``results/``: these runs are one epoch, in fp16.

Settings that differ from the ``paper`` profiles, to fit 10 minutes on one GPU (and said in the report):
TSAN uses the affine shared preprocessing (``mni_brain``) instead of affine + SyN, whose registrations
alone would take the budget on a fresh machine. With ``--dry_run`` every model is also shrunk (small
grids, few channels) and the data is synthetic: it checks the script, not the models (those are run at
their source sizes by ``tests/test_paper_profiles.py``).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from common.cli import run as run_cli  # noqa: E402
from common.io import write_json, write_text  # noqa: E402
from common.runlog import setup_logging

log = logging.getLogger("gpu_check")
REPO = Path(__file__).resolve().parents[1]
METHODS = ("resnet3d", "tsan_stage1", "tsan_stage2", "oasis_resblock", "vgg16_svr")
#: Shrunk models for ``--dry_run`` (the CPU, a synthetic study).
DRY_RUN = {"resnet3d": dict(image_size=32, spacing_mm=6.0, widths="8,16,32,64", max_per_split=3),
           "tsan_stage1": dict(downsample=4, nb_filter=2, nb_block=2, registration="monai", batch_size=3,
                               max_per_split=3),
           "tsan_stage2": dict(batch_size=3, max_per_split=3), "oasis_resblock": dict(batch_size=3, max_per_split=3),
           "vgg16_svr": dict(keep_triplets=2, max_per_split=3)}


def _dry_study(root: Path) -> dict:
    """A synthetic study for ``--dry_run`` (the test fixtures' layout), with its split, and tiny sorters
    of length 3 where TSAN's paper profile looks for them (its own would take hours to pretrain)."""
    from tests.conftest import write_study
    from tsan import train as tsan
    from tsan.ranking import pretrain_sorter

    write_study(root, 20, shape=(24, 28, 24), sexes=["MF"[i % 2] for i in range(20)], age=lambda i: 20 + 3 * i)
    for tied in (True, False):
        pretrain_sorter(seq_len=3, steps=3, batch_size=8, hidden=8, n_val=16, tied=tied,
                        out_path=tsan.sorter_path(3, tsan.PROFILES["paper"], str(root / "cache"), tied=tied))
    return {"dataset": "study", "data_root": str(root / "data"), "results_dir": str(root / "results")}


def _one(method: str, common: dict, extra: dict, state: dict) -> dict:
    """Run one method for one epoch; returns its report row."""
    from baselines.oasis_resblock import train as oasis
    from baselines.vgg16_svr import train as vgg
    from resnet3d import train as resnet3d
    from tsan import train as tsan

    base = {k: common[k] for k in ("data_root", "runs_dir", "results_dir", "cache_dir")}
    base["run_name"] = common["run_name"]
    base["fold"] = 0  # one outer fold of the shared folds
    dev = common["device"]
    if method == "resnet3d":
        run = resnet3d.train(dataset=common["dataset"], profile="paper", epochs=1, device=dev, publish=False, **extra,
                             **base)
    elif method == "tsan_stage1":
        kwargs = {"registration": "mni_brain", **extra}
        run = tsan.train_first_stage(dataset=common["dataset"], profile="paper", epochs=1, device=dev, publish=False,
                                     **kwargs, **base)
        state["tsan_stage1"] = run
    elif method == "tsan_stage2":
        if "tsan_stage1" not in state:
            raise RuntimeError("stage 2 needs the stage-1 run, which failed")
        run = tsan.train_second_stage(first_stage=state["tsan_stage1"], epochs=1, device=dev, publish=False, **extra,
                                      **base)
    elif method == "oasis_resblock":
        run = oasis.train(dataset=common["dataset"], profile="paper", epochs=1, device=dev, publish=False, **extra,
                          **base)
    else:
        run = vgg.main(dataset=common["dataset"], profile="paper", publish=False, **extra, **base)
    config = json.loads((Path(run) / "config.json").read_text())
    row = {"precision": config.get("precision", "fp32")}
    metrics = Path(run) / "metrics.csv"
    if metrics.exists():  # the trained methods: samples of the one training epoch per second
        seconds = float(pd.read_csv(metrics)["time/elapsed_s"].iloc[0])
        row["samples_per_s"] = round(config["n_images"]["train"] / seconds, 2)
    return row


def main(dry_run: bool = False, dataset: str = "ixi_hh", data_root: str | None = None, methods: str = ",".join(METHODS),
         out_dir: str = "benchmarks", cache_dir: str = ".cache", torchrun: bool = True) -> dict:
    """Run the check and write the report.

    Args:
        dry_run: on the CPU, shrunk models, a synthetic study in a temporary folder.
        dataset: the dataset of a real run.
        data_root: data folder (default: $DATA_ROOT, ../shared/data, data/).
        methods: comma-separated subset of ``resnet3d,tsan_stage1,tsan_stage2,oasis_resblock,vgg16_svr``.
        out_dir: where ``gpu_check.json`` and ``gpu_check.md`` go.
        cache_dir: preprocessing cache.
        torchrun: with 2 or more GPUs, also run resnet3d under a 2-process nccl torchrun.

    Returns:
        The report.

    Raises:
        RuntimeError: no CUDA device and not ``dry_run``.
    """
    setup_logging()
    if not dry_run and not torch.cuda.is_available():
        raise RuntimeError("no CUDA device: run it on a GPU machine, or pass --dry_run")
    names = methods.split(",") if isinstance(methods, str) else list(methods)
    unknown = sorted(set(names) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {METHODS}")
    tmp = tempfile.TemporaryDirectory()
    common = {"dataset": dataset, "data_root": data_root, "results_dir": "results", "cache_dir": cache_dir,
              "runs_dir": str(Path(tmp.name) / "runs"), "device": "cpu" if dry_run else "cuda",
              "run_name": f"gpu_check-{time.strftime('%Y%m%dT%H%M%S')}"}
    if dry_run:
        common |= _dry_study(Path(tmp.name)) | {"cache_dir": str(Path(tmp.name) / "cache")}
    report = {"dry_run": dry_run, "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() and not dry_run
              else "cpu", "gpus": torch.cuda.device_count(), "dataset": common["dataset"], "methods": {},
              "settings": "paper profiles, 1 epoch; TSAN with the affine shared preprocessing (mni_brain)"
                          + ("; dry run: shrunk models, synthetic study" if dry_run else "")}
    state: dict = {}
    for method in names:
        if torch.cuda.is_available() and not dry_run:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.time()
        try:
            row = _one(method, common, DRY_RUN[method] if dry_run else {}, state)
        except Exception as err:  # one failing method must not hide the others' results
            log.exception("%s failed", method)
            row = {"error": f"{type(err).__name__}: {err}"}
        row["wall_s"] = round(time.time() - t0, 1)
        if torch.cuda.is_available() and not dry_run:
            row["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
        report["methods"][method] = row
        log.info("%s: %s", method, row)
    if torchrun and report["gpus"] >= 2 and not dry_run:
        report["torchrun_resnet3d"] = _torchrun(common)
    write_json(Path(out_dir) / "gpu_check.json", report)
    write_text(Path(out_dir) / "gpu_check.md", _markdown(report))
    tmp.cleanup()
    return report


def _torchrun(common: dict) -> dict:
    """resnet3d's paper profile, 1 epoch, 2 processes with nccl (one GPU each)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "resnet3d.train", "train",
           f"--dataset={common['dataset']}", "--profile=paper", "--epochs=1", "--publish=False", "--device=cuda",
           f"--runs_dir={common['runs_dir']}", f"--cache_dir={common['cache_dir']}", "--run_name=gpu_check_ddp"]
    if common["data_root"]:
        cmd.append(f"--data_root={common['data_root']}")
    t0 = time.time()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    row = {"returncode": done.returncode, "wall_s": round(time.time() - t0, 1)}
    if done.returncode:
        row["error"] = (done.stdout + done.stderr)[-2000:]
    return row


def _markdown(report: dict) -> str:
    lines = ["# GPU check", "", f"Device: {report['device']} ({report['gpus']} GPU(s)); data: {report['dataset']}; "
             f"{report['settings']}. Generated by `bash scripts/gpu_check.sh`; do not edit by hand.", "",
             "| method | precision | training samples/s | peak GPU memory (GiB) | wall time (s) | error |",
             "|---|---|---|---|---|---|"]
    for method, row in report["methods"].items():
        lines.append(f"| {method} | {row.get('precision', '–')} | {row.get('samples_per_s', '–')} | "
                     f"{row.get('peak_gpu_memory_gib', '–')} | {row['wall_s']} | {row.get('error', '')[:200]} |")
    if "torchrun_resnet3d" in report:
        t = report["torchrun_resnet3d"]
        lines += ["", f"2-process nccl torchrun of resnet3d (paper, 1 epoch): return code {t['returncode']}, "
                      f"{t['wall_s']} s."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    run_cli(main, name="scripts/gpu_check.py")
