"""3D ResNet-18 brain-age regression (open-source "brain-age-estimation" project, IXI)."""

import common  # noqa: F401  (first: pins the CPU code paths before any tensor operation, common/numerics.py)
