"""Baseline brain-age methods: the OASIS ResBlock regressor, VGG16 features + SVR, ROI ridge."""

import common  # noqa: F401  (first: pins the CPU code paths before any tensor operation, common/numerics.py)
