"""CIFAR-style VGG with BN (the variant used throughout the pruning literature).

Five max-pool stages and one linear classifier.  A global average pool before the classifier lets
the network take inputs other than 32x32.
"""

from __future__ import annotations

import torch.nn as nn

from ._common import ch, init_weights

CFGS = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
         512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


class VGG(nn.Module):
    def __init__(self, depth: int, in_channels: int = 3, num_classes: int = 10, width: float = 1.0):
        super().__init__()
        layers, cin = [], in_channels
        for v in CFGS[depth]:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                c = ch(v, width)
                layers += [nn.Conv2d(cin, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                           nn.ReLU()]
                cin = c
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)
        init_weights(self)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))
