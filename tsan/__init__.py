import common  # noqa: F401  (first: pins the CPU code paths before any tensor operation, common/numerics.py)
