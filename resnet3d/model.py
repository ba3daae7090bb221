"""3D ResNet-18 brain-age regressor.

Source: the open-source "brain-age-estimation" project (3D ResNet track, IXI, MONAI preprocessing):
a 3D ResNet-18 (He et al., CVPR 2016, "Deep Residual Learning for Image Recognition", inflated to
3D as in Hara et al., CVPR 2018) regressing age in years.

Architecture: Conv3d 1->64, 7^3, stride 2 + BN + ReLU; 3^3 max-pool stride 2; four stages of two
basic blocks with 64/128/256/512 channels (stride 2 from stage 2 on, 1x1x1 conv projection
shortcuts without bias); global average pool; dropout 0.3; Linear 512 -> 1. Kaiming-normal
initialisation of the convolutions (MONAI's ``ResNet`` init), Xavier-uniform output weights and a
zero output bias, as the source. The trunk is MONAI's ``monai.networks.nets.ResNet``.
"""

from __future__ import annotations

import torch
from monai.networks.nets import ResNet
from torch import nn


class BrainAgeResNet3D(nn.Module):
    """3D ResNet-18 with a dropout + linear regression head.

    Args:
        dropout: dropout probability before the final linear layer (source: 0.3).
        widths: channels of the four stages (source: 64, 128, 256, 512; smaller for tests).
        init_age_bias: initial value of the output bias, years. The source initialises it to 0;
            setting it to the training-set mean age is a documented deviation of the ``cpu``
            profile (see resnet3d/README.md).

    Shapes:
        ``x``: (B, 1, D, H, W) float32, z-scored intensities -> (B,) predicted age in years.
    """

    def __init__(self, dropout: float = 0.3, widths: tuple[int, int, int, int] = (64, 128, 256, 512),
                 init_age_bias: float = 0.0):
        super().__init__()
        self.trunk = ResNet(
            block="basic", layers=[2, 2, 2, 2], block_inplanes=list(widths), spatial_dims=3,
            n_input_channels=1, conv1_t_size=7, conv1_t_stride=2, no_max_pool=False,
            shortcut_type="B", num_classes=1, feed_forward=False, bias_downsample=False,
        )
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(widths[-1], 1)
        nn.init.xavier_uniform_(self.fc.weight)  # the source's output-layer initialisation
        nn.init.zeros_(self.fc.bias)
        with torch.no_grad():
            self.fc.bias.fill_(init_age_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, H, W) -> (B,) age in years."""
        features = self.trunk(x)  # (B, widths[-1]) after global average pooling
        return self.fc(self.dropout(features)).squeeze(1)
