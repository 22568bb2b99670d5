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

from ..gate import gated

LOG = "evaluations.jsonl"


class EvalLog:
    """Append-only JSONL of evaluations; a torn last line (a killed process) is dropped."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: list[dict] = []
        self._good = 0  # bytes of whole lines: what a failed append is cut back to
        try:
            if path.exists():
                with open(path, "rb") as f:
                    for line in f:
                        try:
                            row = json.loads(line)
                        except json.JSONDecodeError:
                            break
                        if not line.endswith(b"\n"):
                            break  # a line cut short that still parses: torn all the same
                        self.rows.append(row)
                        self._good += len(line)
                if self._good != path.stat().st_size:
                    with open(path, "r+b") as f:
                        f.truncate(self._good)
            self._f = open(path, "ab", buffering=0)
        except OSError as e:
            from ..errors import write_error

            raise write_error(path, e) from None

    def append(self, row: dict) -> None:
        """One line, synced; a write the disk refuses leaves no torn line and raises one line."""
        data = (json.dumps(row, sort_keys=True) + "\n").encode()
        try:
            view = memoryview(data)
            while view:
                view = view[self._f.write(view):]
            os.fsync(self._f.fileno())
        except OSError as e:
            from ..errors import write_error

            try:
                os.ftruncate(self._f.fileno(), self._good)
            except OSError:
                pass  # the next open drops the torn line
            raise write_error(self.path, e) from None
        self._good += len(data)
        self.rows.append(row)

    def close(self) -> None:
        self._f.close()


def widths_key(widths: dict[str, int], keep: dict[str, int]) -> str:
    """Canonical text of a candidate: every group's width in model order."""
    return ",".join(str(int(keep.get(g, w))) for g, w in widths.items())


class Candidates:
    """How one candidate is built and scored, on its own (picklable: a Ray worker holds one):
    prune the context's model with the criterion's scores, optionally train a few batches,
    re-estimate BN, score on the validation subset (or the user's ``eval_fn``), count MACs and
    parameters."""

    def __init__(self, model: nn.Module, scores, crit, data, input_shape, num_classes,
                 ignored=(), recal_batches: int = 6, val_images: int = 1000, seed: int = 0,
                 eval_fn=None, precision: str = "auto"):
        from ..train import bf16_supported

        self.contexts: dict[str, tuple[nn.Module, dict]] = {"": (model, scores)}
        self.crit, self.data, self.eval_fn = crit, data, eval_fn
        self.input_shape, self.num_classes, self.ignored = input_shape, num_classes, ignored
        self.recal_batches, self.val_images, self.seed = recal_batches, val_images, seed
        self.layout = _fast_layout(model, input_shape)
        # the forward passes of a candidate (BN re-estimate, validation) in bf16 where the CPU
        # runs it natively: about 2x faster on an AVX-512 BF16 EPYC (resnet56, 1,000 images:
        # 1.33 s -> 0.71 s, the same correct count); emulated bf16 would be slower, so never there
        self.bf16 = precision == "bf16" or (precision == "auto" and bf16_supported())

    def _autocast(self):
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16)

    def build(self, keep: dict[str, int], context: str = "", train_batches: int = 0
              ) -> tuple[nn.Module, object]:
        from ..pruning import prune
        from .scoring import short_train

        base, scores = self.contexts[context]
        res = prune(base, self.crit, keep=keep, input_shape=self.input_shape,
                    num_classes=self.num_classes, scores=scores, count=False,
                    ignored=self.ignored)
        net = res.model
        if train_batches:
            short_train(net, self.data, train_batches, self.seed)
        self.recalibrate(net)
        return net, res

    def recalibrate(self, net: nn.Module) -> None:
        """Re-estimate ``net``'s BN statistics on ``recal_batches`` training batches (none: left
        as is), in the candidates' layout and precision."""
        from ..train import recalibrate_bn

        if not self.recal_batches:
            return
        net.to(memory_format=self.layout)
        try:
            with self._autocast():
                recalibrate_bn(net, self.batches("train", 128, shuffle=True, seed=self.seed),
                               self.recal_batches)
        finally:
            net.to(memory_format=torch.contiguous_format)

    def batches(self, split: str, batch_size: int, **kw):
        """Data batches in the layout candidates run fastest in (channels-last when the model
        takes it: about 1.5-2x faster fp32 convolutions on CPU, same precision)."""
        for x, y in gated(self.data.batches(split, batch_size, **kw)):
            yield x.contiguous(memory_format=self.layout), y

    def top1(self, net: nn.Module, images: int | None) -> float:
        """Validation top-1 on ``images`` validation images (or the user's ``eval_fn``)."""
        from ..train import evaluate
        from .scoring import checked_score

        if self.eval_fn is not None:
            return checked_score(self.eval_fn, net)
        net.to(memory_format=self.layout)
        try:
            with self._autocast():
                return evaluate(net, self.batches("val", 500, limit=images or None))
        finally:
            net.to(memory_format=torch.contiguous_format)

    def rich(self, keep: dict[str, int], context: str, train_batches: int, steps: int) -> dict:
        """The rich score of one candidate (``fidelity = "kd:N"``): built as :meth:`run` builds
        it, ``steps`` distillation steps from the unpruned model (the same batches and teacher
        logits for every candidate: :class:`~.scoring.Distillation`, kept here), BN re-estimated
        again, top-1 on the validation images; with its seconds."""
        from .scoring import Distillation, short_train

        t0 = time.perf_counter()
        if getattr(self, "_kd", None) is None:
            self._kd = Distillation(self.data, self.contexts[""][0], self.seed)
        net, _ = self.build(keep, context, train_batches)
        short_train(net, self.data, steps, self.seed, distillation=self._kd)
        self.recalibrate(net)
        return {"top1": self.top1(net, self.val_images), "seconds": time.perf_counter() - t0}

    def run(self, keep: dict[str, int], context: str = "", train_batches: int = 0) -> dict:
        """Top-1, MACs, parameters and seconds of one candidate (``keep``: every group)."""
        from ..metrics import macs_params

        t0 = time.perf_counter()
        net, _ = self.build(keep, context, train_batches)
        top1 = self.top1(net, self.val_images)
        macs, params = macs_params(net, self.input_shape)
        return {"top1": top1, "macs": macs, "params": params,
                "seconds": time.perf_counter() - t0}


class Evaluator:
    """Candidates of one search (:class:`Candidates`), evaluated once each: every new
    evaluation is appended to the log before the search goes on, and every logged one is
    answered from it (a replay).  The space (``search``) gives widths, predicted latency and
    feasibility; its callbacks hear of every evaluation.  With ``workers``, batches of candidates
    (:meth:`evaluate_many`) run on Ray workers (:mod:`.parallel`), logged in the batch's order."""

    def __init__(self, search, model: nn.Module, data, crit, out: Path, eval_fn=None,
                 seconds_before: float = 0.0, workers: int = 0, ray_address: str | None = None):
        from ..pruning import score_groups

        self.search, self.data, self.crit, self.eval_fn = search, data, crit, eval_fn
        self.spec, self.cfg, self.ignored = search.spec, search.cfg, search.ignored
        scores, self.score_seconds = score_groups(model, crit, search.groups, data)
        self.cands = Candidates(model, scores, crit, data, self.spec.input_shape,
                                self.spec.num_classes, self.ignored, self.cfg.recal_batches,
                                self.cfg.val_images, search.seed, eval_fn,
                                self.cfg.score_precision)
        self.contexts = self.cands.contexts
        self.context_widths: dict[str, dict[str, int]] = {}
        self.log = EvalLog(out / LOG)
        self.cache = {(r.get("context", ""), r["key"]): r for r in self.log.rows}
        self.replayed = 0
        self.t0 = time.perf_counter()
        self.seconds_before = seconds_before
        self._costs: dict[tuple, dict] = {}
        self.workers, self.ray_address, self.pool = workers, ray_address, None

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
        self.crit = self.cands.crit = crit
        scores, self.score_seconds = score_groups(model, crit, self.search.groups, self.data)
        self.contexts[""] = (model, scores)
        self._costs.clear()
        self.close()  # workers hold the old scores

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    def build(self, keep, context: str = "", train_batches: int = 0):
        return self.cands.build(keep, context, train_batches)

    def recalibrate(self, net: nn.Module) -> None:
        self.cands.recalibrate(net)

    def batches(self, split: str, batch_size: int, **kw):
        return self.cands.batches(split, batch_size, **kw)

    def top1(self, net: nn.Module, images: int | None) -> float:
        return self.cands.top1(net, images)

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

    def rich_many(self, jobs: list[tuple[dict[str, int], str, int]], steps: int) -> list[dict]:
        """:meth:`Candidates.rich` of ``(keep, context, train_batches)`` jobs, in order: on the
        workers when there are any (and every job is of the search's own model), else here; the
        workers are stopped after (the landing times the target next)."""
        if self.workers and len(jobs) > 1 and not any(c for _, c, _ in jobs):
            from .parallel import RayPool

            pool = self.pool or RayPool(self.workers, self.ray_address, self.cands)
            self.pool = pool
            try:
                return list(pool.map([(k, t, steps) for k, _, t in jobs], "rich"))
            finally:
                self.close()
        return [self.cands.rich(k, c, t, steps) for k, c, t in jobs]

    def evaluate(self, keep: dict[str, int], phase: str, context: str = "",
                 train_batches: int = 0) -> dict:
        return self.evaluate_many([keep], phase, context, train_batches)[0]

    def evaluate_many(self, keeps: list[dict[str, int]], phase: str, context: str = "",
                      train_batches: int = 0) -> list[dict]:
        """Evaluate a batch of candidates (a generation, a sweep): those in the log are
        answered from it; the others run (on the workers when there are any, else here) and are
        logged in the batch's order, each as soon as it and every one before it is done, so a
        parallel search logs, replays and resumes exactly as a serial one."""
        s = self.search
        ctx = context + (f"|train{train_batches}" if train_batches else "")
        items = []
        for keep in keeps:
            keep = s.normalize(keep, context)
            items.append((keep, (ctx, widths_key(s.context_widths(context), keep))))
        todo, seen = [], set()
        for keep, key in items:
            if key not in self.cache and key not in seen:
                seen.add(key)
                todo.append((keep, key))
        if self.workers and not context and len(todo) > 1:
            if self.pool is None:
                from .parallel import RayPool

                self.pool = RayPool(self.workers, self.ray_address, self.cands)
            results = self.pool.map([(k, train_batches) for k, _ in todo])
        else:
            results = (self.cands.run(k, context, train_batches) for k, _ in todo)
        fresh = {}
        for (keep, key), r in zip(todo, results):
            row = {"n": len(self.log.rows), "phase": phase, "context": ctx, "key": key[1],
                   "keep": keep, "top1": r["top1"], "latency_ms": s.predict(keep, context),
                   "macs": r["macs"], "params": r["params"], "seconds": r["seconds"],
                   "elapsed_s": self.seconds()}
            if hasattr(s, "base"):
                row["feasible"] = s.feasible(row)
            self.log.append(row)
            self.cache[key] = row
            fresh[key] = row
            s.callbacks.on_evaluation(s, row, True)
            _fault_injection(len(self.log.rows))
        out = []
        for _, key in items:
            row = self.cache[key]
            if key not in fresh:
                self.replayed += 1
                s.callbacks.on_evaluation(s, row, False)
            fresh.pop(key, None)  # a repeat inside the batch is a replay
            out.append(row)
        return out


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
