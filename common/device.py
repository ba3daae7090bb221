"""Device selection, training precision, deterministic numerics and seeding shared by every method."""

from __future__ import annotations

import logging
import os
import platform
import random

import numpy as np
import torch

from common import distributed, numerics

log = logging.getLogger(__name__)


def select_device(preference: str = "auto") -> torch.device:
    """Pick the compute device.

    Args:
        preference: ``"auto"`` (cuda > mps > cpu), or an explicit ``"cuda"``, ``"cuda:1"``,
            ``"mps"`` or ``"cpu"``.

    Returns:
        The selected ``torch.device``. Under torchrun (``WORLD_SIZE`` > 1) the process also joins
        the process group (:func:`common.distributed.init_distributed`) and gets ``cuda:LOCAL_RANK``.

    Raises:
        ValueError: if an explicit device is requested that is not available here.
    """
    device = _pick_device(preference)
    if distributed.init_distributed(device.type):
        device = distributed.local_device(device)
    return device


def _pick_device(preference: str) -> torch.device:
    if preference == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(preference)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={preference!r} requested but CUDA is not available on this machine")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={preference!r} requested but MPS is not available on this machine")
    return device


def cpu_has_fast_bf16() -> bool:
    """True if the CPU has native bf16 arithmetic (AVX512-BF16 or AMX).

    Without it, bf16 autocast is emulated: measured on an AVX2-only AMD EPYC here, a 3D ResNet-18
    training step ran 20-70x slower in bf16 than in fp32.
    """
    flags = numerics.cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


#: Training precisions a profile or ``--amp_dtype`` may name, and their autocast dtypes.
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(device: torch.device, requested: str) -> str:
    """The precision a run trains and predicts in; never chosen from the hardware by itself.

    - ``"fp32"``: no autocast (every ``cpu`` profile, on every CPU).
    - ``"fp16"``: fp16 autocast with a gradient scaler on CUDA (the ``paper`` profiles whose sources
      use CUDA AMP). On any other device it resolves to ``"fp32"``, with a warning: CPUs have no
      fast fp16 path, and the sources ran fp16 on GPUs only.
    - ``"bf16"``: bf16 autocast, only when asked for (``--amp_dtype=bf16``). On a CPU without native
      bf16 it is honoured with a warning (emulated, 20-70x slower).

    Args:
        device: where the run computes.
        requested: ``"fp32"``, ``"bf16"`` or ``"fp16"``.

    Returns:
        The precision in force (a key of :data:`PRECISIONS`).

    Raises:
        ValueError: ``requested`` is not one of :data:`PRECISIONS`.
    """
    requested = str(requested).lower()
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}; choose one of {sorted(PRECISIONS)}")
    if requested == "fp16" and device.type != "cuda":
        log.warning("precision fp16 is CUDA mixed precision; on %s this run trains in fp32", device.type)
        return "fp32"
    if requested == "bf16" and device.type == "cpu" and not cpu_has_fast_bf16():
        log.warning("precision bf16 on a CPU without native bf16 (no avx512_bf16/amx_bf16): emulated, 20-70x slower")
    return requested


def precision_of_run(config: dict) -> str:
    """The precision a finished run trained in, from its ``config.json`` (also runs recorded
    before ``precision`` existed, whose ``amp_dtype`` holds ``"torch.bfloat16"``, ``"None"``...)."""
    if config.get("precision") in PRECISIONS:
        return config["precision"]
    legacy = str(config.get("amp_dtype", "None"))
    return {"torch.bfloat16": "bf16", "torch.float16": "fp16"}.get(legacy, "fp32")


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The ``torch.autocast`` dtype of a resolved precision (None: fp32, no autocast)."""
    return PRECISIONS[precision]


def apply_onednn_policy(precision: str = "fp32") -> bool:
    """Switch PyTorch's oneDNN backend (``torch.backends.mkldnn``) on or off for this process.

    fp32 work runs without it unless :func:`common.numerics.onednn_allowed` (its convolutions gave
    different bits on different CPU kinds; see :data:`common.numerics.ONEDNN_ENV`); a bf16 run keeps
    it, since CPU bf16 convolutions need it. Called when this module is imported, by
    :func:`configure_numerics`, and before preprocessing's brain extraction. Effective for every
    later kernel, so it must run before the first convolution whose bits matter.

    Args:
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (see :func:`resolve_precision`).

    Returns:
        Whether oneDNN is on.

    Raises:
        ValueError: ``BRAINMRI_ONEDNN`` holds something other than ``0`` or ``1``.
    """
    enabled = precision == "bf16" or numerics.onednn_allowed()
    torch.backends.mkldnn.enabled = enabled
    return enabled


apply_onednn_policy()


def configure_numerics(device: torch.device, precision: str) -> dict:
    """Make training deterministic and its precision explicit; call before the first tensor work.

    - deterministic algorithms (``torch.use_deterministic_algorithms(True, warn_only=True)``: ops
      without a deterministic kernel warn instead of failing), cuDNN benchmark off;
    - on CPU, a fixed thread count (:func:`configure_cpu_threads`), the AVX2 pin of
      :mod:`common.numerics`, and no oneDNN in fp32 (:func:`apply_onednn_policy`); a bf16 run keeps
      oneDNN, with the CPU's native instruction set, which its fast kernels need;
    - the precision in force is logged.

    Returns:
        The facts recorded with the run (:func:`numerics_info`).
    """
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    if device.type == "cpu":
        configure_cpu_threads()
        if precision == "bf16" and numerics.release_onednn_pin():
            log.info("bf16 run: oneDNN may use the CPU's native instruction set (results are CPU-specific)")
        if apply_onednn_policy(precision) and precision != "bf16":
            log.warning("fp32 with oneDNN (%s=1 or a native instruction set): faster, but the bits depend on "
                        "the CPU kind", numerics.ONEDNN_ENV)
    info = numerics_info()
    log.info("precision %s on %s (%s); CPU code paths %s, oneDNN %s, %d threads", precision, device,
             info["cpu_model"], info["cpu_capability"], "on" if info["onednn"] else "off", info["threads"])
    return info


def numerics_info() -> dict:
    """CPU model and flags, instruction set in force, threads, torch build: what a result depends on."""
    flags = numerics.cpu_flags()
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), model)
    except OSError:
        model = platform.processor() or platform.machine()
    config = torch.__config__.show()
    return {
        "cpu_model": model,
        "cpu_flags": {f: f in flags for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")},
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "isa_pin": numerics.isa_settings(),
        "onednn": torch.backends.mkldnn.enabled,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torch_git": torch.version.git_version,
        "torch_blas": next((line.strip(" -") for line in config.splitlines() if "Math Kernel Library" in line
                            or "OpenBLAS" in line), None),
        "torch_onednn": next((line.strip(" -") for line in config.splitlines() if "MKL-DNN" in line
                              or "oneDNN" in line), None),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
    }


def default_profile() -> str:
    """``"paper"`` when a GPU is present, else ``"cpu"`` (the reduced profile for a 2-core machine)."""
    return "paper" if torch.cuda.is_available() else "cpu"


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) for a reproducible run."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


#: CPU threads of a run unless ``OMP_NUM_THREADS`` says otherwise: the reference machines' 2 cores.
#: Fixed, not the core count, because the split of a reduction between threads changes its
#: rounding, so a run on a machine with more cores would not reproduce the committed results.
REFERENCE_CPU_THREADS = 2


def configure_cpu_threads() -> int:
    """Fix the intra-op thread count; returns it.

    ``OMP_NUM_THREADS`` if set, else :data:`REFERENCE_CPU_THREADS` whatever the core count (for
    results that do not depend on the machine); under torchrun shared out between the
    ``LOCAL_WORLD_SIZE`` processes of this machine.
    """
    local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    n = int(os.environ.get("OMP_NUM_THREADS", 0)) or max(1, REFERENCE_CPU_THREADS // local_processes)
    torch.set_num_threads(n)
    return n
