"""Blocked tensor layouts: what a sum of per-unit timings misses on ONNX Runtime.

On x86, ONNX Runtime's NCHWc transformer runs a conv in a channel-blocked layout (blocks of 8
channels with AVX2, 16 with AVX-512) when its input has fewer channels than one block (read as
plain NCHW) or a multiple of an alignment (the input then arrives blocked, padded to the block:
4 in ONNX Runtime 1.32); output channels are padded up to the block.  Any other conv runs in plain
NCHW.  The target finds the block and the alignment by asking the runtime
(:meth:`prunelab.targets.onnxruntime.OrtCPU.blocked_layout`).  Between a blocked producer and a
consumer that cannot read blocked data the runtime inserts a reorder, and between two blocked
convs none.

A unit timed alone (:mod:`.lut`) always starts and ends in plain NCHW, so a blocked unit pays its
reorders in the table; inside a network some of those are not paid.  :func:`elided` counts, per
pruned variant, the tensor elements whose reorder the network skips, which the calibration weighs
with one fitted per-element cost (:class:`prunelab.latency.predictor.Predictor`).  That is why an
evenly aligned pruned network can be faster than its per-unit sum says, and an unaligned one
slower than its MACs say.

    >>> from prunelab.latency.units import Unit
    >>> u = Unit("c", "conv", 16, 16, k=3, pad=1, h=8, w=8)
    >>> [blocked(u, c, 16, (16, 4)) for c in (12, 16, 20, 22)]
    [(True, False), (True, True), (True, True), (False, False)]
"""

from __future__ import annotations

from typing import Sequence

from .units import Unit


def blocked(u: Unit, cin: int, cout: int, layout: tuple[int, int]) -> tuple[bool, bool]:
    """(runs blocked, reads a blocked input) for unit ``u`` at (cin, cout) channels under the
    runtime's (block, alignment)."""
    block, align = layout
    if not block or u.kind == "linear":
        return False, False
    if u.kind == "dwconv":
        return (cout % block == 0,) * 2
    if cin < block:
        return True, False
    return (cin % align == 0,) * 2


def elided(units: Sequence[Unit], shapes: Sequence[tuple[int, int]], links: Sequence[Sequence],
           layout: tuple[int, int]) -> float:
    """Tensor elements (thousands) whose reorder a stand-alone unit pays and the network skips.

    * a blocked-input unit whose main producer runs blocked: its input reorder;
    * a blocked unit with a fused residual add whose residual producer runs blocked: the add
      stays blocked and fused, instead of reordering back and adding in NCHW;
    * a blocked unit all of whose consumers read blocked input: its output reorder.
    """
    return sum(elided_units(units, shapes, links, layout))


def elided_units(units: Sequence[Unit], shapes: Sequence[tuple[int, int]],
                 links: Sequence[Sequence], layout: tuple[int, int]) -> list[float]:
    """:func:`elided`, per unit (each skipped reorder counted at the unit that would pay it)."""
    out = [0.0] * len(units)
    if not layout[0] or not links:
        return out
    lay = [blocked(u, ci, co, layout) for u, (ci, co) in zip(units, shapes)]
    readers: list[list[bool]] = [[] for _ in units]
    for i, (u, (ci, co)) in enumerate(zip(units, shapes)):
        run, reads = lay[i]
        ho, wo = u.out_hw
        main = links[i][0] if links[i] else None
        if main is not None:
            readers[main].append(reads)
            if reads and lay[main][0]:
                out[i] += ci * u.h * u.w / 1e3
        if u.add and len(links[i]) > 1 and links[i][1] is not None:
            res = links[i][1]
            readers[res].append(run)
            if run and lay[res][0]:
                out[i] += co * ho * wo / 1e3
    for i, (u, (_, co)) in enumerate(zip(units, shapes)):
        if lay[i][0] and readers[i] and all(readers[i]):
            ho, wo = u.out_hw
            out[i] += co * ho * wo / 1e3
    return out
