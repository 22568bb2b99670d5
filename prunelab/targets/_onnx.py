"""PyTorch module -> ONNX bytes, the way ``prunelab export`` writes them (so the runtimes see
the same graph for a whole model and for the per-layer pieces of the lookup table)."""

from __future__ import annotations

import io
import warnings
from typing import Sequence

import torch
import torch.nn as nn

from ..errors import PrunelabError


def input_names(n: int) -> list[str]:
    """The exported graph's input names: ``input``, or ``input0``, ``input1``, ... for several."""
    return ["input"] if n == 1 else [f"input{i}" for i in range(n)]


def to_onnx(module: nn.Module, inputs: Sequence[torch.Tensor], opset: int = 17,
            dynamic_batch: bool = False) -> bytes:
    """Export in eval mode (BN folded into the conv by the exporter), legacy TorchScript path.

    The one exporter: the targets time this graph and ``prunelab export`` writes it (inputs
    ``input`` (or ``input0``, ``input1``, ...), output ``logits``, the batch size of ``inputs``;
    ``dynamic_batch`` makes the batch dimension symbolic, which the measured graph is not)."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise PrunelabError("ONNX export needs the onnx package; pip install "
                            "'prunelab[onnx]'") from None
    module.eval()
    buf = io.BytesIO()
    names = input_names(len(inputs))
    axes = {n: {0: "batch"} for n in [*names, "logits"]} if dynamic_batch else None
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, tuple(inputs), buf, input_names=names, output_names=["logits"],
                          dynamic_axes=axes, opset_version=opset, dynamo=False)
    return buf.getvalue()
