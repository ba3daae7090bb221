"""3D ResNet-18 brain-age regression (open-source "brain-age-estimation" project, IXI)."""
