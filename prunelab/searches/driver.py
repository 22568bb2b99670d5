"""One driver for every allocation search.

A *candidate* is a set of per-group widths (``keep``).  Evaluating it prunes a copy of the model
with the run's criterion (scored once on the unpruned model), re-estimates BN statistics on a few
training batches and takes top-1 on (part of) the validation split, never the test split; its
latency is *predicted* from the target's lookup table, its MACs and parameters are exact.

The run folder makes a search restartable and auditable:

* ``config.json``: the settings (a resumed run must use the same ones);
* ``evaluations.jsonl``: one line per evaluation, flushed and synced before the search goes on;
* ``predictor.json``: the latency predictor the search used (so a resume predicts identically);
* ``anchors.json``: the predictor's error near the budget as a method measured it
  (:mod:`.anchor`; nsga2), so a resume judges the budget identically without timing again;
* ``state.json``: status, phase, counts and the seconds spent over all sessions.

Resuming replays the method from its seed: every candidate already in the log is answered from it
without running again, so an interrupted search continues where it stopped with no evaluation
lost or repeated, and the same seed gives the same search.  When the method ends, the Pareto front
is *measured* on the target interleaved with the unpruned model, the point meeting the budget with
the best validation top-1 is chosen, and ``pareto.json``, ``pareto.png``, ``model/`` and
``result.json`` are written.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch.nn as nn

from ..errors import PrunelabError
from ..targets import TargetConfig
from .budget import Budget



def _d(key: str):
    from ..config import default

    return default("search", key)


@dataclass(frozen=True, kw_only=True)
class SearchConfig:
    """A search's settings, keyword only; the defaults are [search]'s (:mod:`prunelab.config`).

    >>> SearchConfig(method="uniform").recal_batches
    6
    """

    method: str
    criterion: str | None = None          # None: the method's default
    target: TargetConfig = field(default_factory=lambda: TargetConfig("torch-cpu"))
    budget: str = _d("budget")
    seed: int = 0
    recal_batches: int = _d("recal_batches")  # BN re-estimation per candidate (batches of 128)
    val_images: int = _d("val_images")        # validation images per candidate (0 = whole split)
    measure_front: int = _d("measure_front")  # front points measured on the target at the end
    decision_processes: int = _d("decision_processes")  # the landing's final speed-up decision
    fidelity: str = _d("fidelity")            # the choice's score: bn | kd:N (.scoring)
    score_precision: str = _d("score_precision")  # candidates' forward passes: auto|fp32|bf16
    options: dict = field(default_factory=dict)

    @classmethod
    def from_sections(cls, search, target: TargetConfig, seed: int = 0) -> "SearchConfig":
        """From a validated [search] section (:class:`prunelab.config.SearchSection`)."""
        return cls(method=search.method, criterion=search.criterion, target=target,
                   budget=search.budget, seed=seed, recal_batches=search.recal_batches,
                   val_images=search.val_images, measure_front=search.measure_front,
                   decision_processes=search.decision_processes,
                   fidelity=search.fidelity, score_precision=search.score_precision,
                   options=dict(search.options))

    def __post_init__(self):
        # one spelling per budget (macs=0.50 is macs=0.5), so a resume compares like with like
        object.__setattr__(self, "budget", str(Budget.parse(self.budget)))
        from .options import check_options

        check_options(self.method, self.options)  # every option known and in range, up front
        from .landing import check_processes

        check_processes(self.decision_processes)
        from .scoring import fidelity_rungs

        fidelity_rungs(self.fidelity)
        if self.score_precision not in ("auto", "fp32", "bf16"):
            raise PrunelabError(f"score_precision={self.score_precision!r} must be auto, fp32 "
                                "or bf16")
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


class SearchCallbacks:
    """What a search tells whoever runs it (progress, state files); the default does nothing.

    ``on_evaluation(ctx, row, new)`` after every evaluation (``new``: run now, not replayed from
    the log); ``on_plan(ctx, total)`` when a method estimates how many evaluations it will make.
    """

    def on_evaluation(self, ctx: "Search", row: dict, new: bool) -> None:
        pass

    def on_plan(self, ctx: "Search", total: int) -> None:
        pass


class Search:
    """What a search method works with: the search space (groups and their widths), the budget,
    the latency predictor, the method's options and randomness, and an :class:`Evaluator`.

    Methods call :meth:`evaluate` (or :meth:`cost` for MACs/params/predicted latency alone) and
    draw randomness only from :attr:`rng` / :attr:`seed`, so a replay retraces the same path.  A
    method may name the points the final, measured choice is made from (:attr:`finalists`) and
    what it wants kept in ``result.json`` (:attr:`info`); everything else about a run (the log,
    the state file, the progress bar) is the :class:`Evaluator`'s and the callbacks' business.
    """

    def __init__(self, model: nn.Module, spec, data, cfg: SearchConfig, out: Path, crit,
                 predictor, target, seconds_before: float = 0.0, eval_fn=None,
                 ignored: tuple[str, ...] = (), callbacks: SearchCallbacks | None = None,
                 workers: int = 0, ray_address: str | None = None):
        from ..pruning import prunable_groups
        from .evaluator import Evaluator

        self.model, self.spec, self.data, self.cfg, self.out = model, spec, data, cfg, out
        self.ignored = tuple(ignored)  # layer names never pruned
        self.crit, self.predictor, self.target = crit, predictor, target
        self.budget = Budget.parse(cfg.budget)
        self.options = dict(cfg.options)
        self.seed = cfg.seed
        self.rng = random.Random(cfg.seed)
        _, self.groups = prunable_groups(model, spec.input_shape, spec.num_classes, self.ignored)
        self.widths = {g.name: g.width for g in self.groups}
        self.callbacks = callbacks or SearchCallbacks()
        self.phase = "search"
        self.info: dict = {}  # what a method wants kept in result.json ("method_info")
        self.finalists: list[dict] | None = None  # the method's say on the final choice's pool
        self.staircase_points: list[dict] = []  # evaluated by methods.staircase_finish
        self._val_count: int | None = None      # validation images a candidate is scored on
        self.evaluator = Evaluator(self, model, data, crit, out, eval_fn, seconds_before,
                                   workers, ray_address)
        self.gain = 1.0  # the unpruned model's measured speed-up over the budget's reference
        # measured / predicted latency near the budget (a method's anchor, .anchor): 1 = the
        # predictor as it is
        self.latency_ratio = 1.0
        self.reference_model = model  # what a relative latency budget is relative to
        self.base = self.evaluate({}, phase="base")
        if getattr(getattr(target, "cfg", None), "precision", "fp32") == "int8":
            self._int8_reference()

    def _int8_reference(self) -> None:
        """With int8, a relative latency budget stays relative to the unpruned *fp32* model on
        the same runtime: its graph (run as it is) is the reference, and the unpruned int8
        model's measured gain over it (paired sessions, measured once and kept in the run
        folder so a resumed search replays the same feasibility) scales the predictor's units."""
        import dataclasses
        import json

        import torch

        from ..io import atomic_write_text
        from ..latency.paired import STEP_PROTOCOL, paired_speedup
        from ..targets._onnx import Graph, to_onnx

        if hasattr(self.target, "time_jobs"):
            raise PrunelabError("an int8 search times on this machine; drop --workers / "
                                "--ray-address or search in fp32")
        x = torch.zeros(self.cfg.target.batch_size, *self.spec.input_shape)
        self.reference_model = Graph(to_onnx(self.model.eval(), [x]), name="unpruned fp32")
        f = self.out / "int8_reference.json"
        if f.exists():
            self.gain = json.loads(f.read_text())["gain"]
            return
        e = paired_speedup(self.reference_model, self.model, self.target, self.spec.input_shape,
                           dataclasses.replace(STEP_PROTOCOL, sessions=6), seed=self.seed)
        self.gain = e.estimate
        atomic_write_text(f, json.dumps({"gain": e.estimate, "estimate": e.to_json()}, indent=1))
        self._judge_again()  # rows judged before the gain was known

    @property
    def reference(self) -> dict:
        """The point a budget is judged against: the unpruned model, whose latency is the fp32
        model's in the predictor's units when the search runs int8 (see :attr:`gain`)."""
        return {**self.base, "latency_ms": self.base["latency_ms"] * self.gain}

    # -- options ---------------------------------------------------------------------------
    def option(self, name: str, default, kind: Callable = None):
        """A method option (``--option name=value``), checked against the method's declared
        schema (:mod:`prunelab.searches.options`)."""
        from .registered import SEARCHES

        if name not in self.options:
            return default
        schema = SEARCHES.get(self.cfg.method).meta["options"]
        return schema[name].coerce(self.cfg.method, name, self.options[name])

    # -- the space ---------------------------------------------------------------------------
    def normalize(self, keep: dict[str, int], context: str = "") -> dict[str, int]:
        """Every group's width (groups ``keep`` leaves out stay as wide as in the context's
        model), clipped to [1, that width]."""
        widths = self.context_widths(context)
        for g in keep:
            if g not in widths:
                raise PrunelabError(f"unknown group {g!r}")
        return {g: int(max(1, min(w, keep.get(g, w)))) for g, w in widths.items()}

    def context_widths(self, context: str = "") -> dict[str, int]:
        return self.widths if context == "" else self.evaluator.context_widths[context]

    def predict(self, keep: dict[str, int], context: str = "") -> float:
        """Predicted latency; groups ``keep`` leaves out have the context model's width."""
        return self.predictor.predict(self.normalize(keep, context))

    def preferred(self, points: list[dict]) -> list[dict]:
        """``points`` best first, by validation top-1 with ties inside its noise (see
        :func:`prefer`; one binomial standard error on the images a candidate is scored on, none
        with the user's ``eval_fn``)."""
        if not points:
            return []
        if self.evaluator.eval_fn is not None:
            return prefer(points, 0.0)
        if self._val_count is None:
            n = self.cfg.val_images
            count = sum(len(y) for _, y in self.data.batches("val", 500, limit=n or None))
            self._val_count = max(1, count)
        best = max(p["top1"] for p in points)
        return prefer(points, math.sqrt(max(best * (1 - best), 0.0) / self._val_count))

    def feasible(self, point: dict, slack: float = 0.0) -> bool:
        """Whether a candidate's predicted value meets the budget (:meth:`limit`)."""
        return point[self.budget.key] <= self.limit() * (1 + slack)

    def limit(self) -> float:
        """The budget's limit on what :meth:`cost` / :meth:`predict` say: for a latency budget,
        in the predictor's units and divided by :attr:`latency_ratio` (the predictor's error
        near the budget, where a method measured it: :func:`.anchor.anchor`)."""
        lim = self.budget.limit(self.reference)
        return lim / self.latency_ratio if self.budget.kind == "latency" else lim

    def set_latency_ratio(self, ratio: float) -> None:
        """Judge predicted latencies as ``ratio`` x what the predictor says from now on (every
        logged row's ``feasible`` again too, as after the int8 gain)."""
        if not ratio > 0:
            raise ValueError(f"latency ratio {ratio!r} must be positive")
        self.latency_ratio = float(ratio)
        self._judge_again()

    def _judge_again(self) -> None:
        """Every logged row's ``feasible`` against the budget as it is judged now."""
        for row in self.log.rows:
            if "feasible" in row:
                row["feasible"] = self.feasible(row)

    # -- evaluations (the evaluator's) ---------------------------------------------------------
    def evaluate(self, keep: dict[str, int], phase: str | None = None, context: str = "",
                 train_batches: int = 0) -> dict:
        """Validation top-1, predicted latency, MACs and params of one candidate (cached)."""
        return self.evaluator.evaluate(keep, phase or self.phase, context, train_batches)

    def evaluate_many(self, keeps: list[dict[str, int]], phase: str | None = None,
                      context: str = "", train_batches: int = 0) -> list[dict]:
        """:meth:`evaluate` for a batch of independent candidates (in parallel with workers);
        rows in the batch's order, logged in it."""
        return self.evaluator.evaluate_many(keeps, phase or self.phase, context, train_batches)

    def cost(self, keep: dict[str, int], context: str = "") -> dict:
        """MACs, parameters and predicted latency of a candidate, without evaluating accuracy."""
        return self.evaluator.cost(keep, context)

    def build(self, keep: dict[str, int], context: str = "", train_batches: int = 0):
        """The pruned, BN-recalibrated (and optionally briefly trained) model of a candidate."""
        return self.evaluator.build(keep, context, train_batches)

    def recalibrate(self, net: nn.Module) -> None:
        """Re-estimate BN statistics as every candidate gets them (layout, precision)."""
        self.evaluator.recalibrate(net)

    def add_context(self, name: str, model: nn.Module) -> None:
        """Evaluate later candidates on another base model (e.g. after a fine-tuning step)."""
        self.evaluator.add_context(name, model)

    def top1(self, net: nn.Module, images: int | None) -> float:
        return self.evaluator.top1(net, images)

    def batches(self, split: str, batch_size: int, **kw):
        return self.evaluator.batches(split, batch_size, **kw)

    def set_criterion(self, crit) -> None:
        """Rank filters with ``crit`` from now on (the unpruned model is scored again); for a
        method whose options choose its criterion, before its first evaluation."""
        self.crit = crit
        self.evaluator.set_criterion(crit)

    @property
    def log(self):
        return self.evaluator.log

    @property
    def cache(self) -> dict:
        return self.evaluator.cache

    @property
    def scores(self):
        return self.evaluator.contexts[""][1]

    @property
    def replayed(self) -> int:
        return self.evaluator.replayed

    @property
    def score_seconds(self) -> float:
        return self.evaluator.score_seconds

    def seconds(self) -> float:
        return self.evaluator.seconds()

    # -- progress ----------------------------------------------------------------------------
    def plan(self, total: int) -> None:
        """Tell the callbacks how many evaluations the method expects (an estimate)."""
        self.callbacks.on_plan(self, total)


def prefer(points: list[dict], band: float) -> list[dict]:
    """Best first: the points whose top-1 is within ``band`` of the best one are a tie (their
    difference is noise: before fine-tuning, a network pruned to a third of its latency scores
    near chance, 11-14% on ten classes), ordered by MACs kept (the most capacity for the
    fine-tune; a latency budget met, the one closest to it); the rest follow by top-1.

    >>> pts = [{"top1": 0.14, "macs": 2, "key": "a"}, {"top1": 0.13, "macs": 9, "key": "b"},
    ...        {"top1": 0.05, "macs": 20, "key": "c"}]
    >>> [p["key"] for p in prefer(pts, 0.02)], [p["key"] for p in prefer(pts, 0.0)]
    (['b', 'a', 'c'], ['a', 'b', 'c'])
    """
    if not points:
        return []
    best = max(p["top1"] for p in points)
    return sorted(points, key=lambda p: (p["top1"] < best - band,
                                         -p["macs"] if p["top1"] >= best - band else 0,
                                         -p["top1"], -p["macs"], p.get("key", "")))


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
