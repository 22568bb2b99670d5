import torch.nn as nn


class Add(nn.Module):
    """A residual addition as a module, so attribution rules (LRP's epsilon rule for sums) can
    attach to it; ``a + b`` written inline is invisible to module hooks."""

    def forward(self, a, b):
        return a + b


def ch(c: int, width: float, divisor: int = 1) -> int:
    """Channel count ``c`` scaled by a width multiplier, at least 1 (rounded to ``divisor``)."""
    v = max(divisor, int(round(c * width / divisor)) * divisor)
    return max(1, v)


def init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


class Sandwich(nn.Module):
    """A pruned conv followed by the 1x1 conv that maps its kept channels back to the original
    ones (the FP-OMP / LRF "identity 1x1" structure).  The 1x1 starts as identity on the kept
    channels plus the least-squares coefficients of the removed ones, so compensation is exact
    and linear before the BN that follows."""

    def __init__(self, conv: nn.Conv2d, mix: nn.Conv2d):
        super().__init__()
        self.conv, self.mix = conv, mix

    def forward(self, x):
        return self.mix(self.conv(x))
