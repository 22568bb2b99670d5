"""``search_model``: set up (or resume) a search folder, run the method, then hand the result to
the measured final selection (:mod:`.selection`), save.  See :mod:`prunelab.searches.driver` for the folder's contents."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from ..errors import PrunelabError
from ..io import atomic_write_text, make_dir, read_json
from ..lock import FolderLock
from ..ui import log, progress
from .budget import Budget
from .driver import Search, SearchCallbacks, SearchConfig
from .selection import finish

RESULT = "result.json"
# settings added to [search] after search folders existed, with their defaults: a folder made
# before them resumes (or shows its result) when they are asked at these values
ADDED = {"fidelity": "bn", "score_precision": "auto"}


def _prepare_folder(out: Path, config: dict) -> dict | None:
    """Check ``out`` holds nothing or a search with the same config; returns its state."""
    if out.exists() and not out.is_dir():
        raise PrunelabError(f"--out {out} is a file; give a folder for the search")
    if out.is_dir() and any(out.iterdir()):
        old = read_json(out / "config.json")
        if old is None:
            raise PrunelabError(f"--out {out} exists and is not a search folder; choose a new one")
        # a setting added since the folder was made, asked at its default, is the same search
        old = {**{k: v for k, v in ADDED.items() if k not in old and config.get(k) == v}, **old}
        if old != config:
            diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
            raise PrunelabError(f"{out} holds a search with other settings ({', '.join(diff)}); "
                                "rerun with the same options to resume, or use another --out")
        return read_json(out / "state.json") or {}
    make_dir(out)
    atomic_write_text(out / "config.json", json.dumps(config, indent=1, sort_keys=True))
    return None


class _RunCallbacks(SearchCallbacks):
    """A search folder's state file after every new evaluation, and the progress bar."""

    def __init__(self, out: Path):
        self.out, self.bar, self.task = out, None, None

    def show(self, bar, title: str = "") -> None:
        """Report progress on ``bar`` (a rich Progress) from now on; None: stop."""
        self.bar, self.task = bar, bar.add_task(title, total=None, info="") if bar else None

    def on_evaluation(self, ctx: Search, row: dict, new: bool) -> None:
        if new and hasattr(ctx, "base"):
            _write_state(self.out, ctx, "running")
        if self.bar is None:
            return
        best = max((r["top1"] for r in ctx.cache.values()
                    if r.get("feasible") and not r["context"]), default=None)
        info = f"{ctx.phase}" + (f" best feasible {best:.4f}" if best is not None else "")
        self.bar.update(self.task, advance=1, info=info)

    def on_plan(self, ctx: Search, total: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, total=total)


def _write_state(out: Path, ctx: Search | None, status: str, **extra) -> None:
    state = {"status": status, "updated": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra}
    if ctx is not None:
        state.update(evaluations=len(ctx.log.rows), seconds=ctx.seconds(), phase=ctx.phase)
    atomic_write_text(out / "state.json", json.dumps(state, indent=1))


def _predictor(model, spec, target, out: Path, cache_dir):
    from ..latency.cache import Cache
    from ..latency.predictor import Predictor, anchor_predictor, build_predictor

    saved = read_json(out / "predictor.json")
    if saved is not None:
        return Predictor.from_json(saved)
    log(f"building the latency table of {spec.name} on {target.name} (cached per device) and "
        "anchoring it on this sitting's measurements")
    cache = Cache(target.fingerprint(), cache_dir)
    pred, _ = build_predictor(model, spec, target, cache)
    a = anchor_predictor(pred, model, spec, target)
    log(f"anchored on {len(a['references']) + 1} models timed interleaved: unpruned "
        f"{a['base_ms']:.3f} ms (table {a['base_table_ms']:.3f}), pruned "
        f"{a['offset_ms']:+.3f} + {a['scale']:.3f} x table")
    atomic_write_text(out / "predictor.json", json.dumps(pred.to_json()))
    return pred


def method_entry(cfg: SearchConfig):
    """The method's registry entry, its options checked (before any work)."""
    from .registered import SEARCHES

    entry = SEARCHES.get(cfg.method)
    unknown = sorted(set(cfg.options) - set(entry.meta["options"]))
    if unknown:
        raise PrunelabError(f"method {cfg.method} has no option {unknown[0]!r}; it takes: "
                            f"{', '.join(entry.meta['options'])}")
    return entry


def _check_reach(ctx: Search, budget: Budget) -> None:
    """Up front, before minutes of search: with a speed-up or latency budget, the most pruned
    models the search may return (every group at its least width; where that misses, every group
    at 8, then 16 channels, since a blocked-layout runtime can run one channel slower than a
    whole block) are timed against the budget's reference (paired sessions in this process,
    seconds).  Where even the upper end of their 95% intervals is under 0.97 x the budget, no
    method can land it: one line says what the target reaches, and nothing is left behind.  An
    unpruned model (or int8 alone) that already meets the budget is the landing's business (it
    is the answer)."""
    from .landing import FLOOR, unpruned_meets
    from .anchor import timer_of
    from .selection import REACH_BLOCKS, path_floors

    if budget.kind != "latency" or unpruned_meets(budget, ctx.base["latency_ms"], ctx.gain) or \
            hasattr(ctx.target, "time_jobs"):
        return
    timer, est = timer_of(ctx), None
    # the least widths first; where they miss, every group at one SIMD block (8 or 16
    # channels): on a blocked-layout runtime a width of 1 can run slower than a whole block
    for keep in path_floors(ctx, budget):
        e = timer(keep, 0, 6)
        est = e if est is None or e.estimate > est.estimate else est
        want = budget.value if budget.relative else e.base_ms / budget.value
        if e.high >= FLOOR * want:
            return
    cfg = ctx.cfg.target
    int8 = getattr(cfg, "precision", "fp32") == "int8"
    ask = (f"speedup={0.97 * est.estimate:.3g}" if budget.relative else
           f"latency={est.base_ms / (0.97 * est.estimate):.3g}ms")
    raise PrunelabError(
        f"budget {budget} cannot be met on {cfg.target}"
        f"{' in int8' if int8 else ''} (batch {cfg.batch_size}, {cfg.threads} thread(s)): the "
        f"most pruned models allowed (every group at its least width, or at one SIMD block of "
        f"{' or '.join(map(str, REACH_BLOCKS[1:]))} channels) measure at best "
        f"{est.estimate:.3g}x [{est.low:.3g}, {est.high:.3g}] the "
        f"{'unpruned fp32 model' if int8 else 'unpruned model'}; ask for at most {ask}"
        + (" or search in fp32 (int8's fixed per-layer cost caps its speed-up here)"
           if int8 else ""))


def search_model(model, spec, data, cfg: SearchConfig, out: str | Path,
                 cache_dir: str | None = None, *, target=None, eval_fn=None,
                 ignored: tuple[str, ...] = (), record: dict | None = None,
                 parent_ref: str | None = None, workers: int = 0,
                 ray_address: str | None = None, criterion=None) -> tuple[dict, object]:
    """Run (or resume) a search on a model object; returns ``(result, chosen pruned model)``.

    ``data`` has ``batches(split, ...)`` (a registered data set's :class:`Splits` or the user's
    loaders as :class:`~prunelab.data.loaders.LoaderData`); ``target`` a ready target (built
    from ``cfg.target`` when None); ``eval_fn(model) -> float`` replaces validation top-1;
    ``ignored`` names layers never pruned; ``record`` is written into ``config.json`` beside the
    settings (what the model and data were, for a resume check).  ``workers``: evaluate batches
    of candidates on that many Ray workers (:mod:`.parallel`; ``ray_address`` joins a cluster);
    the log, the choice and a resume are the same as without them.  ``criterion``: a
    :class:`~prunelab.criteria.Criterion` object to use instead of building ``cfg.criterion``
    (which then only names it in the record)."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise PrunelabError(f"workers={workers!r}: give a whole number of Ray workers >= 1 (or "
                            "0: evaluate in this process)")
    if workers:
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise PrunelabError("workers needs Ray: pip install 'prunelab[ray]' (or leave "
                                "workers out to evaluate in this process)")
    from ..criteria import build_criterion
    from .parallel import measuring_target

    entry = method_entry(cfg)
    crit_spec = cfg.criterion or entry.meta["criterion"]
    budget = Budget.parse(cfg.budget)
    out = Path(out)
    config = {**cfg.to_json(), "criterion": crit_spec, **(record or {})}
    if ignored:
        config["ignored_layers"] = list(ignored)
    crit = criterion if criterion is not None else build_criterion(crit_spec, seed=cfg.seed)
    with FolderLock(out), measuring_target(cfg.target, target, workers, ray_address) as target:
        fresh = not out.exists()
        state = _prepare_folder(out, config)
        if state and state.get("status") == "done" and (out / RESULT).exists():
            from ..io import load_into

            log(f"{out} holds a finished search; showing its result")
            return ({**json.loads((out / RESULT).read_text()), "resumed": True},
                    load_into(out / "model", model))
        if state:
            log(f"resuming the search in {out} ({state.get('evaluations', 0)} evaluations logged)")
        ctx = None
        try:
            t_pred = time.perf_counter()
            predictor = _predictor(model, spec, target, out, cache_dir)
            t_pred = time.perf_counter() - t_pred
            calls = _RunCallbacks(out)
            ctx = Search(model, spec, data, cfg, out, crit, predictor, target,
                         seconds_before=(state or {}).get("seconds", 0.0), eval_fn=eval_fn,
                         ignored=ignored, callbacks=calls, workers=workers,
                         ray_address=ray_address)
            _write_state(out, ctx, "running")
            if not state:
                _check_reach(ctx, budget)
            with progress() as bar:
                calls.show(bar, f"{cfg.method} search")
                entry.fn(ctx)
                calls.show(None)
            ctx.evaluator.close()  # the workers' load ends before the target is timed
            searched = ctx.seconds()
            ctx.phase = "measure"
            _write_state(out, ctx, "measuring")
            result, net = finish(ctx, parent_ref or spec.name, budget, crit_spec)
        except KeyboardInterrupt:
            if ctx is not None:
                ctx.evaluator.close()
                _write_state(out, ctx, "interrupted")
                ctx.log.close()
            raise PrunelabError("search interrupted; run the same command again to resume") \
                from None
        except PrunelabError:
            if ctx is not None:
                ctx.evaluator.close()
                ctx.log.close()
            if fresh and (ctx is None or len(ctx.log.rows) <= 1):
                shutil.rmtree(out, ignore_errors=True)  # bad settings found at once: leave nothing
            raise
        ctx.log.close()
        result["search_seconds"] = searched
        result["seconds"] = ctx.seconds()
        # this session's share of the cost: the table (cached per device) and the measurements
        result["predictor_seconds"] = t_pred
        result["measure_seconds"] = result["seconds"] - searched
        atomic_write_text(out / RESULT, json.dumps(result, indent=1))
        _write_state(out, ctx, "done")
        return result, net
