"""MobileNetV2 (Sandler et al. 2018) with inverted residuals and depthwise convs.

``stem_stride`` defaults to 1 with ``small_input=True`` (CIFAR-style 32x32 inputs) and to 2 for
ImageNet-sized inputs.
"""

from __future__ import annotations

import torch.nn as nn

from ._common import Add, ch, init_weights

# t (expansion), c (channels), n (repeats), s (first stride)
SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
            (6, 160, 3, 2), (6, 320, 1, 1)]


def conv_bn(cin, cout, k, stride, groups=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6())


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, t: int):
        super().__init__()
        hidden = cin * t
        layers = [conv_bn(cin, hidden, 1, 1)] if t != 1 else []
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout
        self.add = Add() if self.use_res else None

    def forward(self, x):
        return self.add(x, self.conv(x)) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: float = 1.0,
                 small_input: bool = True):
        super().__init__()
        cin = ch(32, width, 8)
        layers = [conv_bn(in_channels, cin, 3, 1 if small_input else 2)]
        for i, (t, c, n, s) in enumerate(SETTINGS):
            cout = ch(c, width, 8)
            for j in range(n):
                stride = s if j == 0 else 1
                if small_input and i == 1:  # keep resolution for 32x32 inputs (CIFAR variant)
                    stride = 1
                layers.append(InvertedResidual(cin, cout, stride, t))
                cin = cout
        last = ch(1280, max(1.0, width), 8)
        layers.append(conv_bn(cin, last, 1, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)
        init_weights(self)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))
