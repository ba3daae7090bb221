"""The shared training loop: precise BatchNorm, determinism, resume from last.pt."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from common.data.datasets import VolumeDataset
from common.runlog import RunLogger
from common.training import FitConfig, fit_model, load_checkpoint, recalibrate_batchnorm


def _frame(tmp_path, n: int = 12, size: int = 8) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        age = 20 + 5 * i
        arr = (rng.standard_normal((1, size, size, size)) + age / 20).astype(np.float32)
        path = tmp_path / f"v{i}.npy"
        np.save(path, arr)
        rows.append({"participant_id": f"s{i}", "cache_path": str(path), "age": float(age), "sex": "MF"[i % 2],
                     "split": "train" if i < 8 else "val"})
    return pd.DataFrame(rows)


class TinyRegressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv3d(1, 4, 3), nn.BatchNorm3d(4), nn.ReLU(), nn.AdaptiveAvgPool3d(1),
                                 nn.Flatten(), nn.Dropout(0.2), nn.Linear(4, 1))
        nn.init.constant_(self.net[-1].bias, 40.0)

    def forward(self, x):
        return self.net(x).squeeze(1)


def test_recalibrate_batchnorm_gives_population_statistics(tmp_path):
    frame = _frame(tmp_path)
    model = nn.Sequential(nn.BatchNorm3d(1)).eval()
    model[0].running_mean.fill_(123.0)
    loader = DataLoader(VolumeDataset(frame), batch_size=4)  # equal batches: the mean of batch means is the mean
    assert recalibrate_batchnorm(model, loader, torch.device("cpu")) == 1
    data = np.concatenate([np.load(p) for p in frame["cache_path"]])
    assert model[0].running_mean.item() == pytest.approx(float(data.mean()), rel=1e-4)
    assert model[0].momentum == 0.1, "momentum is restored"
    assert not model.training, "the previous train/eval mode is restored"


def tiny_loaders(frame: pd.DataFrame, batch_size: int = 4) -> list[DataLoader]:
    """Seeded shuffled training loader and validation loader over ``frame``'s splits."""
    train = frame[frame["split"] == "train"]
    return [DataLoader(VolumeDataset(train), batch_size=batch_size, shuffle=True,
                       generator=torch.Generator().manual_seed(1)),
            DataLoader(VolumeDataset(frame[frame["split"] == "val"]), batch_size=4)]


def _fit(tmp_path, frame, run: str, epochs: int, resume: bool = False):
    torch.manual_seed(0)
    model = TinyRegressor()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    train = frame[frame["split"] == "train"]
    loaders = tiny_loaders(frame)
    run_dir = tmp_path / run
    logger = RunLogger(run_dir, {"test": True}, torch.device("cpu"), resume=resume)
    out = fit_model(model, opt, None, nn.HuberLoss(), *loaders, torch.device("cpu"),
                        FitConfig(epochs=epochs, grad_clip=1.0, seed=3, precise_bn=True), run_dir, logger,
                        {"method": "tiny"}, resume=resume, bn_loader=DataLoader(VolumeDataset(train), batch_size=4))
    logger.close()
    return out, model, run_dir


def test_fit_writes_checkpoints_and_is_deterministic(tmp_path):
    frame = _frame(tmp_path)
    out_a, model_a, run_a = _fit(tmp_path, frame, "a", epochs=3)
    out_b, model_b, _ = _fit(tmp_path, frame, "b", epochs=3)
    assert out_a["best_val"] == out_b["best_val"]
    for pa, pb in zip(model_a.state_dict().values(), model_b.state_dict().values()):
        assert torch.equal(pa, pb)
    metrics = pd.read_csv(run_a / "metrics.csv")
    assert list(metrics["epoch"]) == [0, 1, 2]
    assert {"loss/train", "loss/val", "mae/val", "opt/lr"} <= set(metrics.columns)
    best = load_checkpoint(run_a / "best.pt", "tiny")
    assert "optimizer_state" not in best and best["epoch"] == out_a["best_epoch"]


def test_resume_from_last_matches_uninterrupted_run(tmp_path):
    frame = _frame(tmp_path)
    _, full, _ = _fit(tmp_path, frame, "full", epochs=4)
    _fit(tmp_path, frame, "cut", epochs=2)  # stands in for a run killed after epoch 1
    out, resumed, run_dir = _fit(tmp_path, frame, "cut", epochs=4, resume=True)
    for name, value in full.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    assert list(pd.read_csv(run_dir / "metrics.csv")["epoch"]) == [0, 1, 2, 3]


def test_resume_drops_metrics_rows_without_checkpoint(tmp_path):
    """A kill after an epoch's metrics row was written but before its checkpoint was saved."""
    frame = _frame(tmp_path)
    _fit(tmp_path, frame, "cut", epochs=2)
    metrics = tmp_path / "cut" / "metrics.csv"
    rows = metrics.read_text().splitlines()
    metrics.write_text("\n".join(rows + [rows[-1].replace("1,", "2,", 1), "3,0.5,"]) + "\n")  # epoch 2 + torn line
    _, _, run_dir = _fit(tmp_path, frame, "cut", epochs=4, resume=True)
    assert list(pd.read_csv(run_dir / "metrics.csv")["epoch"]) == [0, 1, 2, 3]


def test_a_resumed_run_counts_the_training_time_of_the_epochs_it_kept(tmp_path):
    """A run resumed after 2 of 4 epochs reports the time of all 4 (a resumed leaky emulation
    published 937 s, the time after its restart, of about 3000 s)."""
    frame = _frame(tmp_path)
    first, _, run_dir = _fit(tmp_path, frame, "timed", epochs=2)
    kept = float(load_checkpoint(run_dir / "last.pt", "tiny")["train_seconds"])
    assert first["seconds_before_resume"] == 0 and 0 < kept <= first["train_seconds"]
    second, _, _ = _fit(tmp_path, frame, "timed", epochs=4, resume=True)
    assert second["seconds_before_resume"] == pytest.approx(kept) and second["train_seconds"] > kept
    elapsed = pd.read_csv(run_dir / "metrics.csv")["time/elapsed_s"].to_numpy()
    assert len(elapsed) == 4 and (np.diff(elapsed) > 0).all(), "elapsed time carries on across the restart"


class DeadRegressor(TinyRegressor):
    """A final ReLU whose input is negative for everyone: the output is 0, and no gradient flows."""

    def forward(self, x):
        return torch.relu(self.net(x).squeeze(1) - 1e6)


def test_a_dead_output_stops_after_stop_if_constant_epochs(tmp_path):
    frame = _frame(tmp_path)
    model, run_dir = DeadRegressor(), tmp_path / "dead"
    logger = RunLogger(run_dir, {"test": True}, torch.device("cpu"))
    out = fit_model(model, torch.optim.AdamW(model.parameters(), lr=1e-2), None, nn.HuberLoss(), *tiny_loaders(frame),
                    torch.device("cpu"), FitConfig(epochs=10, stop_if_constant=3), run_dir, logger, {"method": "tiny"})
    logger.close()
    assert out["epochs_run"] == 3, "stopped once the validation predictions were constant for 3 epochs"
    alive, _, _ = _fit(tmp_path, frame, "alive", epochs=4)
    assert alive["epochs_run"] == 4
