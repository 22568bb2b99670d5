"""PyTorch module -> ONNX bytes, the way ``prunelab export`` writes them (so the runtimes see
the same graph for a whole model and for the per-layer pieces of the lookup table)."""

from __future__ import annotations

import io
import warnings
from typing import Sequence

import torch
import torch.nn as nn

from ..errors import PrunelabError


def to_onnx(module: nn.Module, inputs: Sequence[torch.Tensor], opset: int = 17) -> bytes:
    """Export in eval mode (BN folded into the conv by the exporter), legacy TorchScript path."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise PrunelabError("ONNX-based targets need the onnx package; pip install "
                            "'prunelab[onnx]'") from None
    module.eval()
    buf = io.BytesIO()
    names = [f"in{i}" for i in range(len(inputs))]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, tuple(inputs), buf, input_names=names, output_names=["out"],
                          opset_version=opset, dynamo=False)
    return buf.getvalue()
