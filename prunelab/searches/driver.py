"""One driver for every allocation search.

A *candidate* is a set of per-group widths (``keep``).  Evaluating it prunes a copy of the model
with the run's criterion (scored once on the unpruned model), re-estimates BN statistics on a few
training batches and takes top-1 on (part of) the validation split, never the test split; its
latency is *predicted* from the target's lookup table, its MACs and parameters are exact.

The run folder makes a search restartable and auditable:

* ``config.json``: the settings (a resumed run must use the same ones);
* ``evaluations.jsonl``: one line per evaluation, flushed and synced before the search goes on;
* ``predictor.json``: the latency predictor the search used (so a resume predicts identically);
* ``state.json``: status, phase, counts and the seconds spent over all sessions.

Resuming replays the method from its seed: every candidate already in the log is answered from it
without running again, so an interrupted search continues where it stopped with no evaluation
lost or repeated, and the same seed gives the same search.  When the method ends, the Pareto front
is *measured* on the target interleaved with the unpruned model, the point meeting the budget with
the best validation top-1 is chosen, and ``pareto.json``, ``pareto.png``, ``model/`` and
``result.json`` are written.
"""

from __future__ import annotations

import copy
import json
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from ..errors import PrunelabError
from ..targets import TargetConfig
from .budget import Budget

LOG = "evaluations.jsonl"


@dataclass(frozen=True)
class SearchConfig:
    method: str
    criterion: str | None = None          # None: the method's default
    target: TargetConfig = field(default_factory=lambda: TargetConfig("torch-cpu"))
    budget: str = "macs=0.5"
    seed: int = 0
    recal_batches: int = 6                # BN re-estimation per candidate (batches of 128)
    val_images: int = 1000                # validation images per candidate (0 = whole split)
    measure_front: int = 12               # front points measured on the target at the end
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        # one spelling per budget (macs=0.50 is macs=0.5), so a resume compares like with like
        object.__setattr__(self, "budget", str(Budget.parse(self.budget)))
        from .options import check_options

        check_options(self.method, self.options)  # every option known and in range, up front
        if self.recal_batches < 0 or self.val_images < 0 or self.measure_front < 1:
            raise PrunelabError("--recal-batches and --val-images must be >= 0 and "
                                "--measure-front >= 1")

    def to_json(self) -> dict:
        d = asdict(self)
        d["target"] = self.target.to_json()
        return d

    @classmethod
    def from_json(cls, d: dict) -> "SearchConfig":
        return cls(**{**d, "target": TargetConfig.from_json(d["target"])})


def widths_key(widths: dict[str, int], keep: dict[str, int]) -> str:
    """Canonical text of a candidate: every group's width in model order."""
    return ",".join(str(int(keep.get(g, w))) for g, w in widths.items())


class EvalLog:
    """Append-only JSONL of evaluations; a torn last line (a killed process) is dropped."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: list[dict] = []
        if path.exists():
            good = 0
            with open(path, "rb") as f:
                for line in f:
                    try:
                        self.rows.append(json.loads(line))
                    except json.JSONDecodeError:
                        break
                    good += len(line)
            if good != path.stat().st_size:
                with open(path, "r+b") as f:
                    f.truncate(good)
        self._f = open(path, "a", encoding="utf-8")

    def append(self, row: dict) -> None:
        self._f.write(json.dumps(row, sort_keys=True) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        self.rows.append(row)

    def close(self) -> None:
        self._f.close()


class Search:
    """What a search method works with: the space, the budget and a cached ``evaluate``.

    Methods call :meth:`evaluate` (or :meth:`cost` for MACs/params/predicted latency alone) and
    draw randomness only from :attr:`rng` / :attr:`seed`, so a replay retraces the same path.
    """

    def __init__(self, model: nn.Module, spec, data, cfg: SearchConfig, out: Path, crit,
                 predictor, target, seconds_before: float = 0.0, eval_fn=None,
                 ignored: tuple[str, ...] = ()):
        from ..pruning import prunable_groups, score_groups

        self.model, self.spec, self.data, self.cfg, self.out = model, spec, data, cfg, out
        self.eval_fn = eval_fn  # a user's metric (higher is better) instead of val top-1
        self.ignored = tuple(ignored)  # layer names never pruned
        self.crit, self.predictor, self.target = crit, predictor, target
        self.budget = Budget.parse(cfg.budget)
        self.options = dict(cfg.options)
        self.seed = cfg.seed
        self.rng = random.Random(cfg.seed)
        _, self.groups = prunable_groups(model, spec.input_shape, spec.num_classes, self.ignored)
        self.widths = {g.name: g.width for g in self.groups}
        self.scores, self.score_seconds = score_groups(model, crit, self.groups, data)
        self.contexts: dict[str, tuple[nn.Module, dict]] = {"": (model, self.scores)}
        self._context_widths: dict[str, dict[str, int]] = {}
        self.log = EvalLog(out / LOG)
        self.cache = {(r.get("context", ""), r["key"]): r for r in self.log.rows}
        self.replayed = 0
        self.phase = "search"
        self.t0 = time.perf_counter()
        self.seconds_before = seconds_before
        self._costs: dict[tuple, dict] = {}
        self._bar = self._task = None
        self.info: dict = {}  # what a method wants kept in result.json ("method_info")
        self.staircase_points: list[dict] = []  # evaluated by methods.staircase_finish
        self.on_eval: Callable[[], None] | None = None  # after each new logged evaluation
        self.layout = _fast_layout(model, spec.input_shape)
        self.base = self.evaluate({}, phase="base")

    # -- options ---------------------------------------------------------------------------
    def option(self, name: str, default, kind: Callable = None):
        """A method option (``--option name=value``), checked against the method's declared
        schema (:mod:`prunelab.searches.options`)."""
        from . import SEARCHES

        if name not in self.options:
            return default
        schema = SEARCHES.get(self.cfg.method).meta["options"]
        return schema[name].coerce(self.cfg.method, name, self.options[name])

    # -- candidates --------------------------------------------------------------------------
    def seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.t0

    def normalize(self, keep: dict[str, int], context: str = "") -> dict[str, int]:
        """Every group's width (groups ``keep`` leaves out stay as wide as in the context's
        model), clipped to [1, that width]."""
        widths = self.context_widths(context)
        for g in keep:
            if g not in widths:
                raise PrunelabError(f"unknown group {g!r}")
        return {g: int(max(1, min(w, keep.get(g, w)))) for g, w in widths.items()}

    def context_widths(self, context: str = "") -> dict[str, int]:
        if context == "":
            return self.widths
        return self._context_widths[context]

    def add_context(self, name: str, model: nn.Module) -> None:
        """Evaluate later candidates on another base model (e.g. after a fine-tuning step)."""
        from ..pruning import prunable_groups, score_groups

        _, groups = prunable_groups(model, self.spec.input_shape, self.spec.num_classes,
                                    self.ignored)
        scores, _ = score_groups(model, self.crit, groups, self.data)
        self.contexts[name] = (model, scores)
        self._context_widths[name] = {g.name: g.width for g in groups}

    def build(self, keep: dict[str, int], context: str = "", train_batches: int = 0
              ) -> tuple[nn.Module, object]:
        """The pruned, BN-recalibrated (and optionally briefly trained) model of a candidate."""
        from ..pruning import prune
        from ..train import recalibrate_bn

        base, scores = self.contexts[context]
        res = prune(base, self.crit, keep=keep, input_shape=self.spec.input_shape,
                    num_classes=self.spec.num_classes, scores=scores, count=False,
                    ignored=self.ignored)
        net = res.model
        if train_batches:
            short_train(net, self.data, train_batches, self.seed)
        if self.cfg.recal_batches:
            net.to(memory_format=self.layout)
            recalibrate_bn(net, self.batches("train", 128, shuffle=True, seed=self.seed),
                           self.cfg.recal_batches)
            net.to(memory_format=torch.contiguous_format)
        return net, res

    def batches(self, split: str, batch_size: int, **kw):
        """Data batches in the layout candidates run fastest in (channels-last when the model
        takes it: about 1.5-2x faster fp32 convolutions on CPU, same precision)."""
        for x, y in self.data.batches(split, batch_size, **kw):
            yield x.contiguous(memory_format=self.layout), y

    def top1(self, net: nn.Module, images: int | None) -> float:
        """Validation top-1 on ``images`` validation images (or the user's ``eval_fn``)."""
        from ..train import evaluate

        if self.eval_fn is not None:
            return checked_score(self.eval_fn, net)
        net.to(memory_format=self.layout)
        try:
            return evaluate(net, self.batches("val", 500, limit=images or None))
        finally:
            net.to(memory_format=torch.contiguous_format)

    def cost(self, keep: dict[str, int], context: str = "") -> dict:
        """MACs, parameters and predicted latency of a candidate, without evaluating accuracy."""
        keep = self.normalize(keep, context)
        key = (context, widths_key(self.context_widths(context), keep))
        if key not in self._costs:
            if key in self.cache:
                r = self.cache[key]
                self._costs[key] = {k: r[k] for k in ("macs", "params", "latency_ms")}
            else:
                from ..metrics import macs_params
                from ..pruning import prune

                base, scores = self.contexts[context]
                res = prune(base, self.crit, keep=keep, input_shape=self.spec.input_shape,
                            num_classes=self.spec.num_classes, scores=scores, count=False,
                    ignored=self.ignored)
                macs, params = macs_params(res.model, self.spec.input_shape)
                self._costs[key] = {"macs": macs, "params": params,
                                    "latency_ms": self.predict(keep, context)}
        return self._costs[key]

    def predict(self, keep: dict[str, int], context: str = "") -> float:
        """Predicted latency; groups ``keep`` leaves out have the context model's width."""
        return self.predictor.predict(self.normalize(keep, context))

    def evaluate(self, keep: dict[str, int], phase: str | None = None, context: str = "",
                 train_batches: int = 0) -> dict:
        """Validation top-1, predicted latency, MACs and params of one candidate (cached)."""
        keep = self.normalize(keep, context)
        ctx = context + (f"|train{train_batches}" if train_batches else "")
        key = (ctx, widths_key(self.context_widths(context), keep))
        hit = self.cache.get(key)
        if hit is not None:
            self.replayed += 1
            self._advance(hit)
            return hit
        t0 = time.perf_counter()
        net, res = self.build(keep, context, train_batches)
        top1 = self.top1(net, self.cfg.val_images)
        from ..metrics import macs_params

        macs, params = macs_params(net, self.spec.input_shape)
        row = {"n": len(self.log.rows), "phase": phase or self.phase, "context": ctx,
               "key": key[1], "keep": keep, "top1": top1,
               "latency_ms": self.predict(keep, context), "macs": macs, "params": params,
               "seconds": time.perf_counter() - t0, "elapsed_s": self.seconds()}
        if hasattr(self, "base"):
            row["feasible"] = self.feasible(row)
        self.log.append(row)
        self.cache[key] = row
        self._advance(row)
        if self.on_eval is not None:
            self.on_eval()
        _fault_injection(len(self.log.rows))
        return row

    def feasible(self, point: dict, slack: float = 0.0) -> bool:
        return self.budget.met(point, self.base, slack)

    def limit(self) -> float:
        return self.budget.limit(self.base)

    # -- progress ----------------------------------------------------------------------------
    def plan(self, total: int) -> None:
        """Tell the progress bar how many evaluations the method expects (an estimate)."""
        if self._bar is not None:
            self._bar.update(self._task, total=total)

    def _advance(self, row: dict) -> None:
        if self._bar is None:
            return
        best = max((r["top1"] for r in self.cache.values()
                    if r.get("feasible") and not r["context"]), default=None)
        info = f"{self.phase}" + (f" best feasible {best:.4f}" if best is not None else "")
        self._bar.update(self._task, advance=1, info=info)


def checked_score(eval_fn, net: nn.Module) -> float:
    """A user's ``eval_fn(model) -> float``, checked to be a finite number."""
    import math

    v = eval_fn(net)
    try:
        v = float(v)
    except (TypeError, ValueError):
        raise PrunelabError(f"eval_fn must return a number (higher is better), got "
                            f"{type(v).__name__}") from None
    if not math.isfinite(v):
        raise PrunelabError(f"eval_fn returned {v}; it must return a finite number")
    net.eval()
    return v


def short_train(net: nn.Module, data, batches: int, seed: int, lr: float = 0.01) -> None:
    """A few SGD steps on training batches (ABCPruner's short fitness training)."""
    import torch.nn.functional as F

    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    from ..kernels import onednn_safe

    net.train()
    with onednn_safe():
        for i, (x, y) in enumerate(data.batches("train", 128, shuffle=True, augment=True,
                                                seed=seed + 1)):
            if i >= batches:
                break
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), y).backward()
            opt.step()
    net.eval()


def _fast_layout(model: nn.Module, input_shape) -> torch.memory_format:
    """channels-last when the model runs on it (a user forward() that calls ``.view`` on a
    feature map does not), else the usual contiguous layout."""
    net = copy.deepcopy(model).eval().to(memory_format=torch.channels_last)
    try:
        with torch.no_grad():
            net(torch.zeros(2, *input_shape).contiguous(memory_format=torch.channels_last))
        return torch.channels_last
    except RuntimeError:
        return torch.contiguous_format


def _fault_injection(n: int) -> None:
    """PRUNELAB_KILL_AFTER_EVALS=N kills the process (SIGKILL) after the N-th logged
    evaluation: how the tests show that a killed search resumes without loss or repetition."""
    stop = os.environ.get("PRUNELAB_KILL_AFTER_EVALS")
    if stop and n >= int(stop):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


# ------------------------------------------------------------------------------------------------
def nondominated(points: list[dict], lat: str = "latency_ms") -> list[dict]:
    """Points no other point beats on both latency (lower) and top-1 (higher), by latency."""
    pts = sorted(points, key=lambda p: (p[lat], -p["top1"]))
    front, best = [], -1.0
    for p in pts:
        if p["top1"] > best:
            front.append(p)
            best = p["top1"]
    return front
