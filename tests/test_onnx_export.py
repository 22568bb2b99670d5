"""The one ONNX exporter (prunelab.targets._onnx.to_onnx) where torch's exporter has a gap: an
adaptive average pool whose output size does not divide its input (VGG's 7x7 pool on a small
map) is exported as the same averages written as matrix products, equal to the module."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from prunelab.targets._onnx import AdaptiveAvgAsMatmul, to_onnx


@pytest.mark.parametrize("hw", [(4, 4), (1, 1), (9, 5), (14, 14)])
def test_adaptive_pool_exports_and_equals_the_module(hw):
    import onnxruntime as ort

    torch.manual_seed(0)
    x = torch.randn(2, 3, *hw)
    assert torch.allclose(AdaptiveAvgAsMatmul((7, 7))(x), nn.AdaptiveAvgPool2d((7, 7))(x),
                          atol=1e-6)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.AdaptiveAvgPool2d((7, None)),
                      nn.AdaptiveAvgPool2d((7, 7)), nn.Flatten(), nn.Linear(8 * 49, 10)).eval()
    y = ort.InferenceSession(to_onnx(m, [x])).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(y, m(x).detach().numpy(), atol=1e-5)
    assert isinstance(m[1], nn.AdaptiveAvgPool2d)  # the user's module is not changed
