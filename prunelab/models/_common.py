import torch.nn as nn


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
