"""The measuring protocol on any target: warm-up, many repetitions, median and IQR, fixed
threads; several models are timed interleaved (A, B, A, B, ...) so load drifts hit them alike.

Interference comes in stretches longer than one measurement: on a shared 2-core AMD EPYC VM,
ONNX Runtime timed the same resnet20 against the same pruned copy at 4.35x in most rounds and
2.78x in some (the pruned model 1.9x slower, the unpruned one 1.2x, for the whole round; in a
three-model round all three were slow together), so interleaving inside one round cannot average
it out.  ``Protocol.sessions`` > 1 builds fresh runners (sessions) that many times, times each
round interleaved, and reports the fastest round's median: interference only ever slows a model
down, so the fastest of several robust medians is the best estimate of the model on a quiet
machine (the reason ``timeit`` reports a minimum); a single slow round, or three of five, then
do not move the figure.

:func:`compare` says whether a difference between two timings stands out of the noise: the
figures are trusted only when the inter-quartile ranges do not overlap.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import torch.nn as nn

from ..errors import PrunelabError
from ..metrics import Timing, quartiles, time_callables


@dataclass(frozen=True)
class Protocol:
    """How many untimed warm-up rounds and timed rounds (and at least how many seconds)."""

    warmup: int = 10
    repeats: int = 50
    min_seconds: float = 0.0
    sessions: int = 1  # fresh runtime sessions (per model); warmup/repeats/seconds are per session

    def __post_init__(self):
        if self.warmup < 0 or self.repeats < 3 or self.min_seconds < 0:
            raise PrunelabError("the protocol needs warmup >= 0 and repeats >= 3 (a median and "
                                "quartiles need several runs); e.g. --repeats 50")
        if not isinstance(self.sessions, int) or self.sessions < 1:
            raise PrunelabError(f"the protocol needs sessions >= 1 (got {self.sessions!r}); "
                                "e.g. --sessions 5")

    def to_json(self) -> dict:
        return asdict(self)


LUT_PROTOCOL = Protocol(warmup=5, repeats=20, min_seconds=0.0)


def time_runners(target, runners: Sequence, protocol: Protocol = Protocol()) -> list[Timing]:
    """Time ready runners (see :meth:`Target.runner`) interleaved; one Timing per runner."""
    if hasattr(target, "time_jobs"):  # a target on another Ray node times them there
        return target.time_jobs(list(runners), protocol)
    if getattr(target, "scripted", False) and getattr(target, "exact", True):
        samples = [[float(r.ms)] * protocol.repeats for r in runners]  # the formula, call for call
    elif getattr(target, "scripted", False):  # with noise / order bias: on its virtual clock
        samples = time_callables(list(runners), protocol.repeats, protocol.warmup,
                                 protocol.min_seconds, clock=target.clock)
    else:
        with target.scope():
            samples = time_callables(list(runners), protocol.repeats, protocol.warmup,
                                     protocol.min_seconds)
    out = []
    for s in samples:
        q1, med, q3 = quartiles(s)
        out.append(Timing(target.name, target.cfg.batch_size, target.cfg.threads, len(s),
                          protocol.warmup, med, q3 - q1, s))
    return out


def measure(target, models: Sequence[nn.Module], input_shape: Sequence[int],
            protocol: Protocol = Protocol()) -> list[Timing]:
    """Latency of one or more models on ``target`` (interleaved when several), over
    ``protocol.sessions`` rounds of fresh runners (see the module docstring)."""
    rounds = []
    for s in range(protocol.sessions):
        t = session_target(target, s)
        with t.scope():
            runners = [t.runner(m, t.inputs([input_shape])) for m in models]
        rounds.append(time_runners(t, runners, protocol))
        del runners  # free this round's sessions before the next are made
    return rounds[0] if len(rounds) == 1 else [pool_sessions(ts) for ts in zip(*rounds)]


def session_target(target, session: int):
    """``target.for_session(session)`` (see :meth:`Target.for_session`); a duck-typed target
    without one (a test's, a remote one) is its own every session."""
    fn = getattr(target, "for_session", None)
    return fn(session) if fn is not None else target


def pool_sessions(rounds: Sequence[Timing]) -> Timing:
    """One model's timings from several sessions as one: the fastest session's median (see the
    module docstring), the IQR of all samples pooled (it holds the spread between sessions too,
    so :func:`compare` calls a difference only when it stands out of both)."""
    pooled = [x for t in rounds for x in t.samples_ms]
    q1, _, q3 = quartiles(pooled)
    meds = [t.median_ms for t in rounds]
    first = rounds[0]
    return Timing(first.runtime, first.batch_size, first.threads, len(pooled), first.warmup,
                  min(meds), q3 - q1, pooled, meds)


def compare(a: Timing, b: Timing) -> dict:
    """How ``b`` relates to ``a``: speed-up, and whether the IQRs are apart (a trustworthy
    difference) or overlap (within the noise of this machine)."""
    a_lo, a_hi = _iqr_bounds(a)
    b_lo, b_hi = _iqr_bounds(b)
    apart = b_hi < a_lo or a_hi < b_lo
    return {"speedup": a.median_ms / b.median_ms, "apart": apart,
            "noise_a": a.iqr_ms / a.median_ms, "noise_b": b.iqr_ms / b.median_ms,
            "verdict": ("b faster" if b.median_ms < a.median_ms else "a faster") if apart
            else "within noise"}


def _iqr_bounds(t: Timing) -> tuple[float, float]:
    q1, _, q3 = quartiles(t.samples_ms)
    return q1, q3
