"""ScaleDense, the two networks of TSAN (two-stage age network).

Source: Liu et al., "Brain Age Estimation from MRI Using a Two-Stage Cascade Network with Ranking
Loss", MICCAI 2020, and Cheng, Liu et al., IEEE TMI 2021; public code "TSAN-brain-age-estimation"
(``TSAN/model/ScaleDense.py``, ``Second_stage_ScaleDense.py``). With ``nb_filter=8, nb_block=5``
the first-stage network has 102,378,307 parameters and the second-stage network 102,379,411, as in
the public code (both keep the head they do not use, so their state dicts match it).
"""

from __future__ import annotations

import torch
from torch import nn


class SqueezeExcitation3d(nn.Module):
    """Channel attention (Hu et al., CVPR 2018): global average pool -> FC C/r -> ReLU -> FC C ->
    sigmoid -> rescale. Shapes: (B, C, D, H, W) -> same."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.fc1 = nn.Linear(channels, channels // reduction)
        self.fc2 = nn.Linear(channels // reduction, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x.mean(dim=(2, 3, 4))
        w = torch.sigmoid(self.fc2(torch.relu(self.fc1(w))))
        return x * w[:, :, None, None, None]


class AsymmetricConv3d(nn.Module):
    """Asymmetric convolution (ACNet, Ding et al., ICCV 2019, in 3D): the sum of four conv+BN
    branches with kernels 3x3x3, 1x1x3, 3x1x1 and 1x3x1 ('same' padding, no bias).
    Shapes: (B, C_in, D, H, W) -> (B, C_out, D, H, W)."""

    KERNELS = ((3, 3, 3), (1, 1, 3), (3, 1, 1), (1, 3, 1))

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv3d(in_channels, out_channels, k, padding=tuple(s // 2 for s in k), bias=False),
                          nn.BatchNorm3d(out_channels))
            for k in self.KERNELS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(branch(x) for branch in self.branches)


class ScaleDenseBlock(nn.Module):
    """Two asymmetric convolutions (each + BN + ELU), squeeze-excitation and 2x max-pool, concatenated
    with the 2x max-pooled input. Shapes: (B, C, D, H, W) -> (B, C + C_out, D//2, H//2, W//2)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.body = nn.Sequential(
            AsymmetricConv3d(in_channels, out_channels), nn.BatchNorm3d(out_channels), nn.ELU(),
            AsymmetricConv3d(out_channels, out_channels), nn.BatchNorm3d(out_channels), nn.ELU(),
            SqueezeExcitation3d(out_channels), nn.MaxPool3d(2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([nn.functional.max_pool3d(x, 2), self.body(x)], dim=1)


class _SingleChannelConv3dFunction(torch.autograd.Function):
    """3D convolution of a 1-channel input whose weight gradient is computed tap by tap (one
    matrix-vector product per kernel position) instead of by PyTorch's CPU kernel for dilated 3D
    convolutions, which is very slow for one input channel (measured: 2.3 s vs 0.2 s for the TSAN stem
    at 4 mm, batch 4). Same results up to float rounding (tested)."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding: int, dilation: int):
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.dilation = padding, dilation
        return nn.functional.conv3d(x, weight, bias, padding=padding, dilation=dilation)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        p, d = ctx.padding, ctx.dilation
        grad = grad.to(weight.dtype)  # under autocast the convolution ran in bf16/fp16
        padded = nn.functional.pad(x, (p,) * 6)[:, 0]
        out_d, out_h, out_w = grad.shape[2:]
        flat = grad.transpose(0, 1).reshape(grad.shape[1], -1)
        grad_w = torch.empty_like(weight)
        kd, kh, kw = weight.shape[2:]
        for i in range(kd):
            for j in range(kh):
                for k in range(kw):
                    tap = padded[:, i * d:i * d + out_d, j * d:j * d + out_h, k * d:k * d + out_w].reshape(-1)
                    grad_w[:, 0, i, j, k] = flat @ tap
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.nn.grad.conv3d_input(x.shape, weight, grad, padding=p, dilation=d).to(x.dtype)
        return grad_x, grad_w, grad.sum(dim=(0, 2, 3, 4)), None, None


class StemConv3d(nn.Conv3d):
    """``nn.Conv3d`` (same parameters and state dict) that uses :class:`_SingleChannelConv3dFunction`
    for one input channel on the CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_channels == 1 and x.device.type == "cpu" and self.weight.requires_grad and torch.is_grad_enabled():
            return _SingleChannelConv3dFunction.apply(x, self.weight, self.bias, self.padding[0], self.dilation[0])
        return super().forward(x)


class ScaleDenseTrunk(nn.Module):
    """Stem (Conv3d 1->nb_filter, kernel 7, dilation 2, padding 1, ELU), ``nb_block`` ScaleDense blocks
    (block i: C -> 2C new channels, so C grows 8 -> 24 -> 72 -> 216 -> 648 -> 1944), global average pool,
    FC -> 32 + ELU. Shapes: (B, 1, D, H, W) -> (B, 32)."""

    def __init__(self, nb_filter: int = 8, nb_block: int = 5):
        super().__init__()
        self.stem = nn.Sequential(StemConv3d(1, nb_filter, kernel_size=7, padding=1, dilation=2), nn.ELU())
        blocks, channels = [], nb_filter
        for _ in range(nb_block):
            blocks.append(ScaleDenseBlock(channels, 2 * channels))
            channels += 2 * channels
        self.blocks = nn.Sequential(*blocks)
        self.out_channels = channels
        self.fc = nn.Sequential(nn.Linear(channels, 32), nn.ELU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.fc(x.mean(dim=(2, 3, 4)))


def _sex_branch() -> nn.Sequential:
    """One-hot sex (2) -> FC 16 -> FC 8 -> ELU (no activation between the two layers, as the source)."""
    return nn.Sequential(nn.Linear(2, 16), nn.Linear(16, 8), nn.ELU())


class ScaleDense(nn.Module):
    """TSAN stage 1: brain age from a T1 volume and sex.

    Head: trunk features (32) concatenated with the sex branch (8) -> FC 16 -> FC 1 -> ReLU; without
    sex, trunk (32) -> FC 16 -> FC 1 -> ReLU (both heads exist, as in the public code).

    Shapes: ``x`` (B, 1, D, H, W) float32 (z-scored brain, 91x109x91 at 2 mm in the paper),
    ``sex`` (B, 2) one-hot (column 0 female, 1 male) -> (B, 1) age in years.
    """

    def __init__(self, nb_filter: int = 8, nb_block: int = 5, use_sex: bool = True):
        super().__init__()
        self.use_sex = use_sex
        self.trunk = ScaleDenseTrunk(nb_filter, nb_block)
        self.sex_fc = _sex_branch()
        self.head_with_sex = nn.Sequential(nn.Linear(40, 16), nn.Linear(16, 1), nn.ReLU())
        self.head_without_sex = nn.Sequential(nn.Linear(32, 16), nn.Linear(16, 1), nn.ReLU())

    def forward(self, x: torch.Tensor, sex: torch.Tensor) -> torch.Tensor:
        features = self.trunk(x)
        if self.use_sex:
            return self.head_with_sex(torch.cat([features, self.sex_fc(sex.flatten(1).to(features.dtype))], 1))
        return self.head_without_sex(features)


class SecondStageScaleDense(nn.Module):
    """TSAN stage 2: a residual age added to the discretised stage-1 age.

    The discretised age ``d`` goes through FC 1 -> 32 -> 16 with ReLU; trunk (32), sex (8) and ``d``
    features (16) -> FC 16 -> FC 1 = residual ``r`` (no final activation); prediction ``d + r``.

    Args:
        normalize_discrete_age: the named, non-default ``normalized_d`` variant: feed
            ``(d - age_mean) / age_std`` to the ``d`` branch instead of ``d`` in years (see tsan/README.md).
        age_mean, age_std: training-split age statistics used by that variant (years).

    Shapes: ``x`` (B, 1, D, H, W), ``sex`` (B, 2), ``d`` (B, 1) years -> ``(r, d + r)``, each (B, 1).
    """

    def __init__(self, nb_filter: int = 8, nb_block: int = 5, use_sex: bool = True,
                 normalize_discrete_age: bool = False, age_mean: float = 0.0, age_std: float = 1.0):
        super().__init__()
        self.use_sex = use_sex
        self.trunk = ScaleDenseTrunk(nb_filter, nb_block)
        self.discrete_age_fc = nn.Sequential(nn.Linear(1, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU())
        self.sex_fc = _sex_branch()
        self.head_with_sex = nn.Sequential(nn.Linear(56, 16), nn.Linear(16, 1))
        self.head_without_sex = nn.Sequential(nn.Linear(48, 16), nn.Linear(16, 1))
        self.normalize_discrete_age = normalize_discrete_age
        self.register_buffer("age_stats", torch.tensor([age_mean, age_std], dtype=torch.float32))

    def forward(self, x: torch.Tensor, sex: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.trunk(x)
        d_in = (d - self.age_stats[0]) / self.age_stats[1] if self.normalize_discrete_age else d
        parts = [features]
        if self.use_sex:
            parts.append(self.sex_fc(sex.flatten(1).to(features.dtype)))
        parts.append(self.discrete_age_fc(d_in.to(features.dtype)))
        head = self.head_with_sex if self.use_sex else self.head_without_sex
        residual = head(torch.cat(parts, 1))
        return residual, residual + d


def init_weights(module: nn.Module) -> None:
    """The public code's ``weights_init``: convolutions Kaiming-normal (fan-in, leaky-ReLU gain) with
    zero bias, linear layers Xavier-normal with zero bias, BatchNorm weight 1 and bias 0.
    Use as ``model.apply(init_weights)``."""
    if isinstance(module, nn.Conv3d):
        nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="leaky_relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear):
        nn.init.xavier_normal_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def discretize_age(age: torch.Tensor, step: float = 5.0) -> torch.Tensor:
    """Round ages to the nearest multiple of ``step``, halves up (the public code's
    ``discretize_age``: 62.4 -> 60, 62.5 -> 65, 65 -> 65). Shapes: any -> same (years)."""
    if step <= 0:
        raise ValueError(f"discretisation step must be > 0, got {step}")
    low = torch.div(age, step, rounding_mode="floor") * step
    return torch.where(age - low < step / 2, low, low + step)


def sex_one_hot(sex: torch.Tensor) -> torch.Tensor:
    """(B,) integer sex codes (0 female, 1 male) -> (B, 2) float one-hot, as the public code's
    ``scatter_`` does.

    Raises:
        ValueError: a code other than 0 or 1 (unknown sex must be excluded or imputed upstream).
    """
    sex = sex.long().flatten()
    if ((sex < 0) | (sex > 1)).any():
        raise ValueError("sex codes must be 0 (female) or 1 (male)")
    return nn.functional.one_hot(sex, 2).float()


def _is_male(sex: torch.Tensor) -> torch.Tensor:
    """Dataset sex codes (:data:`common.data.datasets.SEX_CODES`: 0 = M, 1 = F, -1 unknown) -> the
    public code's label (1 = male, 0 = female)."""
    if (sex < 0).any():
        raise ValueError("TSAN needs each subject's sex; exclude subjects with unknown sex before training")
    return (sex == 0).long()


class FirstStage(nn.Module):
    """Stage 1 as the training loop calls it: ``(image, sex code) -> age``.

    Args:
        net: a :class:`ScaleDense`.
        downsample: average-pool factor applied to the cached 2 mm input (1 = none; 2 = 4 mm, ``cpu``).

    Shapes: ``x`` (B, 1, 91, 109, 91), ``sex`` (B,) dataset codes -> (B,) years.
    """

    extra_inputs = ("sex",)
    #: the source's unused no-sex head stays in the model (DistributedDataParallel must know).
    has_unused_parameters = True

    def __init__(self, net: ScaleDense, downsample: int = 1):
        super().__init__()
        self.net, self.downsample = net, downsample

    def forward(self, x: torch.Tensor, sex: torch.Tensor) -> torch.Tensor:
        if self.downsample > 1:
            x = nn.functional.avg_pool3d(x, self.downsample, ceil_mode=True)
        return self.net(x, sex_one_hot(_is_male(sex))).reshape(-1)


class SecondStage(nn.Module):
    """Stage 2 as the training loop calls it: the frozen stage 1 gives ``d`` (discretised), the
    second network the residual ``r``; returns ``d + r``. :meth:`components` gives ``(d, r)``.

    Args:
        given_stage1_age: the model also takes a ``stage1_age`` batch entry (years; NaN = compute it
            with ``first``), used by the ``out_of_fold`` variant to train on out-of-fold stage-1 ages.

    Shapes: ``x`` (B, 1, 91, 109, 91), ``sex`` (B,), optional ``stage1_age`` (B,) -> (B,) years.
    """

    extra_inputs: tuple[str, ...] = ("sex",)
    has_unused_parameters = True

    def __init__(self, first: FirstStage, net: SecondStageScaleDense, dis_range: float = 5.0,
                 given_stage1_age: bool = False):
        super().__init__()
        self.first = first.requires_grad_(False).eval()
        self.net, self.dis_range = net, dis_range
        if given_stage1_age:
            self.extra_inputs = ("sex", "stage1_age")

    def train(self, mode: bool = True) -> SecondStage:
        super().train(mode)
        self.first.eval()  # stage 1 stays frozen, BatchNorm statistics included
        return self

    def components(self, x: torch.Tensor, sex: torch.Tensor, stage1_age: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(d, r)``: the discretised stage-1 age and the predicted residual, each (B,) years.
        ``stage1_age`` (B,) replaces the frozen stage 1's output where it is not NaN."""
        with torch.no_grad():
            if stage1_age is None or torch.isnan(stage1_age).any():
                computed = self.first(x, sex)
                stage1_age = computed if stage1_age is None else torch.where(torch.isnan(stage1_age), computed,
                                                                             stage1_age.to(computed.dtype))
            d = discretize_age(stage1_age.reshape(-1), self.dis_range)
        if self.first.downsample > 1:
            x = nn.functional.avg_pool3d(x, self.first.downsample, ceil_mode=True)
        residual, _ = self.net(x, sex_one_hot(_is_male(sex)), d[:, None])
        return d, residual.reshape(-1)

    def forward(self, x: torch.Tensor, sex: torch.Tensor, stage1_age: torch.Tensor | None = None) -> torch.Tensor:
        d, residual = self.components(x, sex, stage1_age)
        return d + residual
