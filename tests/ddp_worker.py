"""Worker for tests/test_distributed.py: a few epochs of common.training.fit_model on a small random
regression problem, run either alone or under torchrun. Writes ``<run_dir>/last.pt`` (rank 0).

    python tests/ddp_worker.py RUN_DIR             # one process, same global sample order
    torchrun --nproc_per_node=2 tests/ddp_worker.py RUN_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.device import select_device  # noqa: E402
from common.distributed import gather_batch, world_size  # noqa: E402
from common.runlog import RunLogger  # noqa: E402
from common.training import FitConfig, fit_model  # noqa: E402

GLOBAL_BATCH, SEED = 8, 3


def batch_coupled_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE + a term that couples the samples of the (global) batch, as TSAN's ranking loss does:
    computed on the gathered global batch, it must train exactly as in one process."""
    if pred.requires_grad:
        pred, target = gather_batch(pred), gather_batch(target)
    return nn.functional.mse_loss(pred, target) + (pred.std() - target.std()) ** 2


class RandomVolumes(Dataset):
    """``n`` random 1x8x8x8 volumes whose target is a fixed linear function of the voxels."""

    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 1, 8, 8, 8, generator=g)
        self.y = self.x.flatten(1) @ torch.randn(512, generator=g) / 20

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.x[i], "target": self.y[i], "index": i}


def main(run_dir: str) -> None:
    device = select_device("cpu")  # joins the gloo process group under torchrun
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ELU(), nn.AdaptiveAvgPool3d(2), nn.Flatten(),
                          nn.Linear(32, 1), nn.Flatten(0))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    train = RandomVolumes(36, seed=1)
    if world_size() == 1:  # the single-process reference sees the global batches in the same order
        sampler = DistributedSampler(train, num_replicas=1, rank=0, shuffle=True, seed=SEED, drop_last=True)
        train_loader = DataLoader(train, batch_size=GLOBAL_BATCH, sampler=sampler, drop_last=True)
    else:
        train_loader = DataLoader(train, batch_size=GLOBAL_BATCH, shuffle=True, drop_last=True)
    val_loader = DataLoader(RandomVolumes(7, seed=2), batch_size=2)  # odd size: no padding allowed
    logger = RunLogger(run_dir, {"test": "ddp"}, device)
    fit_model(model, optimizer, None, batch_coupled_loss, train_loader, val_loader, device,
              FitConfig(epochs=3, seed=SEED), run_dir, logger, {"method": "ddp_test"})
    logger.close()


if __name__ == "__main__":
    main(sys.argv[1])
