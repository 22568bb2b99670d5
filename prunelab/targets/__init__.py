"""Targets: the runtimes whose measured latency prunelab optimises.

A target is a registered :class:`~prunelab.targets.base.Target` class (``prunelab targets`` lists
them and whether each is usable here).  A :class:`TargetConfig` fixes everything that changes a
latency figure besides the model: the target, batch size, thread count and precision.

    >>> from prunelab.targets import TARGETS, TargetConfig
    >>> TARGETS.names()
    ['onnxruntime-cpu', 'onnxruntime-cuda', 'openvino-cpu', 'scripted', 'torch-cpu', 'torch-cuda']
    >>> TargetConfig("onnxruntime-cpu", batch_size=1, threads=2).to_json()
    {'target': 'onnxruntime-cpu', 'batch_size': 1, 'threads': 2, 'precision': 'fp32'}
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import PrunelabError
from ..registry import Registry, import_plugins
from .base import Target

TARGETS = Registry("target", hint="(see `prunelab targets`)")

import_plugins(__name__, __path__, "prunelab.targets")  # every module here registers itself

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class TargetConfig:
    """Where and how latency is measured; part of every cache key.

    ``threads`` is fixed (default 1, the most repeatable figure on a shared machine); set it to
    what you deploy with.  ``precision`` is ``fp32``, or ``int8`` on the targets that run an int8
    graph (onnxruntime-cpu, openvino-cpu: static QDQ quantization, see :mod:`prunelab.quant`),
    with its ``calibration`` method, ``calib_images``, ``int8_types`` (``auto`` chooses per
    CPU) and ``int8_layers`` (``all``, or ``fast``: each resolution stage kept fp32 where that
    measures faster, per graph); ``fp16`` is a reserved name.
    """

    target: str
    batch_size: int = 1
    threads: int = 1
    precision: str = "fp32"
    calibration: str = "minmax"
    calib_images: int = 256
    int8_types: str = "auto"
    int8_layers: str = "all"

    def __post_init__(self):
        entry = TARGETS.get(self.target)
        for k in ("batch_size", "threads"):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise PrunelabError(f"{k} must be a positive integer, got {v!r}; e.g. --{k.replace('_', '-')} 1")
        if self.precision not in PRECISIONS:
            raise PrunelabError(f"unknown precision {self.precision!r}; choose one of "
                                f"{', '.join(PRECISIONS)}")
        if self.precision not in entry.meta.get("precisions", ("fp32",)):
            can = [e.name for e in TARGETS.entries()
                   if self.precision in e.meta.get("precisions", ("fp32",))]
            raise PrunelabError(
                f"target {self.target} cannot run {self.precision}; "
                + (f"{self.precision} runs on {', '.join(can)}" if can else
                   f"no target runs {self.precision} yet") + ", or use --precision fp32")
        if self.precision == "int8":
            from ..quant import TYPES, check_calibration, check_layers

            check_calibration(self.calib_images, self.calibration)
            check_layers(self.int8_layers)
            if self.int8_types not in TYPES:
                raise PrunelabError(f"unknown int8 types {self.int8_types!r}; choose one of "
                                    f"{', '.join(TYPES)}")

    def to_json(self) -> dict:
        d = asdict(self)
        if self.precision != "int8":  # the quantization settings only exist for int8
            for k in ("calibration", "calib_images", "int8_types", "int8_layers"):
                d.pop(k)
        elif self.int8_layers == "all":  # the keys of caches made before the option stay valid
            d.pop("int8_layers")
        return d

    @classmethod
    def from_json(cls, d: dict) -> "TargetConfig":
        return cls(**{k: d[k] for k in ("target", "batch_size", "threads", "precision",
                                        "calibration", "calib_images", "int8_types", "int8_layers")
                    if k in d})


def make_target(cfg: TargetConfig | str, **kw) -> Target:
    """A ready target for ``cfg``; a one-line error (with the fix) when it is unusable here."""
    if isinstance(cfg, str):
        cfg = TargetConfig(cfg, **kw)
    cls = TARGETS.get(cfg.target).fn
    why = cls.unavailable()
    if why:
        raise PrunelabError(f"target {cfg.target} is not available here: {why}")
    return cls(cfg)


def target_table() -> list[dict]:
    """Every registered target with its metadata and whether it is usable on this machine."""
    rows = []
    for e in TARGETS.entries():
        why = e.fn.unavailable()
        rows.append({"name": e.name, "description": e.description, "available": not why,
                     "reason": why or "", **{k: list(v) if isinstance(v, tuple) else v
                                             for k, v in e.meta.items()}})
    return rows
