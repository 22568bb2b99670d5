"""The figures a person compares models by: test top-1, MACs, parameters and CPU latency, the
latency runs of several models interleaved (what ``prunelab eval`` and ``prunelab prune`` print)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .data import Splits
from .errors import PrunelabError
from .io import ModelSpec
from .metrics import Timing, macs_params
from .train import evaluate as _top1


def measure(model: nn.Module, spec: ModelSpec, data: Splits | None = None, batch_size: int = 1,
            threads: int | None = None, repeats: int = 50, warmup: int = 10,
            split: str = "test") -> dict:
    """Test top-1, MACs, parameters and CPU latency of a model (median of timed runs).

    Returns the ``--json`` contract keys: ``model``, ``top1``, ``macs``, ``params``,
    ``latency_ms`` and ``latency`` (runtime, batch size, threads, repeats).
    """
    return compare([model], [spec], data, batch_size, threads, repeats, warmup, split)[0]


def compare(models: Sequence[nn.Module], specs: Sequence[ModelSpec], data: Splits | None,
            batch_size: int = 1, threads: int | None = None, repeats: int = 50,
            warmup: int = 10, split: str = "test") -> list[dict]:
    """Like :func:`measure` for several models, with their latency runs interleaved."""
    check_timing(batch_size, threads, repeats, warmup)
    times = torch_cpu_latency(models, specs[0].input_shape, batch_size, threads, repeats, warmup)
    rows = []
    for m, s, t in zip(models, specs, times):
        macs, params = macs_params(m, s.input_shape)
        row = {"model": s.name, "macs": macs, "params": params}
        if data is not None:
            row["top1"] = _top1(m, data.batches(split, 500))
            row["split"] = split
        row.update(latency_ms=t.median_ms, latency=t.to_json())
        rows.append(row)
    return rows


def check_timing(batch_size: int, threads: int | None, repeats: int, warmup: int = 0) -> None:
    """The latency options, before any work."""
    def integer(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if not integer(batch_size) or batch_size < 1:
        raise PrunelabError(f"--batch-size must be an integer of at least 1, got {batch_size}")
    if threads is not None and (not integer(threads) or threads < 1):
        raise PrunelabError(f"--threads must be an integer of at least 1, got {threads}")
    if not integer(repeats) or repeats < 1:
        raise PrunelabError(f"--repeats must be an integer of at least 1 (50 gives a steady "
                            f"median), got {repeats}")
    if not integer(warmup) or warmup < 0:
        raise PrunelabError(f"warm-up runs must be >= 0, got {warmup}")


def torch_cpu_latency(models: Sequence[nn.Module], input_shape: Sequence[int], batch_size: int = 1,
                      threads: int | None = None, repeats: int = 50, warmup: int = 10
                      ) -> list[Timing]:
    """Eager PyTorch CPU latency of one or more models, interleaved, in fp32 eval mode: the
    ``torch-cpu`` target under :func:`prunelab.latency.measure.measure` (one timing path; no loop
    of its own).  ``threads`` defaults to torch's current thread count; fewer than 3 ``repeats``
    (a median and quartiles need 3) are taken as 3."""
    from .latency.measure import Protocol, measure
    from .targets import TargetConfig, make_target

    target = make_target(TargetConfig("torch-cpu", batch_size=batch_size,
                                      threads=threads or torch.get_num_threads()))
    return measure(target, models, input_shape, Protocol(warmup=warmup, repeats=max(repeats, 3)))
