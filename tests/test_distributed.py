"""DistributedDataParallel: 2 CPU processes (gloo, loopback) train to the same weights as one process
with the same global batch, evaluate every validation sample once, and only rank 0 writes."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from common import distributed

WORKER = Path(__file__).with_name("ddp_worker.py")
#: fp32 sums of 4 + 4 samples (gradient all-reduce) vs 8 samples in one process, over 12 steps.
TOLERANCE = 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str]) -> str:
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=repo)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="this torch build has no gloo backend")
def test_two_gloo_processes_match_one_process(tmp_path):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    _run([sys.executable, str(WORKER), str(single)])
    _run([sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
          "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(WORKER), str(ddp)])
    a = torch.load(single / "last.pt", weights_only=False)["model_state"]
    b = torch.load(ddp / "last.pt", weights_only=False)["model_state"]
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=TOLERANCE, rtol=0), name
    start = torch.load(single / "last.pt", weights_only=False)
    assert start["epoch"] == 2
    # validation MAE over the 7 gathered samples (none padded, none dropped) matches, epoch by epoch
    va, vb = pd.read_csv(single / "metrics.csv"), pd.read_csv(ddp / "metrics.csv")
    assert len(va) == len(vb) == 3
    assert (va["mae/val"] - vb["mae/val"]).abs().max() < 1e-5
    assert (va["loss/train"] - vb["loss/train"]).abs().max() < 1e-5
    assert json.loads((ddp / "config.json").read_text())["world_size"] == 2
    assert json.loads((single / "config.json").read_text())["world_size"] == 1


def test_helpers_are_no_ops_without_a_process_group():
    assert not distributed.is_distributed() and distributed.is_main_process() and distributed.world_size() == 1
    loader = torch.utils.data.DataLoader(list(range(5)), batch_size=2)
    assert distributed.shard_loader(loader, train=True, seed=0) is loader
    idx = torch.arange(3).numpy()
    assert distributed.gather_predictions(idx, idx, idx)[0] is idx
    assert distributed.broadcast_object("run-1") == "run-1"


def test_shard_sampler_covers_every_index_once():
    shards = [list(distributed.ShardSampler(7, r, 3)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(7))
    assert [len(s) for s in shards] == [3, 2, 2]


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="this torch build has no gloo backend")
def test_tsan_stage1_cli_runs_under_torchrun(tmp_path):
    """A real train CLI under torchrun: TSAN stage 1 (global-batch ranking loss, an unused head) on a
    synthetic study with 2 gloo processes; rank 0 alone writes the run and tests it."""
    from tests.conftest import write_study
    from tsan import train as tsan
    from tsan.ranking import pretrain_sorter

    write_study(tmp_path, 24, shape=(24, 28, 24), sexes=["MF"[i % 2] for i in range(24)], age=lambda i: 20 + 3 * i)
    cache = tmp_path / "cache"
    pretrain_sorter(seq_len=4, steps=5, batch_size=8, hidden=8, n_val=16,
                    out_path=tsan.sorter_path(4, tsan.PROFILES["cpu"], str(cache), tied=True), tied=True)
    log = _run([sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
          "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m", "tsan.train", "train_first_stage",
          "--dataset=study", "--profile=cpu", "--epochs=2", "--batch_size=4", "--nb_filter=2", "--nb_block=2",
          "--downsample=4", "--registration=monai", "--smooth_fwhm_mm=0", "--use_dataset_mask=False", "--run_name=ddp",
          "--fold=0",
          f"--data_root={tmp_path / 'data'}", f"--runs_dir={tmp_path / 'runs'}", f"--results_dir={tmp_path / 'results'}",
          f"--cache_dir={cache}"])
    run = tmp_path / "runs" / "tsan_stage1" / "study" / "ddp" / "fold0"
    assert json.loads((run / "config.json").read_text())["world_size"] == 2
    assert len(pd.read_csv(run / "metrics.csv")) == 2, "one metrics row per epoch, written once"
    assert len(list(run.glob("events.out.tfevents.*"))) == 1, "one TensorBoard writer (rank 0)"
    assert (run / "fold_results" / "tsan_stage1__study.json").exists()
    # the ranks split the cold preprocessing: each scan exactly once, and every rank then sees them all
    done = [int(n) for n in re.findall(r"preprocessing (\d+) volumes", log)]
    cached = list(cache.glob("volumes-*/*.npy"))
    assert len(done) == 2 and sum(done) == len(cached) == 24 and min(done) == 12
