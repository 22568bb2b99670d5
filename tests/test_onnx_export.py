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


def test_the_timing_export_is_reused_only_while_the_module_is_unchanged():
    """``exported``: the same module object with the same tensors gives the same bytes without
    exporting again; an in-place weight change, a replaced buffer or another input shape
    exports anew, equal to a fresh :func:`to_onnx`."""
    from unittest import mock

    from prunelab.targets import _onnx

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    x = [torch.zeros(1, 1, 8, 8)]
    first = _onnx.exported(net, x)
    with mock.patch.object(_onnx, "to_onnx", side_effect=AssertionError("exported again")):
        assert _onnx.exported(net, x) is first
    with torch.no_grad():
        net[0].weight.mul_(2)                       # in place: its version counter moves
    second = _onnx.exported(net, x)
    assert second != first and second == to_onnx(net, x)
    net[1].running_mean = torch.ones(4)             # a replaced buffer
    third = _onnx.exported(net, x)
    assert third != second and third == to_onnx(net, x)
    y = [torch.zeros(1, 1, 9, 9)]                   # another input shape
    assert _onnx.exported(net, y) == to_onnx(net, y) != third
