"""Pin the CPU code paths so that fp32 results do not depend on which x86-64 CPU runs them.

The project's machines are not all the same CPU: some AMD EPYCs have AVX2 only (Zen 3), others
AVX-512 with native bf16 (Zen 4). PyTorch dispatches its own vectorised kernels (ATen), its
convolutions (oneDNN) and its BLAS (MKL) to the widest instruction set the CPU has, and different
instruction sets sum in different orders. Measured here on a Zen 4: six fp32 AdamW steps of the
3D ResNet-18 from the same seed gave a weight sum of 1236.80 with AVX-512 kernels and 1255.89 with
AVX2 kernels, and a full training run moved test MAE by 2 y between the two CPU kinds. The cost,
from ``scripts/bench.py`` on a Zen 4: a real resnet3d IXI-HH epoch took 20.1 s pinned (``precision``
section; 21 s unpinned in the issue that asked for this), the bare training step 0.81 s pinned vs
0.58 s native (``numerics`` section), so up to about 40% of the step where AVX-512 kernels are faster.

:func:`pin_cpu_isa` therefore caps ATen and oneDNN at AVX2, the widest set every machine has, puts MKL
on its CPU-independent branch, all through their documented environment variables
(``ATEN_CPU_CAPABILITY``, ``ONEDNN_MAX_CPU_ISA``, ``MKL_CBWR``), and caps numpy's SIMD dispatch likewise
(``NPY_DISABLE_CPU_FEATURES``). The torch ones are read lazily, at each library's first kernel, numpy's
at its import, so setting them when :mod:`common` is imported (before any tensor operation; the method
packages import it first) is enough; an explicit value set by the user is respected, and
``BRAINMRI_CPU_ISA=native`` turns the pinning off.

Across CPU vendors, measured with per-kernel digests (``scripts/bench.py --sections=numerics``) on an
Intel Xeon (AVX-512, AMX) and an AMD EPYC (AVX2 only): under this pin oneDNN's convolution, batch norm
and pooling and ATen's reductions give the same bits on both. MKL differed in two places: its sgemm
(matmul, linear) on the ``MKL_CBWR=AVX2`` branch, identical on both under ``COMPATIBLE`` (hence that
value, about 30% slower on large matrices on the EPYC; convolutions do not use it), and its vector math
library (VML: ``torch.exp``, ``log``, ``sqrt``, ``tanh`` and a few more on contiguous float tensors),
which is vendor-specific under every ``MKL_CBWR`` value. Training avoids VML where it mattered, the
optimizer's square root (:func:`common.training.adam`, the fused kernel); what still calls VML is listed
in README.md.

Those per-kernel digests were taken at small shapes. The whole training fingerprint (the 3D
ResNet-18 after 5 AdamW steps) still differed between an AVX2-only EPYC (Zen 3) and an AVX-512 EPYC
(Zen 4) under this pin, and equalled the Xeon's on the Zen 4; with oneDNN off it was the same on both
EPYCs. oneDNN picks its convolution implementations and their blocking per CPU (cache sizes among
them) even when capped at AVX2. fp32 work therefore runs without oneDNN (:data:`ONEDNN_ENV`,
:func:`onednn_allowed`): convolutions go to ATen's own kernels, whose matrix products are MKL's
``COMPATIBLE`` sgemm.

This module imports nothing heavy (no torch), so every entry point can import it first.
"""

from __future__ import annotations

import os
import platform

#: ``BRAINMRI_CPU_ISA``: ``avx2`` (default: the project's reference instruction set) or ``native``.
ISA_ENV = "BRAINMRI_CPU_ISA"

#: ``BRAINMRI_ONEDNN``: ``0`` (default where the pin applies) or ``1``. oneDNN (PyTorch's ``mkldnn``
#: backend: convolutions, batch norm, pooling) gave different fp32 training bits on an AVX2-only EPYC
#: (Zen 3) and on AVX-512 CPUs (a Zen 4 EPYC, an Intel Xeon) even when capped at AVX2, while the same
#: training without it gave the same bits on both EPYCs (``scripts/bench.py --sections=numerics``). So
#: fp32 runs go without it, about 2x slower; ``1`` turns it back on (faster, results CPU-specific).
ONEDNN_ENV = "BRAINMRI_ONEDNN"

#: The variables that pin each library to AVX2 code paths.
AVX2_PIN = {
    "ATEN_CPU_CAPABILITY": "avx2",      # PyTorch's own vectorised kernels
    "ONEDNN_MAX_CPU_ISA": "AVX2",       # convolutions, pooling, batch norm (oneDNN)
    # MKL's CPU-independent branch (matmul, linear): its sgemm gives the same bits on an Intel Xeon and an
    # AMD EPYC, the AVX2 branch does not (benchmarks/BENCHMARKS.md, numerics section)
    "MKL_CBWR": "COMPATIBLE",
    # numpy's own SIMD dispatch (sums, means: preprocessing); read when numpy is first imported
    "NPY_DISABLE_CPU_FEATURES": "AVX512F AVX512CD AVX512_KNL AVX512_KNM AVX512_SKX AVX512_CLX AVX512_CNL AVX512_ICL "
                                "AVX512_SPR",
}

#: cuBLAS needs this for deterministic matmuls (read when cuBLAS starts; harmless on CPU).
CUBLAS_WORKSPACE = ("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
#: ITK (inside ANTsPy: N4, registration) sums over threads in a varying order, so a registration in
#: several threads differs from run to run even with its seed; one thread gives the same bits every time
#: (:func:`common.data.registration.ants_registration`). Read when ITK starts its thread pool, so set at
#: import; the preprocessing runs one scan per process on every core instead.
ITK_THREADS = ("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")

#: Names of the variables :func:`pin_cpu_isa` set (not the user), comma-separated; inherited by
#: child processes so that they too can tell the project's pin from a user's choice.
PINNED_ENV = "BRAINMRI_PINNED"


def _pinned_by_us() -> set[str]:
    return {k for k in os.environ.get(PINNED_ENV, "").split(",") if k}


def cpu_flags() -> set[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where that file does not exist)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def pin_applies() -> bool:
    """Whether the AVX2 pin applies here: an x86-64 CPU with AVX2, and no ``BRAINMRI_CPU_ISA=native``."""
    if os.environ.get(ISA_ENV, "avx2").lower() == "native":
        return False
    return platform.machine().lower() in {"x86_64", "amd64"} and "avx2" in cpu_flags()


def pin_cpu_isa() -> dict[str, str]:
    """Cap ATen and oneDNN at AVX2 and put MKL on its CPU-independent branch, on x86-64 CPUs that have
    AVX2 (see the module docstring).

    Variables the user already set are left as they are; nothing is set with
    ``BRAINMRI_CPU_ISA=native``, on non-x86 machines, or on CPUs without AVX2.

    Returns:
        The variables this call set.
    """
    os.environ.setdefault(*CUBLAS_WORKSPACE)
    os.environ.setdefault(*ITK_THREADS)
    if not pin_applies():
        return {}
    done = {}
    for key, value in AVX2_PIN.items():
        if key not in os.environ:
            os.environ[key] = value
            done[key] = value
    if done:
        os.environ[PINNED_ENV] = ",".join(sorted(_pinned_by_us() | set(done)))
    return done


def onednn_allowed() -> bool:
    """Whether fp32 work may use oneDNN: only when asked for (``BRAINMRI_ONEDNN=1``), with
    ``BRAINMRI_CPU_ISA=native``, or where the pin does not apply (non-x86 or no AVX2). See
    :data:`ONEDNN_ENV` for why it is off otherwise; :func:`common.device.apply_onednn_policy` applies it.

    Raises:
        ValueError: ``BRAINMRI_ONEDNN`` is set to something other than ``0`` or ``1``.
    """
    explicit = os.environ.get(ONEDNN_ENV)
    if explicit is not None and explicit.strip() != "":
        if explicit.strip() not in {"0", "1"}:
            raise ValueError(f"{ONEDNN_ENV}={explicit!r}: use 1 (oneDNN on, CPU-specific results) or 0 (off)")
        return explicit.strip() == "1"
    return not pin_applies()


def release_onednn_pin() -> bool:
    """Let oneDNN use the CPU's native instruction set again (for an explicit bf16 run, whose fast
    kernels need AVX512-BF16/AMX). Effective only before the process's first oneDNN kernel.

    Returns:
        True if this module had set the cap and removed it.
    """
    pinned = _pinned_by_us()
    if "ONEDNN_MAX_CPU_ISA" in pinned and os.environ.get("ONEDNN_MAX_CPU_ISA") == AVX2_PIN["ONEDNN_MAX_CPU_ISA"]:
        os.environ.pop("ONEDNN_MAX_CPU_ISA")
        os.environ[PINNED_ENV] = ",".join(sorted(pinned - {"ONEDNN_MAX_CPU_ISA"}))
        return True
    return False


def isa_settings() -> dict[str, str | None]:
    """The pinning variables in force, and ITK's thread count (recorded with every run)."""
    return {key: os.environ.get(key) for key in (ISA_ENV, ONEDNN_ENV, *AVX2_PIN, ITK_THREADS[0])}
