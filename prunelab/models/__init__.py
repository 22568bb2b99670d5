"""The model zoo: registered architectures and the shipped pretrained weights.

Architectures are built by name with ``in_channels``, ``num_classes`` and a ``width`` multiplier::

    >>> from prunelab.models import build
    >>> net = build("resnet20", in_channels=1, num_classes=10)
    >>> sum(p.numel() for p in net.parameters())
    272186

Pretrained weights ship inside the package as model folders (``resnet20.fmnist`` ...); load them
with :func:`prunelab.io.load_model`.
"""

from __future__ import annotations

from functools import partial

import torch.nn as nn

from ..registry import Registry, load_entry_points
from .mobilenetv2 import MobileNetV2
from .resnet_cifar import CifarResNet
from .resnet_imagenet import ImageNetResNet
from .vgg import VGG

MODELS = Registry("model", hint="(or a model folder, or path/file.py:factory with --weights)")

for _d in (11, 13, 16, 19):
    MODELS.register(f"vgg{_d}", description=f"CIFAR-style VGG-{_d} with BN", family="vgg",
                    input_size=32)(partial(VGG, _d))
for _d in (20, 32, 56, 110):
    MODELS.register(f"resnet{_d}", description=f"CIFAR-style ResNet-{_d}", family="resnet",
                    input_size=32)(partial(CifarResNet, _d))
for _d in (18, 34, 50):
    MODELS.register(f"resnet{_d}", description=f"ImageNet-style ResNet-{_d}", family="resnet",
                    input_size=224)(partial(ImageNetResNet, _d))
MODELS.register("mobilenetv2", description="MobileNetV2 (small_input=True: CIFAR stem)",
                family="mobilenet", input_size=32)(MobileNetV2)


def build(name: str, in_channels: int = 3, num_classes: int = 10, width: float = 1.0,
          **kwargs) -> nn.Module:
    """Build a registered architecture with fresh weights."""
    return MODELS.get(name).fn(in_channels=in_channels, num_classes=num_classes, width=width,
                               **kwargs)


load_entry_points("prunelab.models")  # installed out-of-tree architectures register too
