"""One call from "my trained model" to "a faster model I can deploy, and the evidence".

A pipeline is a TOML file (or the same as a dict) with six sections; every key is optional
except ``[model] ref`` and ``[search] method``:

.. code-block:: toml

    [run]                       # out: run folder (default runs/<config name>); seed: all stages
    out = "runs/quick"
    seed = 0
    [model]                     # ref: shipped name or model folder; dataset/data_dir: overrides
    ref = "resnet20.fmnist"
    [search]                    # see `prunelab search --help`; options as in --option
    method = "nsga2"
    criterion = "deeplift"
    budget = "speedup=1.5"
    recal_batches = 6
    val_images = 1000
    measure_front = 12
    [search.options]
    pop = 12
    [target]                    # where latency is measured (search and verification)
    name = "onnxruntime-cpu"
    batch_size = 1
    threads = 1
    [finetune]                  # epochs = 0 skips fine-tuning
    epochs = 2
    teacher = "parent"          # "parent" (the unpruned model), a model ref, or "none"
    kd_weight = 0.5
    [verify]                    # the interleaved latency run of unpruned vs final
    warmup = 20
    repeats = 200

Stages: ``search`` (:func:`prunelab.commands.run_search` into ``RUN/search/``), ``finetune``
(:func:`prunelab.commands.finetune` into ``RUN/finetuned/``), with ``[target] precision =
"int8"`` ``quantize`` (the fine-tuned and the unpruned model quantized as the target runs them,
``RUN/final.int8.onnx`` and ``RUN/unpruned.int8.onnx``), and ``verify`` (test top-1 of the
unpruned, searched and final models, their latency measured interleaved on the target, MACs and
parameters, into ``verify.json``; int8: the fp32 graphs beside the int8 files, each int8 top-1
computed by the runtime, the speed-up of ``final.int8.onnx`` over the unpruned fp32 graph).  Each stage is skipped when finished and resumed when
interrupted (the search from its log, fine-tuning from ``finetuned.ckpt/``).  The run folder
also keeps ``config.toml`` (the file as given), ``config.json`` (resolved, defaults filled in; a
rerun must match it), ``environment.json`` (library versions, device fingerprint, seeds) and
``summary.json`` (what ``prunelab report`` and ``prunelab compare`` read).

    >>> cfg = load_config({"model": {"ref": "resnet20.fmnist"}, "search": {"method": "uniform"}})
    >>> cfg.search.budget, cfg.target.name, cfg.finetune.epochs
    ('macs=0.5', 'torch-cpu', 1)
    >>> load_config({"model": {"ref": "resnet20.fmnist"}, "search": {"method": "uniform",
    ...              "bugdet": "macs=0.5"}})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    prunelab.errors.PrunelabError: config section [search] has no key 'bugdet'; it takes: ...
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .config import (SECTIONS, FinetuneSection, ModelSection, RunSection, SearchSection,
                     TargetSection, VerifySection, _section, default)
from .errors import PrunelabError
from .io import atomic_write_text, make_dir, read_json, trust_factory
from .lock import FolderLock
from .ui import log

# ----------------------------------------------------------------------------- the config


@dataclass(frozen=True)
class PipelineConfig:
    """A validated pipeline config: one frozen section object per TOML table."""

    run: RunSection
    model: ModelSection
    search: SearchSection
    target: TargetSection
    finetune: FinetuneSection
    verify: VerifySection
    name: str = "run"

    def to_json(self) -> dict:
        return {s: getattr(self, s).model_dump() for s in SECTIONS}

    def target_config(self):
        from .targets import TargetConfig

        t = self.target
        return TargetConfig(t.name, batch_size=t.batch_size, threads=t.threads,
                            precision=t.precision, calibration=t.calibration,
                            calib_images=t.calib_images, int8_types=t.int8_types,
                            int8_layers=t.int8_layers)

    def search_config(self):
        from .searches import SearchConfig

        return SearchConfig.from_sections(self.search, self.target_config(), self.run.seed)


def read_toml(path: str | os.PathLike) -> dict:
    """A TOML file as a dict; a one-line error when it is missing or malformed."""
    import tomllib

    p = Path(path)
    if not p.is_file():
        raise PrunelabError(f"config file {str(p)!r} not found; pass a TOML file such as "
                            "examples/quick.toml")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise PrunelabError(f"cannot read {p} as TOML: {e}") from None


def load_config(src: str | os.PathLike | dict, name: str | None = None) -> PipelineConfig:
    """Read and validate a pipeline config (a TOML path or a dict); checks every name against the
    registries (method, criterion, target, model) so that a mistake fails before any work."""
    if isinstance(src, dict):
        raw, name = src, name or "run"
    else:
        raw, name = read_toml(src), name or Path(src).stem
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise PrunelabError(f"config has no section [{unknown[0]}]; sections are: "
                            f"{', '.join('[' + s + ']' for s in SECTIONS)}")
    secs = {s: _section(s, raw.get(s)) for s in SECTIONS}
    from .searches import Budget

    # one spelling per budget (macs=0.50 is macs=0.5): a rerun compares like with like
    secs["search"] = secs["search"].model_copy(
        update={"budget": str(Budget.parse(secs["search"].budget))})
    cfg = PipelineConfig(**secs, name=name)
    _check(cfg)
    return cfg


def is_factory_ref(ref: str) -> bool:
    """``path/file.py:fn``: a model built by the user's code (not a folder or shipped name)."""
    return ":" in ref and ref.rpartition(":")[0].endswith(".py")


def _check(cfg: PipelineConfig) -> None:
    from .io import resolve
    from .searches import SEARCHES, Budget

    if not cfg.model.ref:
        raise PrunelabError("config [model] needs ref = a shipped model name "
                            "(e.g. \"resnet20.fmnist\"), a model folder or path/file.py:fn")
    for key in ("factory", "weights"):
        v = getattr(cfg.model, key)
        if v is not None and not Path(v.rpartition(":")[0] if key == "factory" else v).is_file():
            raise PrunelabError(f"config [model] {key} = {v!r}: file not found")
    if is_factory_ref(cfg.model.ref):
        if not Path(cfg.model.ref.rpartition(":")[0]).is_file():
            raise PrunelabError(f"config [model] ref = {cfg.model.ref!r}: the file is not there")
    else:
        if cfg.model.weights:
            raise PrunelabError("config [model] weights goes with ref = path/file.py:fn, not "
                                "with a model folder")
        resolve(cfg.model.ref)
    if cfg.model.dataset:
        from .data import DATASETS

        DATASETS.get(cfg.model.dataset)
    if not cfg.search.method:
        raise PrunelabError("config [search] needs method = one of "
                            f"{', '.join(SEARCHES.names())}")
    entry = SEARCHES.get(cfg.search.method)
    bad = sorted(set(cfg.search.options) - set(entry.meta["options"]))
    if bad:
        raise PrunelabError(f"config [search.options] {bad[0]!r} is not an option of "
                            f"{cfg.search.method}; it takes: {', '.join(entry.meta['options'])}")
    if cfg.search.criterion:
        from .criteria import CRITERIA
        from .sweep import parse_criterion

        CRITERIA.get(parse_criterion(cfg.search.criterion)[0])
    Budget.parse(cfg.search.budget)
    cfg.search_config()  # target name, batch size, threads, precision, search numbers
    f = cfg.finetune
    if f.teacher not in ("parent", "none"):
        resolve(f.teacher)


def to_toml(d: dict) -> str:
    """A resolved config dict as TOML (tomli-w; keys set to None are left out: TOML has no
    null, and a left-out key takes its default)."""
    import tomli_w

    def drop_none(v):
        return {k: drop_none(x) for k, x in v.items() if x is not None} \
            if isinstance(v, dict) else v

    return tomli_w.dumps(drop_none(d))


# ----------------------------------------------------------------------------- the run


def environment(cfg: PipelineConfig) -> dict:
    """Library versions, the target's device fingerprint and the seeds of a run."""
    import importlib.metadata as md
    import platform

    from .version import __version__
    from .commands import environment as env
    from .targets import make_target

    libs = {}
    for p in ("torch", "torch-pruning", "numpy", "onnx", "onnxruntime", "openvino", "captum",
              "pymoo", "matplotlib"):
        try:
            libs[p] = md.version(p)
        except md.PackageNotFoundError:
            libs[p] = None
    return {"prunelab": __version__, "python": platform.python_version(), "libraries": libs,
            "host": env(), "target_fingerprint": make_target(cfg.target_config()).fingerprint(),
            "seeds": {"run": cfg.run.seed, "search": cfg.run.seed, "finetune": cfg.run.seed,
                      "verify_inputs": 0},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}


# which stage reads which config sections (a stage that has not started yet may have its
# settings corrected on a rerun: e.g. a fine-tune option that failed validation)
STAGE_SECTIONS = {"search": ("run", "model", "search", "target"), "finetune": ("finetune",),
                  "verify": ("verify",)}
# how the work is spread, not what it computes: may change between sittings of one run
FREE = {("run", "workers"), ("run", "ray_address")}


def _started(out: Path) -> list[str]:
    marks = {"search": ["search"], "finetune": ["finetune.json", "finetuned.ckpt", "finetuned"],
             "verify": ["verify.json"]}
    return [st for st, names in marks.items() if any((out / n).exists() for n in names)]


def _prepare(out: Path, cfg: PipelineConfig, text: str) -> bool:
    """Create the run folder or check it holds this very run; True when it is new.  Settings of
    stages that have not started may differ from the recorded ones (they are then updated)."""
    resolved = cfg.to_json()
    if out.exists() and not out.is_dir():
        raise PrunelabError(f"run folder {out} is a file; give another --out")
    if out.is_dir() and any(out.iterdir()):
        old = read_json(out / "config.json")
        if not isinstance(old, dict):
            raise PrunelabError(f"{out} exists and is not a prunelab run folder; choose another "
                                "--out")
        missing = object()
        diff = sorted((sec, k) for sec in set(old) | set(resolved)
                      for k in set(old.get(sec, {})) | set(resolved.get(sec, {}))
                      if old.get(sec, {}).get(k, missing) != resolved.get(sec, {}).get(k)
                      # a key added by a later prunelab, at its default: the same run
                      and not (k not in old.get(sec, {}) and
                               resolved.get(sec, {}).get(k) == default(sec, k)))
        if diff:
            started = _started(out)
            locked = {sec for st in started for sec in STAGE_SECTIONS[st]}
            bad = [f"[{sec}] {k}" for sec, k in diff if sec in locked and (sec, k) not in FREE]
            if bad:
                raise PrunelabError(f"{out} holds a run with other settings ({', '.join(bad)}); "
                                    "rerun with the same config to resume, or use another --out")
            log(f"settings of stages not run yet updated: "
                f"{', '.join(f'[{sec}] {k}' for sec, k in diff)}")
            atomic_write_text(out / "config.toml", text)
            atomic_write_text(out / "config.json", json.dumps(resolved, indent=1))
        return False
    env = environment(cfg)
    make_dir(out)
    atomic_write_text(out / "config.toml", text)
    atomic_write_text(out / "config.json", json.dumps(resolved, indent=1))
    atomic_write_text(out / "environment.json", json.dumps(env, indent=1))
    return True


def _note_session(out: Path, cfg: PipelineConfig) -> None:
    """A resumed run records each later session and whether the device fingerprint changed."""
    env = read_json(out / "environment.json") or {}
    now = environment(cfg)
    same = now["target_fingerprint"] == env.get("target_fingerprint")
    if not same:
        log("warning: the device fingerprint differs from the run's first session; latency "
            "figures of the two sessions are not comparable (see environment.json)")
    env.setdefault("sessions", []).append({"resumed": now["created"], "same_fingerprint": same,
                                           **({} if same else {"target_fingerprint":
                                                               now["target_fingerprint"]})})
    atomic_write_text(out / "environment.json", json.dumps(env, indent=1))


def _stage(cfg: PipelineConfig, i: int) -> str:
    """``[i/n]``: search, fine-tune, (int8: quantize,) verify."""
    n = 4 if cfg.target.precision == "int8" else 3
    return f"[{min(i, n)}/{n}]"


def _stage_search(cfg: PipelineConfig, out: Path, model, spec, data, target):
    from .searches.run import search_model

    log(f"{_stage(cfg, 1)} search: {cfg.search.method} on {cfg.model.ref}, "
        f"budget {cfg.search.budget}, "
        f"target {cfg.target.name}")
    return search_model(model, spec, data, cfg.search_config(), out / "search",
                        cfg.target.cache_dir, target=target,
                        record={"model": cfg.model.ref, "dataset": cfg.model.dataset},
                        parent_ref=cfg.model.ref, workers=cfg.run.workers,
                        ray_address=cfg.run.ray_address)


def _stage_finetune(cfg: PipelineConfig, out: Path, searched, model, spec, data):
    """Fine-tune a copy of the searched model (distilled from the unpruned ``model`` object, or
    the teacher the config names); returns the summary and the fine-tuned model."""
    import copy

    from .commands import ref_of, finetune_model
    from .io import load_into, read_spec, resolve
    from .train import TrainConfig

    f = cfg.finetune
    done = read_json(out / "finetune.json")
    if done is not None:
        log(f"{_stage(cfg, 2)} fine-tune: done earlier ({out / 'finetuned'})")
        return {**done, "resumed": True}, load_into(out / "finetuned", model)
    if f.epochs == 0:
        log(f"{_stage(cfg, 2)} fine-tune: skipped (epochs = 0)")
        return None, searched
    from .distributed import is_main, launch, world

    if f.nproc > 1 and world()[1] == 1:  # this process starts the ranks and waits for them
        log(f"{_stage(cfg, 2)} fine-tune: {f.epochs} epoch(s), teacher {f.teacher}, "
            f"{f.nproc} processes "
            "under torchrun")
        code = launch([str(out)], f.nproc, module="prunelab.ddp_stage")
        done = read_json(out / "finetune.json")
        if code or done is None:
            raise PrunelabError(f"the fine-tune under torchrun stopped (exit code {code}); run "
                                "the same command again to resume from its checkpoint")
        return done, load_into(out / "finetuned", model)
    log(f"{_stage(cfg, 2)} fine-tune: {f.epochs} epoch(s), teacher {f.teacher}")
    teacher = tspec = tid = None
    if f.teacher == "parent":
        teacher, tspec, tid = model, spec, ref_of(str(resolve(cfg.model.ref)))
    elif f.teacher != "none":
        from .commands import load

        teacher, tspec = load(f.teacher)
        tid = ref_of(f.teacher)
    folder = out / "search" / "model"
    tcfg = TrainConfig(epochs=f.epochs, lr=f.lr, batch_size=f.batch_size, seed=cfg.run.seed,
                       weight_decay=f.weight_decay, precision=f.precision, threads=f.threads)
    net = copy.deepcopy(searched)
    r = finetune_model(net, read_spec(folder), data, tcfg, str(out / "finetuned"), teacher,
                       tspec, tid, f.kd_temperature, f.kd_weight, f.recal_batches, f.recal_end,
                       ref_of(str(folder)), f"prunelab run ({out})")
    if is_main():  # under torchrun rank 0 alone writes
        atomic_write_text(out / "finetune.json", json.dumps({**r, "nproc": world()[1]},
                                                            indent=1))
    return r, net


INT8_FILES = {"final": "final.int8.onnx", "unpruned": "unpruned.int8.onnx"}


def _stage_quantize(cfg: PipelineConfig, out: Path, nets: dict, data) -> dict | None:
    """An int8 run (``[target] precision = "int8"``): the fine-tuned model and the unpruned one
    (int8 alone, the baseline every pruned cell must beat) quantized as the target runs them,
    calibrated on ``[target] calib_images`` training images; the files are the deploy
    artefacts and the graphs verify times.  None for an fp32 run."""
    import copy

    from .io import atomic_write_bytes
    from .quant import calibration_images, deploy_graph

    if cfg.target.precision != "int8":
        return None
    done = read_json(out / "quantize.json")
    if done is not None:
        log(f"{_stage(cfg, 3)} quantize: done earlier")
        return done
    t0 = time.perf_counter()
    log(f"{_stage(cfg, 3)} quantize: int8 on {cfg.target.name}, "
        f"{cfg.target.calib_images} calibration images ({cfg.target.calibration})")
    tcfg = cfg.target_config()
    images = calibration_images(data, tcfg.calib_images, cfg.run.seed)
    res = {}
    for k, fname in INT8_FILES.items():
        m, spec = nets[k]
        g, quant = deploy_graph(copy.deepcopy(m).cpu().eval(),
                                {"model": spec.name, "dataset": spec.dataset,
                                 "num_classes": spec.num_classes}, spec.input_shape, images, tcfg)
        atomic_write_bytes(out / fname, g)  # inside the run folder we made
        res[k] = {"onnx": str((out / fname).resolve()), "quantization": quant}
    res["seconds"] = time.perf_counter() - t0
    atomic_write_text(out / "quantize.json", json.dumps(res, indent=1))
    return res


def finetune_rank(out: Path) -> None:
    """One torchrun rank of the fine-tune stage of the run in ``out`` (``[finetune] nproc`` >
    1): the model, data and searched widths come from the run folder's resolved config and
    ``search/model``, as the starting process had them."""
    from .commands import data_for, load
    from .distributed import init_from_env
    from .io import load_into

    init_from_env()
    cfg = load_config(read_json(out / "config.json") or {})
    with trust_factory(cfg.model.factory):
        model, spec = load(cfg.model.ref, weights=cfg.model.weights, dataset=cfg.model.dataset,
                           data_dir=cfg.model.data_dir)
        data = data_for(spec, cfg.model.dataset, cfg.model.data_dir)
        _stage_finetune(cfg, out, load_into(out / "search" / "model", model), model, spec, data)


def row_labels(v: dict) -> dict[str, str]:
    """The rows of a run's ``verify.json`` or ``summary.json``, in order, with their labels."""
    if v.get("precision") == "int8":
        return {"unpruned": "unpruned fp32", "unpruned_int8": "int8 alone (unpruned)",
                "searched": "searched int8 (before fine-tune)",
                "final_fp32": "fine-tuned fp32 (before quantization)",
                "final": "final int8 (fine-tuned, quantized)"}
    return {"unpruned": "unpruned", "searched": "searched (before fine-tune)",
            "final": "final (no fine-tune)" if v.get("finetune_epochs") == 0
            else "final (fine-tuned)"}


def verdict(v: str, pruned: str = "pruned") -> str:
    """:func:`prunelab.latency.measure.compare`'s a/b verdict in the run's words."""
    return {"a faster": "unpruned faster", "b faster": f"{pruned} faster"}.get(v, v)


def _stage_verify(cfg: PipelineConfig, out: Path, nets: dict, refs: dict, data, target) -> dict:
    """Test top-1, MACs, params of the unpruned, searched and final models (objects) and their
    latency measured interleaved on ``target``."""
    from .latency.measure import Protocol, compare, measure
    from .latency.paired import interval_verdict
    from .metrics import macs_params
    from .searches.parallel import measuring_on
    from .train import evaluate

    done = read_json(out / "verify.json")
    if done is not None:
        log(f"{_stage(cfg, 4)} verify: done earlier")
        return done
    t0 = time.perf_counter()
    log(f"{_stage(cfg, 4)} verify: test top-1 and latency on {cfg.target.name} "
        f"({cfg.verify.repeats} interleaved runs after {cfg.verify.warmup} warm-up)")
    rows = {}
    shape = nets["unpruned"][1].input_shape
    for k, (m, spec) in nets.items():
        macs, params = macs_params(m, shape)
        rows[k] = {"model": spec.name, "ref": str(refs[k]),
                   "test_top1": evaluate(m, data.batches("test", 500)),
                   "val_top1": evaluate(m, data.batches("val", 500)),
                   "macs": macs, "params": params}
    order = ["unpruned", "searched", "final"]
    timed = {k: nets[k][0] for k in order}
    if cfg.target.precision == "int8":
        order, timed = _int8_rows(cfg, out, nets, refs, rows, data, target)
    times = measure(target, [timed[k] for k in order], shape,
                    Protocol(cfg.verify.warmup, cfg.verify.repeats,
                             cfg.verify.min_seconds, cfg.verify.sessions))
    for k, t in zip(order, times):
        rows[k].update(latency_ms=t.median_ms, latency_iqr_ms=t.iqr_ms, latency=t.to_json())
    cmp = compare(times[0], times[order.index("final")])
    est = _paired(cfg, target, timed["unpruned"], timed["final"], shape)
    res = {"rows": rows, "order": order, "target": cfg.target.name,
           "target_config": cfg.target_config().to_json(),
           "protocol": {"warmup": cfg.verify.warmup, "repeats": cfg.verify.repeats,
                        "min_seconds": cfg.verify.min_seconds,
                        "sessions": cfg.verify.sessions, "interleaved": True},
           "speedup": est.estimate if est else cmp["speedup"],
           "speedup_interval": [est.low, est.high] if est else None,
           "speedup_level": est.level if est else None,
           "speedup_estimate": est.to_json() if est else None,
           "speedup_verdict": verdict(interval_verdict(est.low, est.high) if est
                                      else cmp["verdict"], "final"),
           "noise": {"unpruned": cmp["noise_a"], "final": cmp["noise_b"]},
           "macs_kept": rows["final"]["macs"] / rows["unpruned"]["macs"],
           "params_kept": rows["final"]["params"] / rows["unpruned"]["params"],
           "top1_change": rows["final"]["test_top1"] - rows["unpruned"]["test_top1"],
           "dataset": data.name, "measured_on": measuring_on(target),
           "precision": cfg.target.precision, "seconds": time.perf_counter() - t0}
    atomic_write_text(out / "verify.json", json.dumps(res, indent=1))
    return res


def _int8_rows(cfg: PipelineConfig, out: Path, nets: dict, refs: dict, rows: dict, data,
               target) -> tuple[list[str], dict]:
    """An int8 run's verify rows: the fp32 graphs (the unpruned model is the budget's
    reference; the fine-tuned one before quantization) beside the int8 files as they deploy
    (``unpruned_int8``: int8 alone; ``searched``: the search's ``model.int8.onnx``; ``final``:
    ``final.int8.onnx``), each int8 top-1 computed by the runtime itself.  Returns the timing
    order and what is timed (fp32 graphs and int8 files, run as they are)."""
    from .quant import read_graph, runtime_top1
    from .targets._onnx import Graph, to_onnx

    import torch

    x = [torch.zeros(cfg.target.batch_size, *nets["unpruned"][1].input_shape)]
    files = {"unpruned_int8": out / INT8_FILES["unpruned"],
             "searched": out / "search" / "model.int8.onnx", "final": out / INT8_FILES["final"]}
    twin = {"unpruned_int8": "unpruned", "searched": "searched", "final": "final"}
    rows["final_fp32"] = {**rows["final"], "precision": "fp32"}
    rows["unpruned"]["precision"] = "fp32"
    timed = {"unpruned": Graph(to_onnx(nets["unpruned"][0].eval(), x), name="unpruned fp32"),
             "final_fp32": Graph(to_onnx(nets["final"][0].eval(), x), name="final fp32")}
    for k, f in files.items():
        g = read_graph(f)
        timed[k] = g
        rows[k] = {**rows[twin[k]], "ref": str(f), "precision": "int8",
                   "quantization": g.meta.get("quantization"), "judged_by": cfg.target.name,
                   "test_top1": runtime_top1(target, g.data, data.batches("test", 500)),
                   "val_top1": runtime_top1(target, g.data, data.batches("val", 500))}
    return ["unpruned", "unpruned_int8", "searched", "final_fp32", "final"], timed


def _paired(cfg: PipelineConfig, target, base, final, shape):
    """The final model's speed-up over the unpruned one, paired, with its 95% interval
    (:func:`prunelab.latency.paired.paired_speedup`: ``[verify] processes`` fresh processes);
    None on a remote target (timed on its node, unpaired)."""
    from .latency.measure import Protocol
    from .latency.paired import DECISION_PROTOCOL, paired_speedup

    if hasattr(target, "time_jobs"):
        return None
    v = cfg.verify
    n = 0 if getattr(target, "exact", False) else v.processes  # a formula: no process state
    proto = DECISION_PROTOCOL if n else Protocol(v.warmup, v.repeats, v.min_seconds,
                                                 max(v.sessions, 6))
    return paired_speedup(base, final, target, shape, proto, processes=n, seed=cfg.run.seed)


def run_pipeline(config: str | os.PathLike | dict, out: str | os.PathLike | None = None) -> dict:
    """Search, fine-tune and verify in one call; returns the run's ``summary.json`` object.

    ``config`` is a TOML path or the same content as a dict (see the module docstring); ``out``
    overrides ``[run] out``.  Rerun with the same config and folder to resume: finished stages
    are skipped, an interrupted one continues.
    """
    cfg = load_config(config)
    if isinstance(config, dict):
        text = to_toml(config)
    else:
        text = Path(config).read_text(encoding="utf-8")
    out = Path(out or cfg.run.out or Path("runs") / cfg.name)
    with FolderLock(out):  # one writer per run folder
        return _run(cfg, out, text)


def _run(cfg: PipelineConfig, out: Path, text: str) -> dict:
    t0 = time.perf_counter()
    fresh = _prepare(out, cfg, text)
    if not fresh:
        if (out / "summary.json").exists():
            log(f"{out} holds a finished run; showing its summary")
            return {**json.loads((out / "summary.json").read_text()), "resumed": True}
        log(f"resuming the run in {out}")
        _note_session(out, cfg)
    stage = "search"
    trusted = contextlib.ExitStack()  # the user's [model] factory, trusted for this run
    try:
        # the model, its data and the target are resolved once and handed to every stage
        from .commands import data_for, load
        from .io import read_spec
        from .searches.parallel import measuring_target

        trusted.enter_context(trust_factory(cfg.model.factory))
        model, spec = load(cfg.model.ref, weights=cfg.model.weights, dataset=cfg.model.dataset,
                           data_dir=cfg.model.data_dir)
        data = data_for(spec, cfg.model.dataset, cfg.model.data_dir)
        # the target's node on a Ray cluster that has one (search and verify), else here
        target = trusted.enter_context(measuring_target(
            cfg.target_config(), None, cfg.run.workers, cfg.run.ray_address))
        sr, searched_net = _stage_search(cfg, out, model, spec, data, target)
        searched = sr["chosen"]["path"]
        stage = "finetune"
        fr, final_net = _stage_finetune(cfg, out, searched_net, model, spec, data)
        final = fr["out"] if fr else searched
        final_spec = read_spec(Path(final))
        final_spec.provenance.setdefault("name", Path(final).name)
        searched_spec = read_spec(Path(searched))
        searched_spec.provenance.setdefault("name", Path(searched).name)
        stage = "quantize"
        qr = _stage_quantize(cfg, out, {"unpruned": (model, spec),
                                        "final": (final_net, final_spec)}, data)
        stage = "verify"
        vr = _stage_verify(cfg, out, {"unpruned": (model, spec),
                                      "searched": (searched_net, searched_spec),
                                      "final": (final_net, final_spec)},
                           {"unpruned": cfg.model.ref, "searched": searched, "final": final},
                           data, target)
    except KeyboardInterrupt:
        raise PrunelabError(f"run interrupted during {stage}; run the same command again to "
                            "resume") from None
    except PrunelabError:
        if fresh and not (out / "search").exists():  # failed before any work was kept
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        trusted.close()
    prev = read_json(out / "timing.json") or {"sessions": []}
    prev["sessions"].append(time.perf_counter() - t0)
    atomic_write_text(out / "timing.json", json.dumps(prev))
    summary = {
        "name": cfg.name, "out": str(out.resolve()), "model": cfg.model.ref,
        "method": sr["method"], "criterion": sr["criterion"], "budget": sr["budget"],
        "budget_met": sr["chosen"]["budget_met"], "target": cfg.target.name,
        "target_config": cfg.target_config().to_json(), "seed": cfg.run.seed,
        "evaluations": sr["evaluations"],
        "search_seconds": sr["search_seconds"], "search_total_seconds": sr["seconds"],
        "finetune_seconds": fr["seconds"] if fr else 0.0,
        "finetune_epochs": fr["epochs"] if fr else 0,
        "best_epoch": fr["best_epoch"] if fr else None,
        "teacher": (fr["teacher"] or {}).get("model") if fr else None,
        "verify_seconds": vr["seconds"], "wall_seconds": sum(prev["sessions"]),
        "rows": vr["rows"], "speedup": vr["speedup"], "speedup_verdict": vr["speedup_verdict"],
        "speedup_interval": vr.get("speedup_interval"),
        "landing": {k: sr["chosen"]["landing"][k] for k in ("status", "message")}
        if "landing" in sr["chosen"] else None,
        "macs_kept": vr["macs_kept"], "params_kept": vr["params_kept"],
        "top1_change": vr["top1_change"], "dataset": vr["dataset"],
        "protocol": vr["protocol"], "final_model": final, "searched_model": searched,
        "precision": cfg.target.precision,
        "final_int8": qr["final"]["onnx"] if qr else None}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
    return summary
