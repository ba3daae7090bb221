"""ResNet-18 transfer-learning classifier of axial mid-slices into age groups (MathWorks example, ds000228)."""

import common  # noqa: F401  (first: pins the CPU code paths before any tensor operation, common/numerics.py)
