"""Paired, order-fair speed-up of one model over another, with a 95% interval.

One *sample* of the speed-up is one fresh runtime *session* (both models' runners made afresh, in
an order that alternates from sample to sample) timed in ABBA blocks (A B B A, then B A A B, ...):
each block gives ``ln((a1 + a2) / (b1 + b2))`` and the session's sample is the median over its
blocks.  A drift inside a block, a call's position in it and which model was made first in the
session all hit both models alike, so they cancel in the pair instead of reaching the figure
(timing each model's own fastest session, as :func:`~prunelab.latency.measure.measure` does, put
the two figures of a pair in different sessions, and a later-made model read faster than the same
architecture made first: an order bias).

Calls inside one session are not independent (a stretch of interference slows a whole session),
so the interval is over samples, never over calls: the Hodges-Lehmann estimate and the exact
Wilcoxon signed-rank interval of the per-sample log-ratios (Walsh averages).  Two modes share the
same per-session code (:func:`time_session`):

- in-process (``processes=0``): ``protocol.sessions`` samples in this process; cheap, for steps
  of a bisection;
- separate processes (``processes=K``, at least 6 for a decision): K clean child interpreters,
  each one sample (the mean of its ``protocol.sessions`` sessions); nothing the calling process
  did before (torch training, thread pools, its heap) reaches the figure.  Its interval also
  carries the drift between sittings (:data:`DRIFT`), so a re-measure later falls inside it.

    >>> import torch.nn as nn
    >>> from prunelab.targets import TargetConfig, make_target
    >>> t = make_target(TargetConfig("scripted"))
    >>> a, b = nn.Conv2d(8, 32, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1)
    >>> e = paired_speedup(a, b, t, (8, 16, 16), Protocol(warmup=1, repeats=8, sessions=6))
    >>> round(e.estimate, 2), e.low <= e.estimate <= e.high
    (1.42, True)
"""

from __future__ import annotations

import json
import math
import os
import pickle
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch.nn as nn

from ..errors import PrunelabError
from .measure import Protocol, session_target

# a decision: 6 processes x 2 sessions of 60 ABBA-paired calls per model (>= 0.3 s each)
DECISION_PROTOCOL = Protocol(warmup=20, repeats=60, min_seconds=0.3, sessions=2)
DECISION_PROCESSES = 6
# a bisection step: 6 in-process sessions
STEP_PROTOCOL = Protocol(warmup=10, repeats=40, min_seconds=0.1, sessions=6)
# Between sittings minutes apart the same pair's ratio moves by more than the spread of one
# decision's processes (what runs on the other cores changes the cache and memory bandwidth a
# model gets, and a larger model loses more of it).  A process-mode interval carries that term
# too, so that a later re-measure in new processes falls inside it: DRIFT is its standard
# deviation in log-ratio.  The moves are heavy-tailed: over the 47 decided cells of
# bench/landing.py and bench/architectures.py --ort (each re-measured by `latency compare` in new
# processes) most moved under 1%, 4 by 3-6%; 1.5% held 43/47 (91%), 2.2% 45/47 (96%), and the 5
# landing cells run again with it all re-measured inside (`python bench/landing.py drift`).
# A formula target has none.
DRIFT = 0.022


@dataclass(frozen=True)
class SpeedupEstimate:
    """``base`` time over ``candidate`` time (> 1: the candidate is faster), with an interval.

    ``estimate``: Hodges-Lehmann estimate of the per-sample ratio (exp of the median of the
    Walsh averages of the log-ratios); ``low``/``high``: the exact signed-rank interval at
    ``level`` (0.95 asked; with few samples the nearest achievable level at or above it, or the
    widest, the sample range, when none reaches it, e.g. 0.9375 for 5 samples); ``samples``: the
    per-sample ratios (one per process in process mode, per session otherwise); ``processes``: 0
    for in-process; ``base_ms``/``candidate_ms``: medians of the per-sample medians (for display;
    the ratio is paired, these are not); ``cpu``: the CPU the figures come from."""

    estimate: float
    low: float
    high: float
    level: float
    samples: list[float]
    processes: int
    sessions: int
    base_ms: float
    candidate_ms: float
    cpu: str
    protocol: dict = field(default_factory=dict)
    drift: float = 0.0                      # the between-sittings term in low/high (see DRIFT)
    sampled: tuple[float, float] | None = None  # the signed-rank interval alone, without it

    def contains(self, ratio: float) -> bool:
        return self.low <= ratio <= self.high

    @property
    def verdict(self) -> str:
        """'candidate faster' / 'base faster' when the interval excludes 1, else 'within noise'."""
        return {"b faster": "candidate faster", "a faster": "base faster"}.get(
            interval_verdict(self.low, self.high), "within noise")

    def to_json(self) -> dict:
        return {**asdict(self), "verdict": self.verdict}

    def pooled(self, other: "SpeedupEstimate", level: float = 0.95) -> "SpeedupEstimate":
        """This estimate and ``other`` (more samples of the same pair, same mode) as one: the
        samples together, the interval recomputed (with this one's drift term)."""
        logs = [math.log(r) for r in self.samples + other.samples]
        return _estimate(logs, level, self.drift, self.processes, self.sessions,
                         statistics.median([self.base_ms, other.base_ms]),
                         statistics.median([self.candidate_ms, other.candidate_ms]), self.cpu,
                         self.protocol)


def interval_verdict(low: float, high: float) -> str:
    """The noise verdict of a speed-up interval (base time over candidate time) in
    :func:`prunelab.latency.measure.compare`'s words: 'b faster' (the candidate) when it lies
    above 1, 'a faster' below 1, else 'within noise'.

    >>> interval_verdict(1.2, 1.3), interval_verdict(0.9, 1.1)
    ('b faster', 'within noise')
    """
    if low > 1:
        return "b faster"
    if high < 1:
        return "a faster"
    return "within noise"


def time_blocks(fns: Sequence[Callable[[], object]], repeats: int, warmup: int,
                min_seconds: float = 0.0, clock: Callable[[], float] = time.perf_counter
                ) -> tuple[list[float], list[list[float]]]:
    """Two runners timed in alternating ABBA / BAAB blocks after ``warmup`` untimed pairs.

    Returns the per-block log-ratios ``ln((a1 + a2) / (b1 + b2))`` and each runner's call times
    (ms).  At least ``repeats`` calls per runner (rounded up to whole blocks), more until
    ``min_seconds`` has passed.  ``clock`` is seconds (a scripted target passes its own)."""
    a, b = fns
    for _ in range(warmup):
        a()
        b()
    logs, times = [], [[], []]
    start = clock()
    k = 0
    while 2 * k < repeats or clock() - start < min_seconds:
        seq = (0, 1, 1, 0) if k % 2 == 0 else (1, 0, 0, 1)
        got = [0.0, 0.0]
        for i in seq:
            t = clock()
            fns[i]()
            ms = (clock() - t) * 1e3
            got[i] += ms
            times[i].append(ms)
        logs.append(math.log(got[0] / got[1]))
        k += 1
    return logs, times


def time_session(target, base: nn.Module, candidate: nn.Module, input_shape: Sequence[int],
                 protocol: Protocol, base_first: bool, session: int = 0) -> dict:
    """One sample: fresh runners for both models (made in the given order), timed in ABBA blocks
    under the timing gate.  ``{"log_ratio", "base_ms", "candidate_ms"}``; the one per-session
    code of both modes of :func:`paired_speedup`."""
    from ..gate import timing

    t = session_target(target, session)
    with t.scope():
        inputs = t.inputs([input_shape])
        order = [base, candidate] if base_first else [candidate, base]
        made = [t.runner(m, inputs) for m in order]
        fns = made if base_first else made[::-1]
        clock = getattr(t, "clock", None)
        if clock is not None:  # a formula target: its virtual clock, nothing to keep quiet
            logs, times = time_blocks(fns, protocol.repeats, protocol.warmup,
                                      protocol.min_seconds, clock)
        else:
            with timing():
                logs, times = time_blocks(fns, protocol.repeats, protocol.warmup,
                                          protocol.min_seconds)
    return {"log_ratio": statistics.median(logs), "base_ms": statistics.median(times[0]),
            "candidate_ms": statistics.median(times[1])}


def signed_rank_interval(x: Sequence[float], level: float = 0.95) -> tuple[float, float, float,
                                                                           float]:
    """(Hodges-Lehmann estimate, low, high, achieved level) of the centre of ``x``: the exact
    Wilcoxon signed-rank interval from the sorted Walsh averages.

    >>> signed_rank_interval([1, 2, 3, 4, 5, 6])
    (3.5, 1.0, 6.0, 0.96875)
    """
    n = len(x)
    if n < 2:
        raise PrunelabError("an interval needs at least 2 samples; use processes >= 6 or "
                            "protocol sessions >= 6")
    walsh = sorted((x[i] + x[j]) / 2 for i in range(n) for j in range(i, n))
    # exact null distribution of the signed-rank statistic: counts of subsets of 1..n per sum
    counts = [1] + [0] * (n * (n + 1) // 2)
    for r in range(1, n + 1):
        for s in range(len(counts) - 1, r - 1, -1):
            counts[s] += counts[s - r]
    total = 2 ** n
    cum, d = 0, 0
    for s, c in enumerate(counts):  # d: the most Walsh averages cut from each end
        if (cum + c) / total > (1 - level) / 2:
            break
        cum += c
        d = s + 1
    d = max(d, 1)
    achieved = 1 - 2 * sum(counts[:d]) / total  # 1 - 2 P(T <= d - 1)
    return statistics.median(walsh), walsh[d - 1], walsh[-d], achieved


def paired_speedup(base: nn.Module, candidate: nn.Module, target, input_shape: Sequence[int],
                   protocol: Protocol = STEP_PROTOCOL, processes: int = 0, seed: int = 0,
                   level: float = 0.95) -> SpeedupEstimate:
    """The speed-up of ``candidate`` over ``base`` on ``target`` with a ``level`` interval.

    Contract: ``processes=0`` takes ``protocol.sessions`` in-process samples (for bisection
    steps; nothing isolates them from this process's state); ``processes=K`` (>= 2; use >=
    :data:`DECISION_PROCESSES` for a final decision, with :data:`DECISION_PROTOCOL`) runs K
    fresh child interpreters one after another, each loading both models and timing
    ``protocol.sessions`` sessions (their order alternating too), and takes one sample per
    process (the mean of its sessions' log-ratios).  Both modes time a session
    with :func:`time_session` (ABBA blocks, fresh runners, the order of making them alternating
    between samples from a ``seed``-drawn start).  The models are not changed; in process mode an
    ONNX-based target's graphs go to a temporary folder as ONNX files (the child imports no user
    code), a torch target's modules pickled (``torch.save``: their classes must import in a new
    interpreter).
    The estimate is exp of the Hodges-Lehmann estimate of the log-ratios, the interval the exact
    signed-rank interval (see :func:`signed_rank_interval`); ``estimate > 1`` means the candidate
    is faster.  The calling process holds the timing gate while its children time (they run with
    the gate off), so other prunelab processes stay quiet and nothing waits on itself.
    """

    if hasattr(target, "time_jobs"):
        raise PrunelabError("paired_speedup times on this machine; a remote (Ray) target's "
                            "models must be paired on its node: call it there")
    if not isinstance(processes, int) or processes < 0 or processes == 1:
        raise PrunelabError(f"processes must be 0 (in-process) or >= 2, got {processes!r}; "
                            f"e.g. processes={DECISION_PROCESSES} for a final decision")
    first = random.Random(seed).random() < 0.5
    if processes == 0:
        if protocol.sessions < 2:
            raise PrunelabError("in-process pairing needs protocol sessions >= 2 (one sample "
                                "each); e.g. Protocol(sessions=6)")
        rows = [time_session(target, base, candidate, input_shape, protocol,
                             base_first=(k % 2 == 0) == first, session=k)
                for k in range(protocol.sessions)]
        logs = [r["log_ratio"] for r in rows]
    else:
        rows = _in_processes(base, candidate, target, input_shape, protocol, processes, first,
                             seed)
        logs = [statistics.fmean(r["log_ratio"] for r in p) for p in rows]
        rows = [r for p in rows for r in p]
    dev = target.device_info()
    return _estimate(logs, level,
                     DRIFT if processes and not getattr(target, "exact", False) else 0.0,
                     processes, protocol.sessions,
                     statistics.median(r["base_ms"] for r in rows),
                     statistics.median(r["candidate_ms"] for r in rows),
                     dev.get("cpu") or dev.get("gpu") or json.dumps(dev), protocol.to_json())


def _estimate(logs: list[float], level: float, drift: float, processes: int, sessions: int,
              base_ms: float, candidate_ms: float, cpu: str, protocol: dict
              ) -> SpeedupEstimate:
    """The estimate and interval of per-sample log-ratios; with ``drift`` (a decision's term
    for a re-measure in a later sitting) each side is widened in quadrature at the interval's
    level."""
    est, lo, hi, achieved = signed_rank_interval(logs, level)
    sampled = (math.exp(lo), math.exp(hi))
    if drift:
        lo, hi = widened(est, lo, hi, achieved, drift)
    return SpeedupEstimate(math.exp(est), math.exp(lo), math.exp(hi), achieved,
                           [math.exp(x) for x in logs], processes, sessions, base_ms,
                           candidate_ms, cpu, protocol, drift, sampled)


def widened(est: float, lo: float, hi: float, level: float, drift: float
            ) -> tuple[float, float]:
    """A signed-rank interval of log-ratios (``lo`` <= ``est`` <= ``hi``) with the
    between-sittings term ``drift`` (a standard deviation in log-ratio) added to each side in
    quadrature at the interval's ``level``.

    >>> [round(x, 4) for x in widened(0.0, -0.01, 0.01, 0.95, 0.0)]
    [-0.01, 0.01]
    """
    z = statistics.NormalDist().inv_cdf(0.5 + level / 2) * drift
    return est - math.hypot(est - lo, z), est + math.hypot(hi - est, z)


def _in_processes(base, candidate, target, input_shape, protocol, processes, first, seed
                  ) -> list[list[dict]]:
    import torch

    from ..gate import ENV, timing

    from ..targets._onnx import Graph, OnnxBased

    out = []
    with tempfile.TemporaryDirectory(prefix="prunelab-paired-") as tmp:
        if isinstance(target, OnnxBased) and hasattr(target, "cfg"):
            # the graphs the target runs travel as ONNX files (int8: already quantized, on the
            # target's calibration): the child needs no user code and unpickles nothing, so a
            # model defined in a notebook or behind a library that does not import here is timed
            # all the same
            job = Path(tmp) / "job.json"
            inputs = target.inputs([input_shape])
            for name, m in (("base", base), ("candidate", candidate)):
                data = m.data if isinstance(m, Graph) else target.onnx_graph(m, inputs)
                (Path(tmp) / f"{name}.onnx").write_bytes(data)
            job.write_text(json.dumps({"target": target.cfg.to_json(), "shape": list(input_shape),
                                       "protocol": protocol.to_json()}))
        else:
            job = Path(tmp) / "job.pt"
            try:
                torch.save({"target": target, "base": base, "candidate": candidate,
                            "shape": list(input_shape), "protocol": protocol.to_json()}, job)
            except (AttributeError, TypeError, pickle.PicklingError) as e:
                raise _unpicklable(target, "the models cannot be sent to a timing process",
                                   str(e)[:120]) from None
        env = {**os.environ, ENV: "off"}
        # the package this process runs, also in the child (a worktree's copy over an install)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
        with timing():
            for k in range(processes):
                base_first = (k % 2 == 0) == first
                cmd = [sys.executable, "-m", "prunelab.latency.paired", str(job),
                       "1" if base_first else "0", str(seed * 1_000_003 + k)]
                r = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if r.returncode != 0:
                    tail = (r.stderr.strip().splitlines() or ["?"])[-1]
                    if job.suffix == ".pt" and ("Error" in tail and ("import" in tail.lower()
                                                                      or "attribute" in tail)):
                        raise _unpicklable(target, "a timing process could not load the "
                                           "model", tail)
                    raise PrunelabError(f"a timing process failed ({tail}); run it alone: "
                                        f"{' '.join(cmd)}")
                out.append(json.loads(r.stdout.strip().splitlines()[-1]))
    return out


def _unpicklable(target, what: str, why: str) -> PrunelabError:
    """The one line for a torch target's modules that a timing process cannot get."""
    return PrunelabError(f"{what} ({why}): on {target.name} the modules travel pickled, so their "
                         "classes must import in a new interpreter (define the model in a "
                         "module, not inside a function or a notebook), or decide in this "
                         "process (decision_processes=0)")


def _child(job: str, base_first: str, stream: str) -> None:
    """One timing process: load the job, time its sessions, print one JSON list."""
    if job.endswith(".json"):  # an ONNX-based target: two graph files and the settings
        from ..targets import TargetConfig, make_target
        from ..targets._onnx import Graph

        j = json.loads(Path(job).read_text())
        j["target"] = make_target(TargetConfig.from_json(j["target"]))
        for name in ("base", "candidate"):
            j[name] = Graph((Path(job).parent / f"{name}.onnx").read_bytes(), name=name)
    else:
        import torch

        # the job is this package's own file, written by the parent into its private (0700)
        # temporary folder a moment ago: a torch target's modules must travel whole (their code
        # is not ours to rebuild)
        j = torch.load(job, weights_only=False)
    p = Protocol(**j["protocol"])
    rows = [time_session(j["target"], j["base"], j["candidate"], j["shape"], p,
                         (base_first == "1") == (s % 2 == 0), session=int(stream) * 64 + s)
            for s in range(p.sessions)]
    print(json.dumps(rows))


if __name__ == "__main__":
    _child(*sys.argv[1:4])
