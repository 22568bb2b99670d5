"""MACs, parameters and latency of a model.

Latency here is eager PyTorch on the local CPU (the ``torch-cpu`` target): warm-up runs, then ``repeats`` timed runs, median
and inter-quartile range, with the thread count and batch size stated.  Comparisons of two models
interleave their runs (A, B, A, B, ...) so that drifts in machine load hit both alike.

    >>> import torch
    >>> from prunelab.models import build
    >>> from prunelab.metrics import macs_params
    >>> macs_params(build("resnet20", in_channels=1), (1, 32, 32))
    (41112202, 272186)
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn as nn

from .gate import timing


def macs_params(model: nn.Module, input_shape: Sequence[int]) -> tuple[int, int]:
    """Multiply-accumulates for one image and the parameter count (torch-pruning's counter)."""
    import torch_pruning as tp

    from .errors import PrunelabError

    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            macs, params = tp.utils.count_ops_and_params(model, torch.zeros(1, *input_shape))
    except Exception as e:  # user forward() code
        first = (str(e).strip().splitlines() or [""])[0]
        raise PrunelabError(f"the model failed on a {(1, *input_shape)} input ({type(e).__name__}: "
                            f"{first}); forward() must take one image batch") from None
    finally:
        model.train(was)
    return int(macs), int(params)


@dataclass
class Timing:
    """Result of a latency measurement (milliseconds per batch)."""

    runtime: str
    batch_size: int
    threads: int
    repeats: int
    warmup: int
    median_ms: float
    iqr_ms: float
    samples_ms: list[float]
    # one median per fresh runtime session when the protocol opened several (``median_ms`` is
    # then the fastest of them); empty for one session
    sessions_ms: list[float] = field(default_factory=list)

    def to_json(self, samples: bool = False) -> dict:
        d = asdict(self)
        if not samples:
            d.pop("samples_ms")
        return d


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    if len(xs) < 2:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], statistics.median(xs), q[2]


def time_callables(fns: Sequence[Callable[[], object]], repeats: int = 50, warmup: int = 10,
                   min_seconds: float = 0.0, clock: Callable[[], float] | None = None
                   ) -> list[list[float]]:
    """Time several callables interleaved; returns per-callable samples in milliseconds.

    Runs ``warmup`` untimed rounds, then at least ``repeats`` rounds (more until ``min_seconds``
    has passed), each round calling every function once in turn; the other prunelab processes on
    the machine pause their batches meanwhile (:mod:`prunelab.gate`).  ``clock`` (seconds) replaces
    the wall clock, and the gate, for a scripted target's virtual one.
    """
    quiet = timing() if clock is None else contextlib.nullcontext()
    clock = clock or time.perf_counter
    with quiet:
        for _ in range(warmup):
            for f in fns:
                f()
        samples: list[list[float]] = [[] for _ in fns]
        start = clock()
        r = 0
        while r < repeats or clock() - start < min_seconds:
            for i, f in enumerate(fns):
                t = clock()
                f()
                samples[i].append((clock() - t) * 1e3)
            r += 1
    return samples
