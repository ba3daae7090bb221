"""ResNet-18 transfer-learning classifier of axial mid-slices into age groups (MathWorks example, ds000228)."""
