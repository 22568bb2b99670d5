"""What every target provides: availability, a fingerprint and a way to run a module.

A target turns a PyTorch module (and example inputs) into a zero-argument *runner* that executes
one batch on the real runtime; the measuring protocol (:mod:`prunelab.latency.measure`) only ever
times runners, so all targets are measured the same way.
"""

from __future__ import annotations

import functools
import importlib.metadata
from contextlib import nullcontext
from typing import Callable, Sequence

import torch
import torch.nn as nn

from ..gate import held

Runner = Callable[[], object]


def _onnx_files_checked(fn):
    """An ONNX file (a :class:`~prunelab.targets._onnx.Graph`) runs only on a target that runs
    ONNX graphs: anywhere else, one line saying where it does."""
    @functools.wraps(fn)
    def runner(self, module, inputs):
        from ._onnx import Graph

        if isinstance(module, Graph) and not hasattr(self, "onnx_graph"):
            from ..errors import PrunelabError

            raise PrunelabError(f"{module.name} is an ONNX file: it runs on onnxruntime-cpu or "
                                f"openvino-cpu, not on {self.name}; pass --target onnxruntime-cpu")
        return fn(self, module, inputs)

    return runner


class Target:
    """Base class; subclasses set ``name``, ``runtime`` and ``device`` and implement ``runner``."""

    name = "?"
    runtime = "?"
    device = "cpu"
    packages: tuple[str, ...] = ()

    def __init__(self, cfg):
        self.cfg = cfg

    def __init_subclass__(cls, **kwargs):
        # making a runner (export, compilation, session creation) is heavy work: it holds a
        # step of the timing gate, so it never runs beside another process's timing
        super().__init_subclass__(**kwargs)
        if "runner" in cls.__dict__:
            cls.runner = held(_onnx_files_checked(cls.__dict__["runner"]))

    @classmethod
    def unavailable(cls) -> str | None:
        """``None`` when usable here, else why not and how to fix it (one line)."""
        return None

    def versions(self) -> dict[str, str]:
        """Versions of the libraries that execute the model (they change its speed)."""
        out = {"torch": torch.__version__}
        for p in self.packages:
            try:
                out[p] = importlib.metadata.version(p)
            except importlib.metadata.PackageNotFoundError:
                out[p] = "missing"
        return out

    def device_info(self) -> dict:
        from ..hardware import cpu_info

        return cpu_info()

    def fingerprint(self) -> dict:
        """Everything that makes a measured figure valid: machine, runtime, versions, config."""
        return {"target": self.name, "device": self.device_info(), "versions": self.versions(),
                **{k: v for k, v in self.cfg.to_json().items() if k != "target"}}

    def blocked_layout(self) -> tuple[int, int]:
        """(channel block, input channel alignment) of the runtime's blocked tensor layout, when
        it picks one per conv from the channel counts (see :mod:`prunelab.latency.layout`);
        (0, 0): no such choice."""
        return 0, 0

    def unit_formula(self):
        """``(unit_ms, call_ms)`` where this target's latency is a formula of the layer shapes
        (``unit_ms(unit, cin, cout)`` the figure of a lookup-table unit, ``call_ms()`` the
        per-call cost): its tables are computed, never timed, so a real architecture's table
        builds in seconds.  ``None`` (every runtime): the units are timed."""
        return None

    def for_session(self, session: int) -> "Target":
        """The target to make one fresh timing session's runners with (``session`` numbers the
        sessions of one measurement); a real runtime needs nothing per session: itself."""
        return self

    def scope(self):
        """A context held while timing (e.g. torch's global thread count)."""
        return nullcontext()

    def inputs(self, shapes: Sequence[Sequence[int]], seed: int = 0) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        return [torch.randn(self.cfg.batch_size, *s, generator=g) for s in shapes]

    def runner(self, module: nn.Module, inputs: Sequence[torch.Tensor]) -> Runner:
        raise NotImplementedError
