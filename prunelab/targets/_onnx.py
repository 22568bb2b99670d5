"""PyTorch module -> ONNX bytes, the way ``prunelab export`` writes them (so the runtimes see
the same graph for a whole model and for the per-layer pieces of the lookup table)."""

from __future__ import annotations

import dataclasses
import io
import warnings
import weakref
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
    names = input_names(len(inputs))
    axes = {n: {0: "batch"} for n in [*names, "logits"]} if dynamic_batch else None

    def export(m: nn.Module) -> bytes:
        buf = io.BytesIO()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(m, tuple(inputs), buf, input_names=names, output_names=["logits"],
                              dynamic_axes=axes, opset_version=opset, dynamo=False)
        return buf.getvalue()

    try:
        return export(module)
    except Exception as e:  # noqa: BLE001 - only the one exporter gap below is handled
        if "adaptive_avg_pool2d" not in str(e) or dynamic_batch:
            raise
    # the exporter has no adaptive average pool whose output size does not divide its input
    # (VGG's 7x7 pool on a small map): on a copy, those pools become the same averages written
    # as two matrix products, which it exports
    import copy

    twin = copy.deepcopy(module)
    for name, m in list(twin.named_modules()):
        if isinstance(m, nn.AdaptiveAvgPool2d):
            parent, _, attr = name.rpartition(".")
            setattr(twin.get_submodule(parent) if parent else twin, attr,
                    AdaptiveAvgAsMatmul(m.output_size))
    return export(twin)


def _avg_matrix(n: int, out: int, like: torch.Tensor) -> torch.Tensor:
    """``(out, n)``: row ``i`` averages inputs ``floor(i n / out)`` to ``ceil((i + 1) n / out)``,
    the bins of PyTorch's adaptive average pooling."""
    a = torch.zeros(out, n, dtype=like.dtype)
    for i in range(out):
        lo, hi = (i * n) // out, -((-(i + 1) * n) // out)
        a[i, lo:hi] = 1.0 / (hi - lo)
    return a


class AdaptiveAvgAsMatmul(nn.Module):
    """``nn.AdaptiveAvgPool2d(size)`` for an input of fixed spatial size, as ``A_h x A_w^T``
    (equal up to rounding; what :func:`to_onnx` exports where the exporter has no pool)."""

    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = int(x.shape[-2]), int(x.shape[-1])
        size = self.output_size if isinstance(self.output_size, (tuple, list)) else \
            (self.output_size, self.output_size)
        oh, ow = (h if size[0] is None else size[0]), (w if size[1] is None else size[1])
        return _avg_matrix(h, oh, x) @ x @ _avg_matrix(w, ow, x).t()


class Graph:
    """An ONNX file as it is, timed and run by an ONNX-based target unchanged (the deploy
    artefact itself, e.g. an int8 graph from ``prunelab export --precision int8``); ``meta`` is
    what prunelab wrote into the file's metadata (model, dataset, input shape, precision)."""

    def __init__(self, data: bytes, meta: dict | None = None, name: str = "graph"):
        self.data, self.meta, self.name = data, dict(meta or {}), name

    def eval(self):  # a model-like no-op, so code that sets eval mode passes it through
        return self


TIMING_CALIB_IMAGES = 32  # seeded-noise images that calibrate a graph built only to be timed
FAST_REPEATS = 40         # interleaved rounds of each comparison behind int8_layers="fast"
_FAST: dict = {}          # graph structure and target -> (nodes kept fp32, what was measured)


_EXPORTED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _tensors_key(module: nn.Module, inputs: Sequence[torch.Tensor]) -> tuple:
    """What a module's export depends on that can change under the same object: every parameter
    and buffer's name, shape, dtype, storage and in-place version counter, and the inputs'
    shapes and dtypes."""
    import itertools

    return (tuple((n, tuple(t.shape), t.dtype, t.data_ptr(), t._version)
                  for n, t in itertools.chain(module.named_parameters(),
                                              module.named_buffers())),
            tuple((tuple(x.shape), x.dtype) for x in inputs))


def exported(module: nn.Module, inputs: Sequence[torch.Tensor]) -> bytes:
    """:func:`to_onnx` of ``module`` for timing, the bytes reused while the same module object
    has the same tensors (:func:`_tensors_key`): a paired step times both models in 6 fresh
    sessions, and exporting resnet56 again for each took 0.34 s of a session.  The sessions
    stay fresh; only the export is shared.  ``prunelab export`` always exports anew."""
    key = _tensors_key(module, inputs)
    hit = _EXPORTED.get(module)
    if hit is not None and hit[0] == key:
        return hit[1]
    data = to_onnx(module, inputs)
    _EXPORTED[module] = (key, data)
    return data


class OnnxBased:
    """For targets that run the exported ONNX graph: the graph a module runs as, in the target's
    precision (int8: quantized by :func:`prunelab.quant.quantize_onnx`).  Calibration images set
    with :meth:`calibrate_on` are used for graphs of the whole model; every other graph (a layer
    of the latency table, or no images given) is calibrated on seeded noise, enough to build and
    time it, never to judge its accuracy."""

    calibration = None      # (N, C, H, W) float32 images, or None
    quant_choice = None     # the last :class:`prunelab.quant.QuantChoice`

    def calibrate_on(self, images) -> None:
        import numpy as np

        from ..quant import check_calibration

        arr = np.ascontiguousarray(np.asarray(images, dtype=np.float32))
        check_calibration(len(arr), self.cfg.calibration)
        self.calibration = arr
        self._int8 = {}

    def onnx_graph(self, module, inputs: Sequence[torch.Tensor]) -> bytes:
        if isinstance(module, Graph):
            return module.data
        fp32 = exported(module, inputs)
        if self.cfg.precision != "int8":
            return fp32
        import hashlib

        from ..quant import image_batches, quantize_onnx, synthetic_batches

        key = hashlib.sha1(fp32).hexdigest()
        cache = self.__dict__.setdefault("_int8", {})
        if key not in cache:
            c = self.cfg
            keep, measured, built = self.fast_fp32_nodes(fp32, inputs) \
                if c.int8_layers == "fast" else ([], [], {})
            cal = self.calibration
            whole = (cal is not None and len(inputs) == 1
                     and tuple(cal.shape[1:]) == tuple(inputs[0].shape[1:]))
            if not whole and c.calibration == "minmax" and tuple(keep) in built:
                data8, choice = built[tuple(keep)]  # the decision built this very graph
            else:
                if whole:
                    batches, data = image_batches(cal, inputs[0].shape[0]), "user"
                else:
                    batches = synthetic_batches([tuple(x.shape) for x in inputs],
                                                TIMING_CALIB_IMAGES)
                    data = "synthetic"
                data8, choice = quantize_onnx(fp32, batches, c.calibration, c.int8_types,
                                              data=data, fp32_nodes=keep, layers=c.int8_layers)
            cache[key] = data8, dataclasses.replace(choice, measured=tuple(measured))
        data, self.quant_choice = cache[key]
        return data

    def fast_fp32_nodes(self, fp32: bytes, inputs: Sequence[torch.Tensor]
                        ) -> tuple[list[str], list[dict], dict]:
        """The nodes of ``fp32`` that ``int8_layers="fast"`` keeps in fp32 on this target, what
        was measured (:func:`prunelab.quant.fast_fp32_nodes`), and the graphs this call built
        (kept fp32 nodes -> :func:`~prunelab.quant.quantize_onnx`'s result; empty when the
        structure was decided before).  Decided once per graph structure in this process (the
        weights and the calibration do not change which kernels run), with graphs calibrated
        (minmax) on the seeded noise of a timing graph, two at a time, interleaved, in this
        runtime."""
        import statistics

        from ..metrics import time_callables
        from ..quant import fast_fp32_nodes, quantize_onnx, structure_key, synthetic_batches

        c = self.cfg
        key = (structure_key(fp32), c.target, c.batch_size, c.threads, c.int8_types)
        built: dict[tuple, tuple] = {}
        if key not in _FAST:
            batches = synthetic_batches([tuple(x.shape) for x in inputs], TIMING_CALIB_IMAGES)

            def quantize(nodes):
                built[tuple(nodes)] = quantize_onnx(fp32, batches, "minmax", c.int8_types,
                                                    data="synthetic", fp32_nodes=nodes,
                                                    layers=c.int8_layers)
                return built[tuple(nodes)][0]

            def compare(a: bytes, b: bytes) -> tuple[float, float]:
                runs = [self.runner(Graph(a), inputs), self.runner(Graph(b), inputs)]
                ms = time_callables(runs, repeats=FAST_REPEATS, warmup=10, min_seconds=0.2)
                return statistics.median(ms[0]), statistics.median(ms[1])

            _FAST[key] = fast_fp32_nodes(fp32, quantize, compare)
        keep, trail = _FAST[key]
        return list(keep), [dict(t) for t in trail], built
