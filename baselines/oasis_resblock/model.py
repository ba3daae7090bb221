"""Small 3D residual CNN regressor of the "Neural Age Estimation" OASIS-2 tutorial.

Source: the self-learning tutorial "Neural Age Estimation: MRI-Based Brain Age Prediction using
Deep Learning" (OASIS-2). Stem Conv3d 1->16 (3^3) + BN + ReLU + Dropout3d 0.3; three residual
blocks 16->32, 32->64, 64->128 (two 3^3 conv+BN, ReLU, dropout after the first ReLU, a 1x1x1
conv+BN projection shortcut), each followed by 2^3 max-pooling; head: global average pool ->
FC 128->64, ReLU, dropout 0.7 -> FC 64->32, ReLU, dropout 0.5 -> FC 32->1. 894,529 parameters.
"""

from __future__ import annotations

import torch
from torch import nn


class ResBlock3D(nn.Module):
    """Residual block: conv-BN-ReLU-Dropout3d-conv-BN + 1x1x1 conv-BN projection, then ReLU.

    Shapes: (B, in_ch, D, H, W) -> (B, out_ch, D, H, W).
    """

    def __init__(self, in_ch: int, out_ch: int, dropout: float):
        super().__init__()
        self.conv1 = nn.Conv3d(in_ch, out_ch, 3, padding=1)
        self.bn1 = nn.BatchNorm3d(out_ch)
        self.drop = nn.Dropout3d(dropout)
        self.conv2 = nn.Conv3d(out_ch, out_ch, 3, padding=1)
        self.bn2 = nn.BatchNorm3d(out_ch)
        self.project = nn.Sequential(nn.Conv3d(in_ch, out_ch, 1), nn.BatchNorm3d(out_ch))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.drop(self.act(self.bn1(self.conv1(x))))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.project(x))


class OasisResBlockRegressor(nn.Module):
    """The tutorial's regressor; outputs a z-scored age (de-normalised by the caller).

    Shapes: ``x`` (B, 1, 64, 64, 64) float32 whole-volume z-scored -> (B,) z-scored age.
    """

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv3d(1, 16, 3, padding=1), nn.BatchNorm3d(16), nn.ReLU(inplace=True),
                                  nn.Dropout3d(0.3))
        self.blocks = nn.Sequential(
            ResBlock3D(16, 32, 0.2), nn.MaxPool3d(2),
            ResBlock3D(32, 64, 0.3), nn.MaxPool3d(2),
            ResBlock3D(64, 128, 0.4), nn.MaxPool3d(2),
        )
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool3d(1), nn.Flatten(),
            nn.Linear(128, 64), nn.ReLU(inplace=True), nn.Dropout(0.7),
            nn.Linear(64, 32), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(32, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, H, W) -> (B,)."""
        return self.head(self.blocks(self.stem(x))).squeeze(1)
