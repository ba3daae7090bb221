"""Training and evaluation loops shared by every deep method (regressors and classifiers).

Batches are dicts with ``image`` (model input), ``target`` (age in years, or class index) and
``index`` (row of the dataset's frame).

Reproducibility and resume: at the start of every epoch python, numpy and torch, the training
loader's generator (data order) and the dataset's augmentation (``dataset.reseed``) are seeded
with ``seed + epoch``, so resuming from ``last.pt`` at an epoch boundary replays exactly what an
uninterrupted run would have done.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from common import distributed
from common.device import seed_everything
from common.io import save_torch
from common.runlog import RunLogger, progress

log = logging.getLogger(__name__)


class CheckpointMismatchError(ValueError):
    """A checkpoint was produced by another method than the one loading it."""


class NonFiniteTrainingError(FloatingPointError):
    """Training produced too many consecutive non-finite losses or gradients to go on."""


class AutocastGradientError(RuntimeError):
    """Autocast gives weight gradients that disagree with fp32 far beyond rounding."""


def load_checkpoint(path: str | Path, method: str | None = None) -> dict:
    """Load a checkpoint safely (``weights_only=True``) and check which method wrote it.

    Raises:
        FileNotFoundError: missing file.
        CheckpointMismatchError: ``method`` is given and differs from the checkpoint's.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if method is not None and ckpt.get("method") != method:
        raise CheckpointMismatchError(
            f"{path} was written by method {ckpt.get('method')!r}, not {method!r}; use that method's predict command")
    return ckpt


def adam(params, lr: float, weight_decay: float = 0.0, decoupled: bool = False, amsgrad: bool = False,
         betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> torch.optim.Optimizer:
    """Adam (Kingma & Ba 2015), or AdamW (``decoupled=True``, Loshchilov & Hutter 2019), on the fused kernel.

    Every method builds its Adam-family optimizer here. The fused kernel computes the update from
    additions, multiplications, divisions and square roots of the instruction set ATen dispatches to
    (pinned to AVX2 by :mod:`common.numerics`), all IEEE-exact, so the step is bit-identical on every CPU
    that runs that instruction set. The unfused step takes ``exp_avg_sq.sqrt()`` from MKL's vector math
    library (VML), whose float32 square root is not correctly rounded (measured: about 20% of values one
    ulp off on an AMD EPYC) and takes a vendor-specific code path: the AdamW step was the one training
    kernel whose digest differed between an Intel Xeon and an AMD EPYC in ``scripts/bench.py
    --sections=numerics``. The fused step is also about 5x faster on CPU.

    Args:
        params: parameters or parameter groups (on CPU, CUDA or MPS).
        lr, weight_decay, amsgrad, betas, eps: as ``torch.optim.Adam``.
        decoupled: decoupled weight decay (``torch.optim.AdamW``) instead of L2 added to the gradient.

    Returns:
        The optimizer.

    Raises:
        RuntimeError: a parameter is on a device without a fused Adam kernel, or not floating point.
    """
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    return cls(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, fused=True)


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype`` on ``device``, or a no-op when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


#: Largest relative error of an autocast convolution's or linear layer's input and weight
#: gradients against fp32 on the same bf16-rounded tensors before a run is refused. Sound kernels
#: give about 0.002-0.005 (the rounding of the gradient itself); the oneDNN 3.12 bf16
#: backward-weights fault found on AVX512-BF16 CPUs gives about 1.0, or NaN.
AUTOCAST_KERNEL_TOLERANCE = 0.05

_CHECKED_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def check_autocast_kernels(model: nn.Module, batch: dict, device: torch.device, dtype: torch.dtype,
                           tolerance: float = AUTOCAST_KERNEL_TOLERANCE) -> dict[str, float]:
    """Check the autocast kernels of every convolution and linear layer of ``model`` at the input
    shapes a training batch gives them: input and weight gradients under autocast ``dtype`` against
    fp32 on the same ``dtype``-rounded input, weight and output gradient.

    Found with this check: on an AMD EPYC with AVX512-BF16 (torch 2.13, oneDNN 3.12,
    ``jit_bf16:avx512_core_bf16``), the bf16 weight gradient of a 3x3x3 convolution (padding 1) on
    a 2x2x2 input, the last stage of the 3D ResNet-18 at 48^3, is wrong (relative error 1.0) and, in
    some repetitions, NaN, whatever the thread count; at 1^3, 3^3 and 4^3 it agrees to 0.4%. That
    fault made bf16 training of resnet3d diverge (gradient norm inf from the second step, then NaN).
    The check works on copies and leaves the random state as it was, so a run that passes it trains
    exactly as without it.

    Args:
        model: the (unwrapped) model, on ``device``.
        batch: one training batch (``image`` and the model's ``extra_inputs``).
        dtype: the autocast dtype (bf16 or fp16).
        tolerance: the largest relative gradient error accepted.

    Returns:
        ``{layer name: largest relative error of its input and weight gradients}``.

    Raises:
        AutocastGradientError: a layer's autocast gradient is non-finite or off by more than ``tolerance``.
    """
    import copy

    shapes: dict[str, torch.Size] = {}

    def record(name: str):
        def hook(module, inputs, output) -> None:
            shapes.setdefault(name, inputs[0].shape)
        return hook

    probe = copy.deepcopy(model).eval()
    hooks = [m.register_forward_hook(record(name)) for name, m in probe.named_modules() if isinstance(m, _CHECKED_LAYERS)]
    with torch.no_grad():
        x, _ = _to_device(batch, device, False)
        _forward(probe, x, batch, device)
    for h in hooks:
        h.remove()
    layers = dict(probe.named_modules())
    errors, seen = {}, {}

    def rounded(t: torch.Tensor) -> torch.Tensor:
        return t.to(dtype).float()

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        for name, shape in shapes.items():
            layer = copy.deepcopy(layers[name]).float()
            key = (repr(layer), tuple(shape))
            if key in seen:  # same layer configuration at the same input shape: same kernels
                errors[name] = seen[key]
                continue
            with torch.no_grad():
                for p in layer.parameters():
                    p.copy_(rounded(p))
            inp = rounded(torch.randn(shape, device=device))
            grads = {}
            for label, dt in (("fp32", None), ("autocast", dtype)):
                leaf = inp.clone().requires_grad_(True)
                with autocast_context(device, dt):
                    out = layer(leaf)
                if label == "fp32":
                    dy = rounded(torch.randn_like(out.float()))
                grads[label] = torch.autograd.grad(out.float(), [leaf, layer.weight], dy)
            err = max(float((a.float() - r).norm()) / max(float(r.norm()), 1e-30)
                      for a, r in zip(grads["autocast"], grads["fp32"]))
            errors[name] = seen[key] = err
    bad = {n: e for n, e in errors.items() if not (e <= tolerance)}  # NaN counts as bad
    if bad:
        worst = ", ".join(f"{n} at input {tuple(shapes[n])}: {e:.2f}" for n, e in
                          sorted(bad.items(), key=lambda kv: -np.nan_to_num(kv[1], nan=9e9))[:4])
        raise AutocastGradientError(
            f"{str(dtype).replace('torch.', '')} autocast gives wrong gradients on this machine for {len(bad)} layer(s): "
            f"{worst} (relative error against fp32; tolerance {tolerance}). Train this model in fp32 (--amp_dtype=fp32)")
    log.info("autocast %s kernel check passed for %d layers: largest relative gradient error %.4f", dtype,
             len(errors), max(errors.values(), default=0.0))
    return errors


@dataclass
class FitConfig:
    """Loop settings for :func:`fit_model`.

    Attributes:
        epochs: maximum number of epochs.
        grad_clip: max global gradient norm (None: no clipping).
        amp_dtype: autocast dtype (None: fp32).
        channels_last: use ``torch.channels_last_3d`` for inputs and weights.
        early_stopping_patience: stop after this many epochs without a better validation MAE.
        seed: base seed; epoch ``e`` is seeded with ``seed + e``.
        precise_bn: before each validation, recompute BatchNorm population statistics on the
            un-augmented training data (:func:`recalibrate_batchnorm`).
        max_nonfinite_steps: a step whose loss or gradient norm is NaN/inf is skipped (no update)
            with a warning; after this many consecutive ones the run stops with
            :class:`NonFiniteTrainingError`.
        stop_if_constant: stop (with a warning) after this many consecutive epochs whose validation
            predictions are all the same value: a dead output unit, which no later epoch revives
            (None: never). The caller decides what to do with such a run (TSAN retries another seed).
    """

    epochs: int
    grad_clip: float | None = None
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    early_stopping_patience: int | None = None
    seed: int = 42
    precise_bn: bool = False
    max_nonfinite_steps: int = 5
    stop_if_constant: int | None = None


class NonFiniteGuard:
    """Counts skipped non-finite steps (total and consecutive) across a run's epochs."""

    def __init__(self, limit: int):
        self.limit, self.total, self.consecutive = int(limit), 0, 0

    def ok(self, finite: bool, what: str) -> bool:
        """Record one step; returns whether to apply it.

        Raises:
            NonFiniteTrainingError: ``limit`` consecutive non-finite steps.
        """
        if finite:
            self.consecutive = 0
            return True
        self.total += 1
        self.consecutive += 1
        log.warning("skipped a training step: %s (%d consecutive, %d in this run)", what, self.consecutive, self.total)
        if self.consecutive >= self.limit:
            raise NonFiniteTrainingError(
                f"{self.consecutive} consecutive training steps had a non-finite loss or gradient (last: {what}); "
                "stopping. Lower the learning rate, or train in fp32 (--amp_dtype=fp32)")
        return False


def _to_device(batch: dict, device: torch.device, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    x = batch["image"].to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d if x.ndim == 5 else torch.channels_last)
    return x, batch["target"].to(device)


def _forward(model: nn.Module, x: torch.Tensor, batch: dict, device: torch.device) -> torch.Tensor:
    """``model(x, *extras)`` where ``model.extra_inputs`` names further batch entries the model takes
    (e.g. ``("sex",)`` for TSAN); plain ``model(x)`` otherwise."""
    extras = [batch[k].to(device) for k in getattr(model, "extra_inputs", ())]
    return model(x, *extras)


def train_one_epoch(model: nn.Module, loader: DataLoader, loss_fn: Callable, optimizer: torch.optim.Optimizer,
                    device: torch.device, cfg: FitConfig, scaler: torch.amp.GradScaler | None = None,
                    desc: str = "train", guard: NonFiniteGuard | None = None) -> dict[str, float]:
    """One pass over ``loader``.

    A step whose loss or (unscaled) gradient norm is not finite is skipped: no optimizer step, a
    warning, and a count in ``guard`` (under torchrun every process skips it, so they stay in step).
    With a gradient scaler (fp16 on CUDA) an overflowing gradient is the scaler's to handle, as
    usual, and is not counted.

    Returns:
        ``{"loss": mean finite loss, "max_grad_norm", "nonfinite_steps": skipped in this epoch,
        "train_metric": MAE in years (regressors) or accuracy (classifiers) of the training batches,
        in train mode with augmentation}``.

    Raises:
        NonFiniteTrainingError: ``guard``'s limit of consecutive skipped steps was reached.
    """
    model.train()
    guard = guard or NonFiniteGuard(cfg.max_nonfinite_steps)
    skipped_before = guard.total
    total, count, max_grad, err_sum = 0.0, 0, 0.0, 0.0
    for batch in progress(loader, desc=desc, leave=False, unit="batch"):
        x, y = _to_device(batch, device, cfg.channels_last)
        optimizer.zero_grad(set_to_none=True)
        with autocast_context(device, cfg.amp_dtype):
            pred = _forward(model, x, batch, device)
        loss = loss_fn(pred.float(), y)
        if not guard.ok(distributed.all_true(bool(torch.isfinite(loss))), f"loss {loss.item()} ({desc})"):
            continue
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip else math.inf)
        if scaler is not None:
            scaler.step(optimizer)  # skips the step itself when the scaled gradient overflowed
            scaler.update()
        else:
            if not guard.ok(distributed.all_true(bool(torch.isfinite(norm))), f"gradient norm {float(norm)} ({desc})"):
                continue
            optimizer.step()
        if torch.isfinite(norm):
            max_grad = max(max_grad, float(norm))
        total += loss.item() * len(y)
        count += len(y)
        with torch.no_grad():
            out = pred.detach().float()
            if out.ndim == y.ndim:  # regression: absolute error in years
                err_sum += float((out - y.float()).abs().sum())
            else:  # classification: correct predictions
                err_sum += float((out.argmax(1) == y).sum())
    if distributed.is_distributed():  # mean over every process's samples
        sums = torch.tensor([total, count, err_sum], dtype=torch.float64, device=distributed.reduce_device())
        torch.distributed.all_reduce(sums)
        total, count, err_sum = sums.tolist()
    return {"loss": total / count if count else math.nan, "max_grad_norm": max_grad,
            "nonfinite_steps": guard.total - skipped_before, "train_metric": err_sum / count if count else math.nan}


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, loader: DataLoader, device: torch.device,
                          channels_last: bool = False) -> int:
    """Precise BatchNorm: replace running statistics by population statistics of ``loader``.

    Wu & Johnson, "Rethinking 'Batch' in BatchNorm", arXiv:2105.07576 (2021), section 3: the
    exponential moving averages gathered during training lag behind the weights and mix in
    augmented inputs, which with small batches of 3D volumes can leave eval-mode predictions far off
    (measured here: 3D ResNet-18 on IXI, validation MAE 13.5 y with EMA statistics vs 8.4 y after
    recalibration, same weights). Statistics are reset and accumulated as a cumulative average
    (``momentum=None``) over one pass in train mode without gradients; weights are not changed.

    Returns:
        Number of BatchNorm layers recalibrated.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for batch in loader:
        x, _ = _to_device(batch, device, channels_last)
        _forward(model, x, batch, device)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)
    return len(norms)


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, device: torch.device, amp_dtype: torch.dtype | None = None,
            channels_last: bool = False, shared: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Predict every sample of ``loader`` once, in order.

    Args:
        shared: under torchrun, every process predicts its share of ``loader`` and the predictions
            are gathered (all processes must call it); False: this process predicts everything.

    Returns:
        ``(indices, targets, outputs)`` numpy arrays: (N,), (N,) and (N,) for regressors (years)
        or (N, K) logits for classifiers.
    """
    if shared:
        loader = distributed.shard_loader(loader, train=False, seed=0)
    model.eval()
    idx, ages, preds = [], [], []
    for batch in loader:
        x, y = _to_device(batch, device, channels_last)
        with autocast_context(device, amp_dtype):
            out = _forward(model, x, batch, device)
        idx.append(batch["index"].numpy())
        ages.append(y.cpu().numpy())
        preds.append(out.float().cpu().numpy())
    if not idx:  # a process whose share is empty (fewer samples than processes)
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32), np.empty(0, dtype=np.float32)
    result = np.concatenate(idx), np.concatenate(ages), np.concatenate(preds)
    return distributed.gather_predictions(*result) if shared else result


def warmup_factor(epoch: int, warmup_epochs: int) -> float:
    """Linear warm-up multiplier of the learning rate in epoch ``epoch`` (0-based): ``(epoch + 1) /
    warmup_epochs`` during the warm-up, then 1, so the peak rate is first used in epoch
    ``warmup_epochs`` (1-based), as in the OASIS tutorial (``get_lr_multiplier``) and the 3D ResNet
    track of "brain-age-estimation" (``LambdaLR`` with ``(e + 1) / 5``)."""
    return (epoch + 1) / warmup_epochs if epoch < warmup_epochs else 1.0


class WarmupThenPlateau:
    """Linear warm-up (:func:`warmup_factor`) with ``ReduceLROnPlateau`` on the validation score
    stepped after every epoch, warm-up epochs included, as the OASIS tutorial does: during the
    warm-up the warm-up rate overrides any plateau cut; the plateau's patience and best score count
    from epoch 0.

    Stepped once per epoch with the validation score (``needs_metric``), as :func:`fit_model` does.
    """

    needs_metric = True

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_epochs: int, factor: float, patience: int,
                 min_lr: float, mode: str = "min"):
        from torch.optim.lr_scheduler import ReduceLROnPlateau

        self.optimizer = optimizer
        self.warmup_epochs = warmup_epochs
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.epoch = 0
        self.plateau = ReduceLROnPlateau(optimizer, mode=mode, factor=factor, patience=patience, min_lr=min_lr)
        self._set_warmup_lr()

    def _set_warmup_lr(self) -> None:
        if self.epoch < self.warmup_epochs:
            for group, base in zip(self.optimizer.param_groups, self.base_lrs):
                group["lr"] = base * warmup_factor(self.epoch, self.warmup_epochs)

    def step(self, metric: float) -> None:
        self.plateau.step(metric)
        self.epoch += 1
        self._set_warmup_lr()

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "base_lrs": self.base_lrs, "plateau": self.plateau.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = state["epoch"]
        self.base_lrs = state.get("base_lrs", self.base_lrs)
        self.plateau.load_state_dict(state["plateau"])


@dataclass(frozen=True)
class Selection:
    """How validation outputs are scored for checkpoint choice, early stopping and plateau LR.

    Attributes:
        name: TensorBoard/metrics.csv name, e.g. ``"mae/val"`` or ``"acc/val"``.
        fn: ``fn(outputs, targets) -> float``.
        mode: ``"min"`` or ``"max"``.
    """

    name: str
    fn: Callable[[np.ndarray, np.ndarray], float]
    mode: str = "min"

    def better(self, new: float, best: float) -> bool:
        return new < best if self.mode == "min" else new > best

    @property
    def worst(self) -> float:
        return math.inf if self.mode == "min" else -math.inf


def mean_absolute_error(outputs: np.ndarray, targets: np.ndarray) -> float:
    """MAE of regression outputs (years)."""
    return float(np.mean(np.abs(outputs - targets)))


def accuracy(outputs: np.ndarray, targets: np.ndarray) -> float:
    """Accuracy of (N, K) logits against (N,) class indices."""
    return float(np.mean(outputs.argmax(1) == targets))


def balanced_accuracy(outputs: np.ndarray, targets: np.ndarray) -> float:
    """Balanced accuracy (mean per-class recall, scikit-learn) of (N, K) logits against (N,) class indices."""
    from sklearn.metrics import balanced_accuracy_score

    return float(balanced_accuracy_score(targets, outputs.argmax(1)))


def mean_squared_error(outputs: np.ndarray, targets: np.ndarray) -> float:
    """MSE of regression outputs (years^2)."""
    return float(np.mean((outputs - targets) ** 2))


VAL_MAE = Selection("mae/val", mean_absolute_error, "min")
VAL_MSE = Selection("mse/val", mean_squared_error, "min")
VAL_ACCURACY = Selection("acc/val", accuracy, "max")
VAL_BALANCED_ACCURACY = Selection("bacc/val", balanced_accuracy, "max")


def fit_model(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, loss_fn: Callable,
                  train_loader: DataLoader, val_loader: DataLoader, device: torch.device, cfg: FitConfig,
                  run_dir: str | Path, logger: RunLogger, checkpoint_meta: dict, resume: bool = False,
                  bn_loader: DataLoader | None = None, selection: Selection = VAL_MAE) -> dict:
    """Train with per-epoch validation; keep ``best.pt`` (best ``selection`` score) and ``last.pt``.

    Under torchrun (:mod:`common.distributed`) the model is wrapped in DistributedDataParallel, each
    process trains on its share of every global batch, validation predictions are gathered before
    the score is computed, and only rank 0 writes; when training ends the other processes leave
    the process group and exit (status 0), so testing and publishing run on rank 0 alone.

    ``scheduler`` is stepped once per epoch; a ``ReduceLROnPlateau`` receives the validation score.
    Checkpoints hold model, optimizer, scheduler and scaler state plus ``checkpoint_meta``
    (method name, preprocessing spec, ...), and are written atomically. With ``cfg.precise_bn``,
    BatchNorm statistics are recalibrated on ``bn_loader`` (un-augmented training data) before
    every validation, and the checkpoints hold the recalibrated statistics.

    A training step with a non-finite loss or gradient is skipped and counted
    (``train/nonfinite_steps`` per epoch in ``metrics.csv``, ``nonfinite_steps`` in the summary); a
    validation pass with non-finite predictions never counts as an improvement.

    Returns:
        ``{"best_epoch", "best_val", "selection", "epochs_run", "train_seconds", "seconds_before_resume",
        "nonfinite_steps"}``: ``train_seconds`` counts the epochs of an interrupted run that ``last.pt``
        kept (``seconds_before_resume``) plus this call's.

    A bf16 run first checks its layers' autocast gradients against fp32 (:func:`check_autocast_kernels`).

    Raises:
        NonFiniteTrainingError: ``cfg.max_nonfinite_steps`` consecutive non-finite steps, or no epoch
            gave finite validation predictions.
        AutocastGradientError: bf16 gradients disagree with fp32 on this machine.
    """
    run_dir = Path(run_dir)
    scaler = torch.amp.GradScaler("cuda") if (device.type == "cuda" and cfg.amp_dtype == torch.float16) else None
    start_epoch, best_score, best_epoch, stale, resumed_nonfinite = 0, selection.worst, -1, 0, 0
    before = 0.0  # training seconds of the epochs kept in last.pt, when resuming
    if resume and (run_dir / "last.pt").exists():
        ckpt = load_checkpoint(run_dir / "last.pt", checkpoint_meta.get("method"))
        model.load_state_dict(ckpt["model_state"])
        optimizer.load_state_dict(ckpt["optimizer_state"])
        if scheduler is not None and ckpt.get("scheduler_state") is not None:
            scheduler.load_state_dict(ckpt["scheduler_state"])
        if scaler is not None and ckpt.get("scaler_state") is not None:
            scaler.load_state_dict(ckpt["scaler_state"])
        start_epoch = ckpt["epoch"] + 1
        best_score, best_epoch, stale = ckpt["best_val"], ckpt["best_epoch"], ckpt["stale_epochs"]
        resumed_nonfinite = int(ckpt.get("nonfinite_steps", 0))
        before = float(ckpt.get("train_seconds", 0.0))
        log.info("resumed from %s at epoch %d (best %s %.4f at epoch %d)", run_dir / "last.pt",
                 start_epoch, selection.name, best_score, best_epoch)
    if resume:  # drop metrics rows of epochs that have no checkpoint (killed after logging, before saving)
        logger.truncate(start_epoch)
    if cfg.amp_dtype == torch.bfloat16:
        check_autocast_kernels(model, next(iter(train_loader)), device, cfg.amp_dtype)
    net = distributed.wrap_model(model, device)
    train_loader = distributed.shard_loader(train_loader, train=True, seed=cfg.seed)
    main = distributed.is_main_process()
    t0 = time.time()
    epoch = start_epoch - 1
    guard = NonFiniteGuard(cfg.max_nonfinite_steps)
    guard.total = resumed_nonfinite
    constant = 0
    bar = progress(range(start_epoch, cfg.epochs), desc="epochs", unit="epoch", initial=start_epoch, total=cfg.epochs)
    for epoch in bar:
        seed_everything(cfg.seed + epoch)
        if getattr(train_loader, "generator", None) is not None:
            train_loader.generator.manual_seed(cfg.seed + epoch)
        if hasattr(train_loader.dataset, "reseed"):
            train_loader.dataset.reseed(cfg.seed + epoch)
        if hasattr(train_loader.sampler, "set_epoch"):
            train_loader.sampler.set_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        t_epoch = time.time()
        tr = train_one_epoch(net, train_loader, loss_fn, optimizer, device, cfg, scaler, desc=f"epoch {epoch}",
                             guard=guard)
        t_steps = time.time()
        if cfg.precise_bn:
            if bn_loader is None:
                raise ValueError("precise_bn needs bn_loader (un-augmented training data)")
            recalibrate_batchnorm(model, distributed.shard_loader(bn_loader, train=False, seed=0), device,
                                  cfg.channels_last)
            distributed.average_buffers(model)
        t_bn = time.time()
        _, targets, outputs = predict(model, val_loader, device, cfg.amp_dtype, cfg.channels_last, shared=True)
        t_val = time.time()
        val_loss = float(loss_fn(torch.from_numpy(outputs), torch.from_numpy(targets)))
        score = selection.fn(outputs, targets)
        if not np.isfinite(outputs).all():
            log.warning("epoch %d: %d non-finite validation predictions; this epoch cannot be the best", epoch,
                        int((~np.isfinite(outputs)).sum()))
            score = selection.worst
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) or getattr(scheduler, "needs_metric", False):
            scheduler.step(score)
        elif scheduler is not None:
            scheduler.step()
        improved = selection.better(score, best_score)
        if improved:
            best_score, best_epoch, stale = score, epoch, 0
        else:
            stale += 1
        constant = constant + 1 if len(outputs) > 1 and float(np.ptp(outputs)) < 1e-6 else 0
        logger.log_epoch(epoch, {"loss/train": tr["loss"], "loss/val": val_loss, selection.name: score,
                                 "opt/lr": lr, "opt/max_grad_norm": tr["max_grad_norm"],
                                 "train/nonfinite_steps": tr["nonfinite_steps"],
                                 "acc/train" if selection.mode == "max" else "mae/train": tr["train_metric"],
                                 "time/elapsed_s": before + time.time() - t0,
                                 # where an epoch's time goes (the rest, up to the next epoch: checkpoints)
                                 "time/steps_s": t_steps - t_epoch, "time/precise_bn_s": t_bn - t_steps,
                                 "time/validation_s": t_val - t_bn})
        bar.set_postfix(train_loss=f"{tr['loss']:.3f}", val=f"{score:.3f}", best=f"{best_score:.3f}")
        if main:
            log.info("epoch %d/%d: train loss %.4f, val loss %.4f, %s %.3f (best %.3f at epoch %d), lr %.2e, %.0f s%s",
                     epoch + 1, cfg.epochs, tr["loss"], val_loss, selection.name, score, best_score, best_epoch, lr,
                     before + time.time() - t0, f", {tr['nonfinite_steps']} steps skipped" if tr["nonfinite_steps"] else "")
        state = {
            **checkpoint_meta, "model_state": model.state_dict(), "optimizer_state": optimizer.state_dict(),
            "scheduler_state": scheduler.state_dict() if scheduler is not None else None,
            "scaler_state": scaler.state_dict() if scaler is not None else None,
            "epoch": epoch, "best_val": best_score, "best_epoch": best_epoch, "stale_epochs": stale,
            "nonfinite_steps": guard.total, "train_seconds": before + time.time() - t0,
        }
        if improved and main:
            best = {k: v for k, v in state.items() if k not in ("optimizer_state", "scheduler_state", "scaler_state")}
            save_torch(run_dir / "best.pt", {**best, "val_score": score})
        if main:
            save_torch(run_dir / "last.pt", state)
        if cfg.early_stopping_patience is not None and stale >= cfg.early_stopping_patience:
            log.info("early stopping at epoch %d (no improvement for %d epochs)", epoch, stale)
            break
        if cfg.stop_if_constant is not None and constant >= cfg.stop_if_constant:
            log.warning("stopping at epoch %d: the validation predictions have been one constant value for %d epochs "
                        "(a dead output)", epoch, constant)
            break
    distributed.release_workers()
    logger.log_hparams({f"best_{selection.name.replace('/', '_')}": best_score, "best_epoch": best_epoch})
    if best_epoch < 0 and epoch >= start_epoch:
        raise NonFiniteTrainingError(f"no epoch of {run_dir} gave finite validation predictions; no best.pt was written")
    return {"best_epoch": best_epoch, "best_val": best_score, "selection": selection.name, "epochs_run": epoch + 1,
            "train_seconds": before + time.time() - t0, "seconds_before_resume": before, "nonfinite_steps": guard.total}
