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


def test_somp_and_lrf_keep_a_spanning_set():
    F = redundant_conv().weight.data.reshape(8, -1)
    Fn = F / F.norm(dim=1, keepdim=True)
    first4 = somp_order(Fn, ridge=1e-6, limit=4)
    # the first four chosen span the space: every filter is reproduced from them
    A = F[first4]
    lam = torch.linalg.lstsq(A.T, F.T).solution.T
    assert torch.allclose(lam @ A, F, atol=1e-4)
    removed_first = lrf_removal_order(F, torch.ones(8))[:4]
    keep = sorted(set(range(8)) - set(removed_first))
    lam = torch.linalg.lstsq(F[keep].T, F.T).solution.T
    assert torch.allclose(lam @ F[keep], F, atol=1e-4)


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
