"""The evaluator of a search: builds, scores and logs candidates; the cache, the log and the
replay that make a search resumable (see :mod:`prunelab.searches.driver`)."""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path

import torch
import torch.nn as nn

LOG = "evaluations.jsonl"


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


def widths_key(widths: dict[str, int], keep: dict[str, int]) -> str:
    """Canonical text of a candidate: every group's width in model order."""
    return ",".join(str(int(keep.get(g, w))) for g, w in widths.items())


class Evaluator:
    """Candidates of one search: prune (with the criterion's scores of the context's model),
    re-estimate BN, score on the validation subset (or the user's ``eval_fn``), count MACs and
    parameters; every new evaluation is appended to the log before the search goes on, and every
    logged one is answered from it (a replay).  The space (``search``) gives widths, predicted
    latency and feasibility; its callbacks hear of every evaluation."""

    def __init__(self, search, model: nn.Module, data, crit, out: Path, eval_fn=None,
                 seconds_before: float = 0.0):
        from ..pruning import score_groups

        self.search, self.data, self.crit, self.eval_fn = search, data, crit, eval_fn
        self.spec, self.cfg, self.ignored = search.spec, search.cfg, search.ignored
        scores, self.score_seconds = score_groups(model, crit, search.groups, data)
        self.contexts: dict[str, tuple[nn.Module, dict]] = {"": (model, scores)}
        self.context_widths: dict[str, dict[str, int]] = {}
        self.log = EvalLog(out / LOG)
        self.cache = {(r.get("context", ""), r["key"]): r for r in self.log.rows}
        self.replayed = 0
        self.t0 = time.perf_counter()
        self.seconds_before = seconds_before
        self._costs: dict[tuple, dict] = {}
        self.layout = _fast_layout(model, self.spec.input_shape)

    def seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.t0

    def add_context(self, name: str, model: nn.Module) -> None:
        from ..pruning import prunable_groups, score_groups

        _, groups = prunable_groups(model, self.spec.input_shape, self.spec.num_classes,
                                    self.ignored)
        scores, _ = score_groups(model, self.crit, groups, self.data)
        self.contexts[name] = (model, scores)
        self.context_widths[name] = {g.name: g.width for g in groups}

    def set_criterion(self, crit) -> None:
        from ..pruning import score_groups

        model = self.contexts[""][0]
        self.crit = crit
        scores, self.score_seconds = score_groups(model, crit, self.search.groups, self.data)
        self.contexts[""] = (model, scores)
        self._costs.clear()

    def build(self, keep: dict[str, int], context: str = "", train_batches: int = 0
              ) -> tuple[nn.Module, object]:
        from ..pruning import prune
        from ..train import recalibrate_bn
        from .driver import short_train

        base, scores = self.contexts[context]
        res = prune(base, self.crit, keep=keep, input_shape=self.spec.input_shape,
                    num_classes=self.spec.num_classes, scores=scores, count=False,
                    ignored=self.ignored)
        net = res.model
        if train_batches:
            short_train(net, self.data, train_batches, self.search.seed)
        if self.cfg.recal_batches:
            net.to(memory_format=self.layout)
            recalibrate_bn(net, self.batches("train", 128, shuffle=True, seed=self.search.seed),
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
        from .driver import checked_score

        if self.eval_fn is not None:
            return checked_score(self.eval_fn, net)
        net.to(memory_format=self.layout)
        try:
            return evaluate(net, self.batches("val", 500, limit=images or None))
        finally:
            net.to(memory_format=torch.contiguous_format)

    def cost(self, keep: dict[str, int], context: str = "") -> dict:
        s = self.search
        keep = s.normalize(keep, context)
        key = (context, widths_key(s.context_widths(context), keep))
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
                                    "latency_ms": s.predict(keep, context)}
        return self._costs[key]

    def evaluate(self, keep: dict[str, int], phase: str, context: str = "",
                 train_batches: int = 0) -> dict:
        s = self.search
        keep = s.normalize(keep, context)
        ctx = context + (f"|train{train_batches}" if train_batches else "")
        key = (ctx, widths_key(s.context_widths(context), keep))
        hit = self.cache.get(key)
        if hit is not None:
            self.replayed += 1
            s.callbacks.on_evaluation(s, hit, False)
            return hit
        t0 = time.perf_counter()
        net, _ = self.build(keep, context, train_batches)
        top1 = self.top1(net, self.cfg.val_images)
        from ..metrics import macs_params

        macs, params = macs_params(net, self.spec.input_shape)
        row = {"n": len(self.log.rows), "phase": phase, "context": ctx,
               "key": key[1], "keep": keep, "top1": top1,
               "latency_ms": s.predict(keep, context), "macs": macs, "params": params,
               "seconds": time.perf_counter() - t0, "elapsed_s": self.seconds()}
        if hasattr(s, "base"):
            row["feasible"] = s.feasible(row)
        self.log.append(row)
        self.cache[key] = row
        s.callbacks.on_evaluation(s, row, True)
        _fault_injection(len(self.log.rows))
        return row


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
