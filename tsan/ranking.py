"""TSAN's ranking loss: the SoDeep differentiable sorter, its pretraining, and the age-difference loss.

Sources: Engilberge et al., "SoDeep: a Sorting Deep Net to Learn Ranking Loss Surrogates", CVPR 2019
(public code ``technicolor-research/sodeep``: ``lstm_large`` sorter, synthetic sequences from ten
distributions, L1 loss, Adam lr 1e-3 halved every 70 epochs, batch 256); TSAN public code
``TSAN/model/sodeep.py`` and ``ranking_loss.py`` (the sorter scores the batch of predicted ages, its
output is compared with the tied ranks of the true ages by MSE; plus beta x the age-difference loss).

Rank convention (both codes): ``rank = (n - r) / n`` with ``r`` the 0-based ascending rank (ties
averaged), so the largest value gets ``1/n`` and the smallest ``1``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import rankdata
from torch import nn

from common.distributed import gather_batch
from common.io import save_torch
from common.training import adam

log = logging.getLogger(__name__)


class SoDeepSorter(nn.Module):
    """SoDeep ``lstm_large`` sorter: a 2-layer bidirectional LSTM (``hidden`` units per direction) over
    the sequence, then ``Conv1d(seq_len, seq_len, kernel 2*hidden)`` giving one rank per element.

    Parameters for ``hidden=512``: 8,474,632 (seq_len 8), 9,457,696 (seq_len 32), as the public code.
    Shapes: (B, seq_len) -> (B, seq_len) ranks in the convention of :func:`descending_rank`.
    """

    def __init__(self, seq_len: int, hidden: int = 512):
        super().__init__()
        self.seq_len, self.hidden = seq_len, hidden
        self.lstm = nn.LSTM(1, hidden, 2, batch_first=True, bidirectional=True)
        self.conv = nn.Conv1d(seq_len, seq_len, 2 * hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.seq_len:
            raise ValueError(f"this sorter ranks sequences of length {self.seq_len}, got {x.shape[-1]}; "
                             "the training batch size must equal the sorter's sequence length (drop_last)")
        out, _ = self.lstm(x.reshape(x.shape[0], -1, 1))
        return self.conv(out).reshape(x.shape[0], -1)


def descending_rank(values: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Tied ranks ``(n - r) / n`` of a 1D sequence (``r`` 0-based ascending, ties averaged): the
    largest value gets 1/n, the smallest 1. Shapes: (n,) -> (n,) float32."""
    v = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    v = v.reshape(-1)
    n = len(v)
    return torch.from_numpy(((n - (rankdata(v) - 1)) / n).astype(np.float32))


def random_sequences(n: int, seq_len: int, rng: np.random.Generator, tied: bool = False) -> np.ndarray:
    """``n`` synthetic sequences drawn as SoDeep's ``get_rand_seq`` does: for each, one of ten
    families (uniform [-1, 1] twice, standard normal, an increasing or shuffled arithmetic ramp between
    two uniform numbers, mixtures of two families split at a random point, and the fixed ramp -1..1).

    With ``tied``, every other sequence (on average) is rounded onto a random number of equally spaced
    levels (2 to ``seq_len``) between its minimum and maximum, so that ties occur as they do among
    integer ages in a batch: the training data of a tied-rank sorter. TSAN's stage 1 loads such a
    sorter (``Tied_rank_best_lstmla_slen_32``); its recipe is not public, so this one is ours.
    Shapes: -> (n, seq_len) float32."""
    out = np.empty((n, seq_len), np.float32)
    for i in range(n):
        kind = int(rng.integers(0, 10))
        split = int(rng.integers(1, seq_len + 1))
        a, b = rng.random(), rng.random()
        ramp = np.linspace(a, b, seq_len, endpoint=False)
        if kind in (0, 1):
            seq = rng.uniform(-1, 1, seq_len)
        elif kind == 2:
            seq = rng.standard_normal(seq_len)
        elif kind == 3:
            seq = ramp
        elif kind == 4:
            seq = rng.permutation(ramp)
        elif kind in (5, 6):
            seq = np.concatenate([rng.uniform(-1, 1, split), rng.standard_normal(seq_len - split)])
        elif kind == 7:
            seq = np.concatenate([rng.uniform(-1, 1, split), rng.uniform(-1, 1, seq_len - split)])
        elif kind == 8:
            part = rng.permutation(np.linspace(a, b, split, endpoint=False))
            seq = np.concatenate([part, rng.uniform(-1, 1, seq_len - split)])
        else:
            seq = np.linspace(-1, 1, seq_len, endpoint=False)
        if tied and rng.random() < 0.5:
            levels = int(rng.integers(2, seq_len + 1))
            low, high = float(seq.min()), float(seq.max())
            if high > low:
                seq = low + np.round((seq - low) / (high - low) * (levels - 1)) / (levels - 1) * (high - low)
        out[i] = seq
    return out


def _ranks(batch: np.ndarray) -> torch.Tensor:
    """:func:`descending_rank` of every row: (N, L) -> (N, L)."""
    n = batch.shape[1]
    return torch.from_numpy(((n - (rankdata(batch, axis=1) - 1)) / n).astype(np.float32))


def pretrain_sorter(seq_len: int, steps: int = 3000, batch_size: int = 256, lr: float = 1e-3,
                    lr_step: int = 1000, hidden: int = 512, seed: int = 0, n_val: int = 2048,
                    out_path: str | Path | None = None, tied: bool = False) -> tuple[SoDeepSorter, dict]:
    """Train a sorter on synthetic sequences (the SoDeep recipe: L1 loss, Adam, lr halved every
    ``lr_step`` steps), keep the weights with the lowest L1 on a fixed validation set. ``tied``:
    sequences with ties and tied (average) target ranks (:func:`random_sequences`).

    Returns:
        ``(sorter, report)``; report: ``val_l1``, ``val_spearman`` (mean Spearman correlation of the
        sorter's ranks with the true ranks on the validation sequences), ``steps``, ``seconds``.
        With ``out_path`` the best weights and the report are saved there.
    """
    from scipy.stats import spearmanr

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    sorter = SoDeepSorter(seq_len, hidden)
    optimizer = adam(sorter.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, lr_step, 0.5)
    val_x = random_sequences(n_val, seq_len, rng, tied)
    val_y = _ranks(val_x)
    val_t = torch.from_numpy(val_x)
    best, best_state, t0 = np.inf, None, time.time()
    loss_fn = nn.L1Loss()
    for step in range(steps):
        x = random_sequences(batch_size, seq_len, rng, tied)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(sorter(torch.from_numpy(x)), _ranks(x))
        loss.backward()
        optimizer.step()
        scheduler.step()
        if (step + 1) % max(steps // 20, 1) == 0 or step == steps - 1:
            with torch.no_grad():
                val = float(loss_fn(sorter(val_t), val_y))
            if val < best:
                best, best_state = val, {k: v.clone() for k, v in sorter.state_dict().items()}
            log.info("sorter step %d/%d: train L1 %.4f, val L1 %.4f", step + 1, steps, loss.item(), val)
    sorter.load_state_dict(best_state)
    sorter.zero_grad(set_to_none=True)
    with torch.no_grad():
        pred = sorter(val_t).numpy()
    rho = float(np.nanmean([spearmanr(p, y).statistic for p, y in zip(pred, val_y.numpy())]))
    report = {"seq_len": seq_len, "tied": tied, "hidden": hidden, "steps": steps, "batch_size": batch_size, "lr": lr,
              "lr_step": lr_step, "seed": seed, "val_l1": best, "val_spearman": rho, "seconds": time.time() - t0}
    if out_path is not None:
        save_torch(out_path, {"state_dict": sorter.state_dict(), "report": report})
    return sorter, report


def load_sorter(path: str | Path) -> tuple[SoDeepSorter, dict]:
    """Load a sorter saved by :func:`pretrain_sorter`.

    Raises:
        FileNotFoundError: no file; the message names the pretraining command.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sorter weights {path} not found; create them with `bash tsan/pretrain_sorter.sh` "
                                "(SoDeep weights cannot be downloaded)")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    report = ckpt["report"]
    sorter = SoDeepSorter(report["seq_len"], report["hidden"])
    sorter.load_state_dict(ckpt["state_dict"])
    return sorter, report


def age_difference_loss(pred: torch.Tensor, target: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mean over B random pairs (a, b), drawn with replacement, of ``((p_a - p_b) - (y_a - y_b))^2``
    (years^2). Shapes: (B,) or (B, 1) each -> scalar."""
    p, y = pred.reshape(-1), target.reshape(-1).to(pred.dtype)
    a = torch.randint(0, len(p), (len(p),), generator=generator)
    b = torch.randint(0, len(p), (len(p),), generator=generator)
    return torch.mean(((p[a] - p[b]) - (y[a] - y[b])) ** 2)


class RankingLoss(nn.Module):
    """TSAN's ``rank_difference_loss``: MSE between the frozen sorter's ranks of the predicted ages
    and the tied ranks of the true ages, plus ``beta`` x :func:`age_difference_loss`.

    The predicted ages go into the sorter in years, as in the public code (the sorter was trained on
    values of order 1; see tsan/README.md). Shapes: pred, target (B, 1) with B = the sorter's length
    -> scalar.
    """

    def __init__(self, sorter: SoDeepSorter, beta: float = 1.0):
        super().__init__()
        self.sorter = sorter.requires_grad_(False).eval()
        self.beta = beta

    def ranking(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        rank_pred = self.sorter(pred.reshape(1, -1)).reshape(-1)
        return nn.functional.mse_loss(rank_pred, descending_rank(target).to(rank_pred.device))

    def forward(self, pred: torch.Tensor, target: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.ranking(pred, target) + self.beta * age_difference_loss(pred, target, generator)


class TSANLoss(nn.Module):
    """``MSE(pred, y) + lbd * (ranking + beta * age difference)``, TSAN's training loss for both stages.

    For stage 2 ``pred = d + r``, so ``MSE(pred, y) = MSE(r, y - d)``, the public code's residual loss.
    The ranking term needs batches of exactly the sorter's length (training uses ``drop_last``); on
    longer inputs (the validation loss) it is averaged over consecutive full chunks and a shorter
    remainder gets none. Under torchrun the loss is computed on the gathered global batch
    (:func:`common.distributed.gather_batch`). Shapes: pred, target (B,) years -> scalar.
    """

    def __init__(self, ranking: RankingLoss, lbd: float = 10.0):
        super().__init__()
        self.ranking_loss, self.lbd = ranking, lbd

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pred, target = pred.reshape(-1), target.reshape(-1).to(pred.dtype)
        if pred.requires_grad:  # under torchrun: rank the global batch, as one process would
            pred, target = gather_batch(pred), gather_batch(target)
        loss = nn.functional.mse_loss(pred, target)
        n = self.ranking_loss.sorter.seq_len
        chunks = [(pred[i:i + n], target[i:i + n]) for i in range(0, len(pred) - n + 1, n)]
        if self.lbd and chunks:
            loss = loss + self.lbd * torch.stack([self.ranking_loss(p, t) for p, t in chunks]).mean()
        return loss
