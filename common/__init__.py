"""Shared code for every method: data sources, splits, metrics, device selection, run logging.

Importing :mod:`common` pins PyTorch's CPU code paths to AVX2 (:mod:`common.numerics`), before any
tensor operation, so that fp32 results are the same on every x86-64 CPU the project runs on.
"""

from common.numerics import pin_cpu_isa as _pin_cpu_isa

_pin_cpu_isa()
