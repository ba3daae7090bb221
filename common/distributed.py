"""Multi-process training on PyTorch's own engine (``torchrun`` + DistributedDataParallel).

Every train CLI runs unchanged under ``torchrun --nproc_per_node=N`` (one machine) or with torchrun's
rendezvous flags (several machines): :func:`init_distributed` reads the environment torchrun sets
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) and joins the process group,
gloo on the CPU and nccl on CUDA. :func:`common.training.fit_model` then

- wraps the model in ``DistributedDataParallel`` (BatchNorm layers become ``SyncBatchNorm`` on CUDA;
  on the CPU, where PyTorch has no SyncBatchNorm, each process normalises its own part of the batch),
- gives each process its share of every loader (:func:`shard_loader`): training batches are a
  ``DistributedSampler`` split of the global batch (the CLI's ``batch_size`` stays the global batch,
  so the hyperparameters keep their meaning), evaluation is split without padding,
- gathers predictions from all processes before any metric is computed (:func:`gather_predictions`:
  every sample counted exactly once, none dropped),
- and only rank 0 writes checkpoints, logs and results (:func:`is_main_process`).

Without torchrun (``WORLD_SIZE`` unset or 1) all of this is a no-op.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler

log = logging.getLogger(__name__)

#: Set by :func:`release_workers`: rank 0 goes on alone and never joins a process group again.
_RELEASED = False


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def all_true(flag: bool) -> bool:
    """``flag`` on every process (logical AND over the process group); ``flag`` itself without one."""
    if not is_distributed():
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=reduce_device())
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def reduce_device() -> torch.device:
    """Where a tensor must be for a collective: the current GPU under nccl, else the CPU."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def is_main_process() -> bool:
    """True on rank 0, the only process that writes checkpoints, logs and results."""
    return rank() == 0


def init_distributed(device_type: str) -> bool:
    """Join the process group described by torchrun's environment, once per process.

    Args:
        device_type: ``"cuda"`` (backend nccl, one GPU per process: ``cuda:LOCAL_RANK``) or anything
            else (backend gloo).

    Returns:
        True if this process is one of several (``WORLD_SIZE`` > 1).

    Raises:
        RuntimeError: ``WORLD_SIZE`` > 1 but ``RANK`` or ``MASTER_ADDR``/``MASTER_PORT`` are missing
            (start the CLI with torchrun).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or _RELEASED:
        return False
    if dist.is_initialized():
        return True
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {missing} unset: start with torchrun")
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    log.info("process %d of %d joined the %s process group", dist.get_rank(), dist.get_world_size(), backend)
    return True


def local_device(device: torch.device) -> torch.device:
    """``cuda:LOCAL_RANK`` for CUDA under torchrun, otherwise ``device`` unchanged."""
    if device.type == "cuda" and is_distributed():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def broadcast_object(obj):
    """``obj`` as rank 0 has it, on every process (e.g. a run name built from the clock)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def main_process_first():
    """Run the enclosed block on rank 0 first, then on the others (which then find rank 0's cache
    entries instead of computing them again). No-op without a process group."""
    if is_distributed() and not is_main_process():
        dist.barrier()
    yield
    if is_distributed() and is_main_process():
        dist.barrier()


class ShardSampler(Sampler[int]):
    """Evaluation sampler: process ``r`` of ``n`` takes indices ``r, r + n, r + 2n, ...`` in order,
    without the padding ``DistributedSampler`` adds, so no sample is seen twice."""

    def __init__(self, length: int, rank_: int, world: int):
        self.indices = list(range(rank_, length, world))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def shard_loader(loader: DataLoader, train: bool, seed: int) -> DataLoader:
    """This process's share of ``loader`` (the loader itself without a process group).

    Training: a ``DistributedSampler`` (shuffled with ``seed`` + epoch, ``drop_last``) and a per-process
    batch of ``loader.batch_size / world_size``, so that one optimiser step sees the same global
    batch as a single process would. Evaluation: :class:`ShardSampler`, same per-process batch size.

    Raises:
        ValueError: the global batch size is not divisible by the number of processes.
    """
    if not is_distributed():
        return loader
    world = world_size()
    batch = loader.batch_size
    if train:
        if batch % world:
            raise ValueError(f"global batch size {batch} is not divisible by {world} processes")
        batch //= world
        sampler = DistributedSampler(loader.dataset, num_replicas=world, rank=rank(), shuffle=True, seed=seed,
                                     drop_last=True)
    else:
        sampler = ShardSampler(len(loader.dataset), rank(), world)
    return DataLoader(loader.dataset, batch_size=batch, sampler=sampler, drop_last=train and loader.drop_last,
                      num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory)


def gather_predictions(indices: np.ndarray, targets: np.ndarray, outputs: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenate every process's ``(indices, targets, outputs)`` in sample order.

    Raises:
        RuntimeError: a sample index arrives from two processes (it would be counted twice).
    """
    if not is_distributed():
        return indices, targets, outputs
    parts: list = [None] * world_size()
    dist.all_gather_object(parts, (indices, targets, outputs))
    idx = np.concatenate([p[0] for p in parts])
    if len(np.unique(idx)) != len(idx):
        raise RuntimeError("a sample was predicted by two processes; evaluation loaders must use ShardSampler")
    order = np.argsort(idx, kind="stable")
    return idx[order], np.concatenate([p[1] for p in parts])[order], np.concatenate([p[2] for p in parts])[order]


def gather_batch(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenation of every process's ``tensor`` along dim 0 (the global batch), differentiable.

    For losses that couple the samples of a batch (TSAN's ranking loss): every process computes the
    same global loss; the backward pass sums each process's share of the gradient over processes
    (``world_size`` times the gradient of its own samples), which DistributedDataParallel's gradient
    averaging turns back into the exact single-process gradient. Without a process group: ``tensor``.
    """
    if not is_distributed():
        return tensor
    import torch.distributed.nn.functional as dist_fn

    return torch.cat(dist_fn.all_gather(tensor), dim=0)


def wrap_model(model: nn.Module, device: torch.device) -> nn.Module:
    """``DistributedDataParallel(model)`` (SyncBatchNorm on CUDA) under torchrun, else ``model``.

    The wrapper keeps ``extra_inputs`` (the batch entries the model takes besides the image). A model
    with trainable parameters that its forward pass does not use (TSAN keeps the source's unused head)
    sets ``has_unused_parameters = True``, which DistributedDataParallel must be told.
    """
    if not is_distributed():
        return model
    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                              find_unused_parameters=getattr(model, "has_unused_parameters", False))
    if hasattr(model, "extra_inputs"):
        ddp.extra_inputs = model.extra_inputs
    return ddp


def average_buffers(model: nn.Module) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over processes, in place, so that
    every process evaluates with the same statistics."""
    if not is_distributed():
        return
    for buf in model.buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            buf /= world_size()


def release_workers() -> None:
    """End of distributed training: every process leaves the process group; rank 0 returns and goes
    on as a single process (testing, publishing), the others exit with status 0."""
    if not is_distributed():
        return
    global _RELEASED
    main = is_main_process()
    dist.barrier()
    dist.destroy_process_group()
    _RELEASED = True
    if not main:
        raise SystemExit(0)
