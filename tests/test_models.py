import pytest
import torch

from prunelab.models import MODELS, build


@pytest.mark.parametrize("name", MODELS.names())
def test_every_registered_model_builds_and_runs(name):
    size = MODELS.get(name).meta["input_size"]
    size = 64 if size == 224 else size  # ImageNet-style nets run on smaller inputs too
    m = build(name, in_channels=1, num_classes=7, width=0.25).eval()
    with torch.no_grad():
        y = m(torch.randn(2, 1, size, size))
    assert y.shape == (2, 7) and torch.isfinite(y).all()
    assert any(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules())


def test_width_multiplier_scales_parameters():
    small = sum(p.numel() for p in build("vgg16", width=0.5).parameters())
    full = sum(p.numel() for p in build("vgg16", width=1.0).parameters())
    assert 0.2 < small / full < 0.3
