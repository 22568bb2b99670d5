"""Models for exactness tests, importable by path (no package-relative imports)."""

import torch
import torch.nn as nn


def redundant_conv():
    """A conv whose filters 4..7 are exact combinations of filters 0..3."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    base = torch.randn(4, 3, 3, 3)
    mix = torch.randn(4, 4)
    conv.weight.data = torch.cat([base, torch.einsum("ij,jchw->ichw", mix, base)])
    return conv


class LinearPath(nn.Module):
    """conv -> BN -> conv: a linear path, where fold compensation must be exact."""

    def __init__(self):
        super().__init__()
        self.conv1 = redundant_conv()
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 6, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        return self.fc(self.pool(self.bn2(self.conv2(self.bn1(self.conv1(x))))).flatten(1))
