"""int8: static post-training quantization of the exported ONNX graph with ONNX Runtime's own tool.

The int8 graph is QDQ (QuantizeLinear/DequantizeLinear around every Conv/Gemm input, per-channel
int8 weights), calibrated on a small fixed set of images.  ONNX Runtime runs it with its int8
kernels; OpenVINO reads the same file and runs it in int8 too, so one artefact serves both
runtimes, and the file prunelab times is the file ``prunelab export --precision int8`` writes.

Types (``auto``): uint8 activations and int8 per-channel weights (U8S8), the pair VNNI's
``vpdpbusd`` multiplies natively; ONNX Runtime's docs name S8S8 QDQ as their default, but
measured here (ONNX Runtime 1.32, AVX-512 VNNI, resnet20, 1 thread) S8S8 ran 3.6x slower than
U8S8 and slower than fp32.  On a CPU without VNNI the U8S8 kernels can saturate, so there the
weights keep 7 bits (``reduce_range``), as ONNX Runtime advises.  :func:`choose_types` records
what it chose and why; ``s8s8``, ``u8s8`` and ``u8u8`` force a pair.

Which layers (``int8_layers``): ``all`` quantizes every layer.  ``fast`` keeps in fp32 each
group of layers at one spatial resolution whose int8 kernels measure slower, in the whole graph
on the target itself (:func:`fast_fp32_nodes`): at narrow widths int8 stops paying, first in
the widest-resolution stage (bench/results/int8_layers.md), and the choice depends on the
widths, so it is measured for every graph.  The nodes kept fp32 are recorded with the choice.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import numpy as np

from .errors import PrunelabError

METHODS = ("minmax", "entropy", "percentile")
TYPES = ("auto", "s8s8", "u8s8", "u8u8")
LAYERS = ("all", "fast")
FAST_MARGIN = 0.03       # a group stays fp32 only when that measures this much faster
MIN_IMAGES = 8           # fewer calibration images than this is refused up front


@dataclass(frozen=True)
class QuantChoice:
    """What one quantization used: activation/weight types, 7-bit weights, calibration."""

    activations: str        # int8 | uint8
    weights: str            # int8 | uint8
    reduce_range: bool
    method: str
    images: int
    data: str               # "user" (images given) or "synthetic" (seeded noise: timing only)
    reason: str
    layers: str = "all"     # all | fast (see the module's docstring)
    fp32_nodes: tuple = ()  # the graph's nodes kept in fp32 (``fast``)
    measured: tuple = ()    # ``fast``: each stage tried, its two whole-graph times, the choice

    def to_json(self) -> dict:
        d = asdict(self)
        d["fp32_nodes"], d["measured"] = list(self.fp32_nodes), list(self.measured)
        return d


def has_vnni(cpu: dict | None = None) -> bool:
    """AVX-512 VNNI or AVX-VNNI (int8 dot products without the saturating 16-bit step)."""
    from .hardware import cpu_info

    flags = set((cpu or cpu_info()).get("isa", []))
    return bool(flags & {"avx512_vnni", "avx_vnni", "avx512vnni", "avxvnni"})


def choose_types(types: str = "auto", cpu: dict | None = None) -> tuple[str, str, bool, str]:
    """(activation type, weight type, reduce_range, reason) for this CPU (or ``cpu``)."""
    if types not in TYPES:
        raise PrunelabError(f"unknown int8 types {types!r}; choose one of {', '.join(TYPES)}")
    if types == "s8s8":
        return "int8", "int8", False, "asked: s8s8"
    if types == "u8s8":
        return "uint8", "int8", not has_vnni(cpu), "asked: u8s8" + (
            " (7-bit weights: no VNNI here)" if not has_vnni(cpu) else "")
    if types == "u8u8":
        return "uint8", "uint8", False, "asked: u8u8"
    if has_vnni(cpu):
        return ("uint8", "int8", False, "auto: VNNI here, U8S8 QDQ (VNNI multiplies unsigned by "
                "signed bytes natively; S8S8 measured 3.6x slower on ONNX Runtime 1.32 with "
                "AVX-512 VNNI)")
    return ("uint8", "int8", True, "auto: no VNNI here, U8S8 QDQ with 7-bit weights "
            "(reduce_range: the non-VNNI U8S8 kernels can saturate, as ONNX Runtime advises)")


def check_layers(layers: str) -> None:
    if layers not in LAYERS:
        raise PrunelabError(f"unknown int8 layers {layers!r}; choose one of {', '.join(LAYERS)}")


def check_calibration(images: int, method: str = "minmax") -> None:
    """Refuse a calibration set or method that cannot work, before any work is done."""
    if method not in METHODS:
        raise PrunelabError(f"unknown calibration method {method!r}; choose one of "
                            f"{', '.join(METHODS)}")
    if not isinstance(images, int) or isinstance(images, bool) or images < MIN_IMAGES:
        raise PrunelabError(f"int8 calibration needs at least {MIN_IMAGES} images, got "
                            f"{images!r}; e.g. --calib-images 256")


def _reader(names: Sequence[str], batches: Iterable[Sequence[np.ndarray]]):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(batches)

        def get_next(self):
            b = next(self._it, None)
            return None if b is None else {n: np.ascontiguousarray(x, dtype=np.float32)
                                           for n, x in zip(names, b)}

    return Reader()


def quantize_onnx(fp32: bytes, batches: Sequence[Sequence[np.ndarray]], method: str = "minmax",
                  types: str = "auto", cpu: dict | None = None, data: str = "user",
                  fp32_nodes: Sequence[str] = (), layers: str = "all"
                  ) -> tuple[bytes, QuantChoice]:
    """The int8 QDQ graph of ``fp32`` (ONNX bytes), calibrated on ``batches`` (each a list of
    arrays, one per graph input, in the graph's batch size), the nodes named in ``fp32_nodes``
    left in fp32.  Deterministic for the same input."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    n = sum(int(b[0].shape[0]) for b in batches)
    check_calibration(n, method)
    act, wt, reduce, why = choose_types(types, cpu)
    qt = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    cm = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
          "percentile": CalibrationMethod.Percentile}[method]
    model = onnx.load_from_string(fp32)
    names = [i.name for i in model.graph.input]
    with tempfile.TemporaryDirectory(prefix="prunelab-int8-") as tmp:
        src, dst = os.path.join(tmp, "fp32.onnx"), os.path.join(tmp, "int8.onnx")
        with open(src, "wb") as f:
            f.write(fp32)
        quiet = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)  # its "consider pre-processing" notices
        try:
            quantize_static(src, dst, _reader(names, batches), quant_format=QuantFormat.QDQ,
                            activation_type=qt[act], weight_type=qt[wt], per_channel=True,
                            reduce_range=reduce, calibrate_method=cm,
                            nodes_to_exclude=list(fp32_nodes),
                            extra_options={"CalibTensorRangeSymmetric": False,
                                           "ActivationSymmetric": act == "int8"})
        except Exception as e:  # noqa: BLE001 - ONNX Runtime's own errors, made one line
            raise PrunelabError(f"int8 quantization failed ({type(e).__name__}: "
                                f"{str(e).splitlines()[0] if str(e) else '?'}); try "
                                "--precision fp32 or another --calibration") from None
        finally:
            logging.getLogger().setLevel(quiet)
        with open(dst, "rb") as f:
            out = f.read()
    return out, QuantChoice(act, wt, reduce, method, n, data, why, layers, tuple(fp32_nodes))


def resolution_groups(fp32: bytes) -> list[list[str]]:
    """The graph's named nodes grouped by the spatial size (H, W) of their first output, in
    graph order, then one group, the head, for the nodes whose output is not an image of more
    than one pixel: a network's stages, found in any architecture's graph by ONNX's own shape
    inference."""
    return [nodes for _, nodes in resolution_stages(fp32)]


def resolution_stages(fp32: bytes) -> list[tuple[tuple, list[str]]]:
    """:func:`resolution_groups` with each group's (H, W) (the head's: ``()``)."""
    import onnx

    m = onnx.shape_inference.infer_shapes(onnx.load_from_string(fp32))
    dims = {}
    for vi in [*m.graph.input, *m.graph.value_info, *m.graph.output]:
        dims[vi.name] = tuple(d.dim_value for d in vi.type.tensor_type.shape.dim)
    groups: dict[tuple, list[str]] = {}
    for n in m.graph.node:
        if not n.name or not n.output:
            continue
        hw = dims.get(n.output[0], ())[2:]
        groups.setdefault(hw if len(hw) == 2 and hw[0] * hw[1] > 1 else (), []).append(n.name)
    head = groups.pop((), [])
    return [*groups.items(), *([((), head)] if head else [])]


def structure_key(graph: bytes) -> str:
    """A digest of ``graph`` without its weights' values (its ops, attributes and tensor shapes):
    what decides the speed of its kernels, so a graph re-trained or re-calibrated keeps the
    same ``fast`` choice."""
    import hashlib

    import onnx

    m = onnx.load_from_string(graph)
    for t in m.graph.initializer:
        t.ClearField("raw_data")
        for f in ("float_data", "int32_data", "int64_data", "double_data"):
            t.ClearField(f)
    return hashlib.sha1(m.graph.SerializeToString()).hexdigest()


def fast_fp32_nodes(fp32: bytes, quantize, compare, margin: float = FAST_MARGIN
                    ) -> tuple[list[str], list[dict]]:
    """Which of ``fp32``'s resolution groups (:func:`resolution_groups`) stay fp32 so the whole
    graph runs fastest, greedily in graph order: each group is tried in fp32 on top of what is
    already kept and kept when the whole graph measures ``margin`` faster.  ``quantize(nodes)``
    builds the int8 graph with ``nodes`` in fp32; ``compare(a, b)`` times two graphs interleaved
    and returns their milliseconds.  Returns the nodes and one record per group tried."""
    keep: list[str] = []
    current = quantize(keep)
    trail = []
    for group in resolution_groups(fp32):
        trial = quantize(keep + group)
        if trial == current:  # nothing in the group was quantized
            continue
        ms_int8, ms_fp32 = compare(current, trial)
        kept = ms_fp32 < ms_int8 * (1 - margin)
        trail.append({"nodes": len(group), "first": group[0], "int8_ms": round(ms_int8, 4),
                      "fp32_ms": round(ms_fp32, 4), "fp32": kept})
        if kept:
            keep, current = keep + group, trial
    return keep, trail


def synthetic_batches(shapes: Sequence[Sequence[int]], images: int, seed: int = 0
                      ) -> list[list[np.ndarray]]:
    """Seeded standard-normal batches: enough to build and time an int8 graph (the kernels do
    not depend on the scales), never to judge its accuracy."""
    rng = np.random.default_rng(seed)
    b = int(shapes[0][0])
    return [[rng.standard_normal(tuple(s), dtype=np.float32) for s in shapes]
            for _ in range(max(1, -(-images // b)))]


def image_batches(images: np.ndarray, batch: int) -> list[list[np.ndarray]]:
    """A fixed calibration set (N, C, H, W) cut into graph-sized batches (the last one whole)."""
    k = len(images) // batch
    return [[images[i * batch:(i + 1) * batch]] for i in range(k)]


# -- the deploy artefact ----------------------------------------------------------------------

META_KEY = "prunelab"


def calibration_images(data, n: int, seed: int = 0) -> np.ndarray:
    """``n`` normalised training images (shuffled with ``seed``, no augmentation; a data set's
    or the user's train loader): the fixed calibration set of an int8 graph."""
    check_calibration(n)
    got, have = [], 0
    for x, _ in data.batches("train", min(n, 256), shuffle=True, seed=seed):
        got.append(x.float().numpy())
        have += len(x)
        if have >= n:
            break
    if have < n:
        raise PrunelabError(f"--calib-images {n} is more than the {have} training images; ask "
                            "for fewer")
    return np.ascontiguousarray(np.concatenate(got)[:n], dtype=np.float32)


def int8_graph(model, batch: int, shape, images: np.ndarray, target: str = "onnxruntime-cpu",
               calibration: str = "minmax", int8_types: str = "auto", threads: int = 1,
               int8_layers: str = "all") -> tuple[bytes, dict]:
    """The int8 graph of ``model`` (eval mode, not modified) exactly as ``target`` with
    ``precision="int8"`` times it, calibrated on ``images``; and the choice made, with the CPU."""
    import torch

    from .hardware import cpu_info
    from .targets import TargetConfig, make_target

    t = make_target(TargetConfig(target, batch_size=batch, threads=threads, precision="int8",
                                 calibration=calibration, calib_images=max(len(images), 1),
                                 int8_types=int8_types, int8_layers=int8_layers))
    t.calibrate_on(images)
    data = t.onnx_graph(model, [torch.zeros(batch, *shape)])
    return data, {**t.quant_choice.to_json(), "target": target, "cpu": cpu_info()}


def deploy_graph(model, meta: dict, input_shape, images: np.ndarray, cfg) -> tuple[bytes, dict]:
    """The int8 deploy artefact of ``model`` on ``cfg``'s target (a :class:`~prunelab.targets.
    TargetConfig` with precision int8): the graph that target times, calibrated on ``images``,
    with ``meta`` (model, dataset, classes), its precision, input shape and the quantization
    choice in the file's metadata.  Returns the bytes and the choice."""
    data, quant = int8_graph(model, cfg.batch_size, input_shape, images, cfg.target,
                             cfg.calibration, cfg.int8_types, cfg.threads, cfg.int8_layers)
    data = with_metadata(data, {**meta, "precision": "int8", "quantization": quant,
                                "input_shape": [cfg.batch_size, *input_shape]})
    return data, quant


def with_metadata(graph: bytes, meta: dict) -> bytes:
    """``graph`` with ``meta`` (JSON) in its ``metadata_props`` under ``prunelab``: what the
    file is (model, dataset, input shape, precision, the quantization choice and CPU)."""
    import json

    import onnx

    m = onnx.load_from_string(graph)
    for p in list(m.metadata_props):
        if p.key == META_KEY:
            m.metadata_props.remove(p)
    m.metadata_props.add(key=META_KEY, value=json.dumps(meta, sort_keys=True))
    return m.SerializeToString()


def read_graph(path) -> "object":
    """An ONNX file as a :class:`~prunelab.targets._onnx.Graph` (its bytes and prunelab's
    metadata); a file that is not ONNX is one line, never executed or unpickled."""
    import json
    from pathlib import Path

    import onnx

    from .targets._onnx import Graph

    p = Path(path)
    if not p.is_file():
        raise PrunelabError(f"ONNX file {p} not found; check the path")
    data = p.read_bytes()
    try:
        m = onnx.load_from_string(data)
    except Exception:  # noqa: BLE001 - any parse failure is the same answer
        raise PrunelabError(f"{p} is not an ONNX file; export one with `prunelab export`") \
            from None
    meta = {}
    for prop in m.metadata_props:
        if prop.key == META_KEY:
            try:
                meta = json.loads(prop.value)
            except json.JSONDecodeError:
                meta = {}
    if not meta.get("input_shape"):
        dims = m.graph.input[0].type.tensor_type.shape.dim
        meta["input_shape"] = [d.dim_value for d in dims]
    return Graph(data, meta, name=p.name)


def runtime_top1(target, graph: bytes, batches) -> float:
    """Top-1 of an ONNX graph run by the target's runtime itself (an int8 graph is judged as it
    runs, not through fake quantization in PyTorch); the graph's fixed batch is filled batch by
    batch, the last one padded."""
    infer = target.infer(graph)
    b = target.cfg.batch_size
    correct = total = 0
    for x, y in batches:
        x = x.numpy().astype(np.float32)
        for i in range(0, len(x), b):
            chunk = x[i:i + b]
            n = len(chunk)
            if n < b:
                chunk = np.concatenate([chunk, np.zeros((b - n, *chunk.shape[1:]), np.float32)])
            logits = infer(np.ascontiguousarray(chunk))[:n]
            correct += int((logits.argmax(1) == y[i:i + n].numpy()).sum())
            total += n
    if not total:
        raise PrunelabError("no images to evaluate on; check the dataset")
    return correct / total
