"""Commands on names, folders and files: every CLI command is one call here.

This layer resolves what a person types (a shipped model name, a model folder, a
``path/file.py:factory``, a data set name, an ``--out`` folder) into objects, calls the object
API (:mod:`prunelab.core`) and the engine, and writes folders with their provenance.  Nothing
below it imports it.

    >>> from prunelab import commands
    >>> model, spec = commands.load("resnet20.fmnist")
    >>> spec.num_classes, spec.input_shape
    (10, [1, 32, 32])
    >>> r = commands.prune("resnet20.fmnist", "l1", ratio=0.5, evaluate=False,
    ...                    repeats=3)                                     # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from ..data import Splits, load_dataset
from ..config import check_section, default
from ..errors import PrunelabError
from ..figures import check_timing, compare, measure  # noqa: F401  (measure: `prunelab eval`)
from ..io import (ModelSpec, _version, check_out, load_model, load_user_model, pruned_spec,
                  ref_of, save_model)
from ..lock import FolderLock
from ..metrics import macs_params
from ..train import TrainConfig, discard_checkpoint, evaluate as _top1
from ..train import train as _train

if TYPE_CHECKING:
    from ..searches import SearchConfig


def _ft(key: str):
    return default("finetune", key)


def load(ref: str, weights: str | None = None, dataset: str | None = None,
         data_dir: str | None = None, kwargs: dict | None = None) -> tuple[nn.Module, ModelSpec]:
    """Load a shipped model, a model folder, or ``path/file.py:factory`` (+ ``weights``).

    A user factory needs a dataset (to know input shape, classes and normalisation).
    """
    if ":" in str(ref) and str(ref).rpartition(":")[0].endswith(".py"):
        d = load_dataset(dataset or "fmnist", data_dir)
        return load_user_model(str(ref), weights, [d.in_channels, d.input_size, d.input_size],
                               d.num_classes, d.mean, d.std, d.name, kwargs)
    if weights:
        raise PrunelabError("--weights goes with a path/file.py:factory model, not a model folder")
    return load_model(ref)


def data_for(spec: ModelSpec, dataset: str | None = None, data_dir: str | None = None) -> Splits:
    """The data set a model was trained on (or the one named), checked against the model."""
    name = dataset or spec.dataset or "fmnist"
    d = load_dataset(name, data_dir)
    shape = list(d.input_shape)
    if shape != list(spec.input_shape) or spec.num_classes < d.num_classes:
        c, h, w = shape
        raise PrunelabError(f"dataset {name} ({c}x{h}x{w} images, {d.num_classes} classes) does "
                            f"not fit model {spec.name} (input "
                            f"{'x'.join(map(str, spec.input_shape))}, {spec.num_classes} "
                            "classes); pass the dataset it was trained on, at its image size")
    if tuple(spec.mean) != tuple(d.mean) and spec.dataset == name:
        d = dataclasses.replace(d, mean=tuple(spec.mean), std=tuple(spec.std))
    return d


def prune(ref: str, criterion: str = "l1", ratio: float | None = None,
          keep: dict[str, int] | None = None, out: str | None = None, round_to: int = 1,
          dataset: str | None = None, data_dir: str | None = None, batch_size: int = 1,
          threads: int | None = None, repeats: int = 50, criterion_options: dict | None = None,
          evaluate: bool = True, weights: str | None = None, recal_batches: int = 20,
          overwrite: bool = False) -> dict:
    """Prune a model, save it (when ``out``), and report before/after top-1, MACs, params, latency.

    No fine-tuning happens here: the figures show what the criterion alone leaves, after BN
    statistics are re-estimated on ``recal_batches`` training batches (0 = keep the old ones;
    weights are never updated).
    """
    from ..criteria import make_criterion
    from ..pruning import prune as _prune

    if out:
        check_out(out, "model", overwrite)
    check_timing(batch_size, threads, repeats)
    if not isinstance(round_to, int) or isinstance(round_to, bool) or round_to < 1:
        raise PrunelabError(f"--round-to must be an integer of at least 1, got {round_to}")
    if recal_batches < 0:
        raise PrunelabError("--recal-batches must be >= 0")
    if ratio is not None and not 0 < ratio < 1:
        raise PrunelabError(f"--ratio {ratio} is outside (0, 1); give the fraction of filters "
                            "to remove")
    try:  # built first: whether it reads data depends on its options (tp:importance=taylor)
        crit = make_criterion(criterion, **(criterion_options or {}))
    except TypeError as e:
        raise PrunelabError(f"criterion {criterion} does not take these options ({e})") from None
    model, spec = load(ref, weights=weights, dataset=dataset, data_dir=data_dir)
    need = evaluate or recal_batches > 0 or crit.needs_data
    data = data_for(spec, dataset, data_dir) if need else None
    res = _prune(model, crit, ratio=ratio, keep=keep, input_shape=spec.input_shape, data=data,
                 num_classes=spec.num_classes, round_to=round_to)
    if recal_batches:
        from ..train import recalibrate_bn

        recalibrate_bn(res.model, data.batches("train", 128, shuffle=True), recal_batches)
    pspec = pruned_spec(spec, Path(out).name if out else f"{spec.name}-pruned", ref, {
        "criterion": criterion, "criterion_options": criterion_options or {}, "ratio": ratio,
        "round_to": round_to, "keep": res.keep, "bn_recalibration_batches": recal_batches,
        "widths_before": res.widths_before})
    if out:
        save_model(res.model, pspec, out, overwrite)
    rows = compare([model, res.model], [spec, pspec], data if evaluate else None, batch_size,
                   threads, repeats)
    result = {**rows[1], "base": rows[0], "criterion": criterion, "ratio": ratio,
              "keep": res.keep, "score_seconds": res.score_seconds,
              "bn_recalibration_batches": recal_batches,
              "out": str(Path(out).resolve()) if out else None}
    result["macs_removed"] = 1 - result["macs"] / result["base"]["macs"]
    result["measured_speedup"] = result["base"]["latency_ms"] / result["latency_ms"]
    return result


def train(arch: str, out: str, dataset: str = "fmnist", data_dir: str | None = None,
          width: float = 1.0, cfg: TrainConfig | None = None, factory_kwargs: dict | None = None,
          command: str | None = None, overwrite: bool = False) -> dict:
    """Train a zoo architecture (or ``path/file.py:factory``) from scratch into a model folder.

    Resumable: an interrupted run leaves ``OUT.ckpt/`` and the same command continues from it.
    """
    from ..models import MODELS, build

    cfg = cfg or TrainConfig()
    check_out(out, "model", overwrite)
    d = load_dataset(dataset, data_dir)
    if ":" in arch and arch.rpartition(":")[0].endswith(".py"):
        model, spec = load_user_model(arch, None, [d.in_channels, d.input_size, d.input_size],
                                      d.num_classes, d.mean, d.std, d.name, factory_kwargs)
    else:
        MODELS.get(arch)
        model = build(arch, in_channels=d.in_channels, num_classes=d.num_classes, width=width)
        spec = ModelSpec.for_zoo(arch, d.in_channels, d.num_classes, width, d.input_size,
                                 d.mean, d.std, d.name)
    ckpt = f"{out.rstrip('/')}.ckpt"
    t0 = time.perf_counter()
    with FolderLock(out):  # one writer per output (and its checkpoint)
        hist = _train(model, d, cfg, checkpoint=ckpt, desc=f"train {arch}")
    top1 = _top1(model, d.batches("test", 500))
    spec.provenance = {"name": Path(out).name, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                       "command": command,
                       "prunelab": _version(), "trained": {
                           "config": cfg.__dict__, "dataset": d.name, "test_top1": top1,
                           "history": hist, "seconds": sum(h["seconds"] for h in hist),
                           "torch": torch.__version__, "machine": platform.processor() or
                           platform.machine(), "threads": torch.get_num_threads()}}
    save_model(model, spec, out, overwrite)
    discard_checkpoint(ckpt)
    return {"model": spec.name, "out": str(Path(out).resolve()), "top1": top1,
            "val_top1": hist[-1]["val_top1"] if hist else None,
            "seconds": time.perf_counter() - t0, "epochs": cfg.epochs}


def _parent_teacher(spec: ModelSpec, folder: Path | None) -> str | None:
    """The unpruned model a pruned one came from, when it can still be found."""
    from ..io import resolve

    prov = spec.provenance
    cands = [prov.get("parent_ref"), prov.get("parent")]
    if folder is not None and prov.get("parent"):
        cands.append(str(folder.parent / prov["parent"]))  # a sibling folder
    for c in cands:
        if not c:
            continue
        try:
            return str(resolve(c))
        except PrunelabError:
            continue
    return None


def finetune(ref: str, epochs: int, out: str, teacher: str | None = "parent",
             kd_temperature: float = _ft("kd_temperature"), kd_weight: float = _ft("kd_weight"),
             lr: float = _ft("lr"), batch_size: int = _ft("batch_size"), seed: int = 0,
             weight_decay: float = _ft("weight_decay"), dataset: str | None = None,
             data_dir: str | None = None, recal_batches: int = _ft("recal_batches"),
             recal_end: bool = _ft("recal_end"), precision: str = _ft("precision"),
             threads: int | None = None, weights: str | None = None,
             command: str | None = None, overwrite: bool = False) -> dict:
    """Fine-tune a (pruned) model with SGD + cosine and optional distillation from the unpruned one.

    ``teacher``: ``"parent"`` (default) distils from the model recorded as the pruned model's
    parent when it can be found (a shipped name or an existing folder), else trains without one;
    a model reference distils from that model; ``None`` turns distillation off.  BN statistics are
    re-estimated on ``recal_batches`` training batches first (and, with ``recal_end``, again at
    the end when that does not lower validation top-1); the epoch with the best validation top-1
    is kept (epoch 0, the starting weights, when none beats them); test top-1 is computed once, at
    the end.  Resumable: an interrupted run leaves ``OUT.ckpt/`` and the same command continues
    from it (other options refuse that checkpoint).  The name/folder edge over
    :func:`finetune_model`.
    """
    if not out:
        raise PrunelabError("--out is required: the folder to write the fine-tuned model to")
    check_section("finetune", dict(  # every number, before any work (the one definition)
        epochs=epochs, lr=lr, batch_size=batch_size, kd_weight=kd_weight,
        kd_temperature=kd_temperature, weight_decay=weight_decay, recal_batches=recal_batches,
        recal_end=recal_end, precision=precision, threads=threads), style="kwargs")
    cfg = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                      weight_decay=weight_decay, precision=precision, threads=threads)
    check_out(out, "model", overwrite)
    model, spec = load(ref, weights=weights, dataset=dataset, data_dir=data_dir)
    folder = Path(str(ref)) if Path(str(ref)).is_dir() else None
    teacher_ref = None
    if teacher == "parent":
        teacher_ref = _parent_teacher(spec, folder)
        if teacher_ref is None and spec.provenance.get("parent"):
            from ..ui import log

            log(f"parent {spec.provenance['parent']!r} of {spec.name} not found; fine-tuning "
                "without distillation (pass --teacher to name it)")
    elif teacher:
        teacher_ref = teacher
    if kd_weight == 0:
        teacher_ref = None
    tmodel = tspec = None
    if teacher_ref is not None:
        tmodel, tspec = load(teacher_ref)
    data = data_for(spec, dataset, data_dir)
    return finetune_model(model, spec, data, cfg, out, tmodel, tspec,
                          ref_of(teacher_ref) if teacher_ref is not None else None,
                          kd_temperature, kd_weight, recal_batches, recal_end, ref_of(ref),
                          command, overwrite)


def finetune_model(model: nn.Module, spec: ModelSpec, data, cfg: TrainConfig, out: str,
                   teacher: nn.Module | None = None, teacher_spec: ModelSpec | None = None,
                   teacher_id: str | None = None, kd_temperature: float = _ft("kd_temperature"),
                   kd_weight: float = _ft("kd_weight"),
                   recal_batches: int = _ft("recal_batches"), recal_end: bool = _ft("recal_end"),
                   model_id: str | None = None, command: str | None = None,
                   overwrite: bool = False) -> dict:
    """:func:`prunelab.core.finetune` into a model folder: fine-tunes ``model`` (its weights are
    replaced by the tuned ones), saves it to ``out`` with the provenance (resumable from
    ``OUT.ckpt/``) and returns the summary; ``teacher`` is used as given (not modified)."""
    check_out(out, "model", overwrite)
    tmodel, tspec = (teacher, teacher_spec) if kd_weight > 0 else (None, None)
    if tmodel is not None:
        tspec = tspec or spec
        if list(tspec.input_shape) != list(spec.input_shape) or \
                tspec.num_classes != spec.num_classes:
            raise PrunelabError(
                f"teacher {tspec.name} (input {tuple(tspec.input_shape)}, {tspec.num_classes} "
                f"classes) does not match {spec.name} (input {tuple(spec.input_shape)}, "
                f"{spec.num_classes} classes); pass the unpruned model with --teacher or use "
                "--no-teacher")
    else:
        teacher_id = None
    from ..distributed import is_main

    with FolderLock(out) if is_main() else contextlib.nullcontext():  # one writer per output
        return _finetune_locked(model, spec, data, cfg, out, tmodel, tspec, teacher_id,
                                kd_temperature, kd_weight, recal_batches, recal_end, model_id,
                                command, overwrite)


def _finetune_locked(model, spec, data, cfg, out, tmodel, tspec, teacher_id, kd_temperature,
                     kd_weight, recal_batches, recal_end, model_id, command, overwrite) -> dict:
    from ..core import finetune as _finetune
    from ..distributed import is_main

    before = _top1(model, data.batches("val", 500))
    ckpt = f"{str(out).rstrip('/')}.ckpt"
    model_id = model_id or spec.name
    extra = {"model": model_id, "teacher": teacher_id,
             "kd_weight": kd_weight if tmodel is not None else 0.0,
             "kd_temperature": kd_temperature, "recal_end": recal_end}
    t0 = time.perf_counter()
    r = _finetune(model, data=data, teacher=tmodel, epochs=cfg.epochs, lr=cfg.lr,
                  batch_size=cfg.batch_size, kd_weight=kd_weight,
                  kd_temperature=kd_temperature, weight_decay=cfg.weight_decay, seed=cfg.seed,
                  recal_batches=recal_batches, recal_end=recal_end, precision=cfg.precision,
                  threads=cfg.threads, checkpoint=ckpt, extra=extra,
                  desc=f"finetune {spec.name}")
    model.load_state_dict(r.model.state_dict())  # the caller's model holds the tuned weights
    recal_val = r.before_score if recal_batches else None
    seconds = time.perf_counter() - t0
    macs, params = macs_params(model, spec.input_shape)
    tinfo = ({"model": tspec.name, "ref": teacher_id, "val_top1": r.teacher_score}
             if tmodel is not None else None)
    prov = dict(spec.provenance)
    name = Path(out).name
    finetuned = {
        "from": spec.name, "from_ref": model_id, "config": dataclasses.asdict(cfg),
        "teacher": tinfo, "kd_weight": kd_weight if tmodel is not None else 0.0,
        "kd_temperature": kd_temperature, "bn_recalibration_batches": recal_batches,
        "final_bn_recalibration": r.final_recal, "dataset": data.name,
        "before_val_top1": before, "recal_val_top1": recal_val,
        "best_epoch": r.best_epoch, "val_top1": r.score, "test_top1": r.test_top1,
        "history": r.history, "seconds": seconds,
        "train_seconds": sum(h["seconds"] for h in r.history), "command": command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "prunelab": _version(),
        "torch": torch.__version__, "threads": torch.get_num_threads()}
    if "finetuned" in prov:
        finetuned["previous"] = prov["finetuned"]
    prov.update(name=name, finetuned=finetuned)
    fspec = ModelSpec(**{**spec.__dict__, "provenance": prov})
    if is_main():  # under torchrun DDP rank 0 alone writes
        save_model(model, fspec, out, overwrite)
        discard_checkpoint(ckpt)
    return {"model": name, "from": spec.name, "out": str(Path(out).resolve()),
            "epochs": cfg.epochs, "lr": cfg.lr, "batch_size": cfg.batch_size, "seed": cfg.seed,
            "teacher": tinfo, "kd_weight": finetuned["kd_weight"],
            "kd_temperature": kd_temperature, "bn_recalibration_batches": recal_batches,
            "final_bn_recalibration": r.final_recal,
            "before_val_top1": before, "recal_val_top1": recal_val,
            "after_val_top1": r.score, "best_epoch": r.best_epoch, "test_top1": r.test_top1,
            "top1": r.test_top1, "macs": macs, "params": params, "seconds": seconds,
            "history": r.history}


def check_export(path: str, batch_size: int = 1, dynamic_batch: bool = False,
                 overwrite: bool = False, precision: str = "fp32",
                 target: str = "onnxruntime-cpu", calibration: str = "minmax",
                 calib_images: int = 256, int8_types: str = "auto", int8_layers: str = "all"
                 ) -> None:
    """:func:`export_onnx`'s options, checked before a model or data set is opened."""
    from ..targets import TargetConfig

    if batch_size < 1:
        raise PrunelabError("--batch-size must be at least 1")
    if precision == "int8":
        TargetConfig(target, batch_size=batch_size, precision="int8", calibration=calibration,
                     calib_images=calib_images, int8_types=int8_types, int8_layers=int8_layers)
        if dynamic_batch:
            raise PrunelabError("an int8 graph is exported with the fixed batch it is timed "
                                "with; drop --dynamic-batch")
    check_out(path, "file", overwrite, "--onnx")


def export_onnx(ref, path: str, batch_size: int = 1, opset: int = 17,
                dynamic_batch: bool = False, overwrite: bool = False, precision: str = "fp32",
                target: str = "onnxruntime-cpu", calibration: str = "minmax",
                calib_images: int = 256, int8_types: str = "auto", dataset: str | None = None,
                data_dir: str | None = None, data=None, int8_layers: str = "all") -> dict:
    """Export a model (a shipped name or folder, or an opened ``(model, spec)``) to ONNX: the
    graph the ONNX-based targets time (see :func:`prunelab.core.export_onnx`);
    ``precision="int8"`` writes the int8 graph ``target`` times, calibrated on ``calib_images``
    training images of ``data`` (default: the model's data set, or ``dataset``)."""
    from ..core import export_onnx as _export

    check_export(path, batch_size, dynamic_batch, overwrite, precision, target, calibration,
                 calib_images, int8_types, int8_layers)
    model, spec = ref if isinstance(ref, tuple) else load(ref)
    images = None
    if precision == "int8":
        from ..quant import calibration_images

        images = calibration_images(data or data_for(spec, dataset, data_dir), calib_images)
    r = _export(model, path, torch.zeros(batch_size, *spec.input_shape), opset=opset,
                dynamic_batch=dynamic_batch, overwrite=overwrite, precision=precision,
                calibration_images=images, target=target, calibration=calibration,
                int8_types=int8_types, metadata=_graph_meta(spec), int8_layers=int8_layers)
    return {"model": spec.name, **r}


def _graph_meta(spec: ModelSpec) -> dict:
    """What an exported file says of its model (read back by :func:`prunelab.quant.read_graph`)."""
    return {"model": spec.name, "dataset": spec.dataset, "num_classes": spec.num_classes,
            "mean": list(spec.mean), "std": list(spec.std)}


def evaluate_on_target(ref, cfg, dataset: str | None = None, data_dir: str | None = None,
                       sessions: int = 6, seed: int = 0) -> dict:
    """Top-1 on the test split computed by the target's runtime itself, and the latency there.

    ``ref`` is a model (name, folder, or an opened ``(model, spec)``) or an ONNX file (as it is:
    e.g. an int8 file from ``prunelab export --precision int8``).  For a model with ``cfg``'s
    precision int8, the int8 graph (calibrated on ``cfg.calib_images`` training images) is
    judged beside the fp32 graph: both top-1s, and the int8 graph's speed-up over the fp32 graph
    with a 95% interval from ``sessions`` paired sessions in this process."""
    from ..core import int8_graph
    from ..latency.measure import Protocol
    from ..latency.measure import measure as timed
    from ..latency.paired import STEP_PROTOCOL, interval_verdict, paired_speedup
    from ..quant import calibration_images, read_graph, runtime_top1
    from ..targets import make_target
    from ..targets._onnx import Graph, to_onnx

    target = make_target(cfg)
    if not hasattr(target, "infer"):
        raise PrunelabError(f"top-1 in the runtime needs an ONNX-based target "
                            f"(onnxruntime-cpu, openvino-cpu), not {cfg.target}")
    if isinstance(ref, (str, Path)) and str(ref).endswith(".onnx"):
        g = read_graph(ref)
        shape = g.meta["input_shape"]
        if shape[0] != cfg.batch_size:
            raise PrunelabError(f"{g.name} was exported with batch {shape[0]}; pass "
                                f"--batch-size {shape[0]}")
        name = dataset or g.meta.get("dataset")
        if not name:
            raise PrunelabError(f"{g.name} does not say its data set; pass --dataset")
        data = load_dataset(name, data_dir)
        if list(data.input_shape) != list(shape[1:]):
            raise PrunelabError(f"{g.name} takes {shape[1:]} inputs; data set {data.name} has "
                                f"{list(data.input_shape)}")
        top1 = runtime_top1(target, g.data, data.batches("test", 500))
        t = timed(target, [g], shape[1:], Protocol())[0]
        return {"model": g.name, "target": cfg.target, "precision": g.meta.get("precision", "?"),
                "quantization": g.meta.get("quantization"), "top1": top1,
                "latency_ms": t.median_ms, "latency": t.to_json()}
    model, spec = ref if isinstance(ref, tuple) else load(ref)
    data = data_for(spec, dataset, data_dir)
    x = torch.zeros(cfg.batch_size, *spec.input_shape)
    fp32 = Graph(to_onnx(model.eval(), [x]), name=f"{spec.name} fp32")
    out = {"model": spec.name, "target": cfg.target, "precision": cfg.precision,
           "fp32_top1": runtime_top1(target, fp32.data, data.batches("test", 500))}
    if cfg.precision != "int8":
        t = timed(target, [fp32], spec.input_shape, Protocol())[0]
        return {**out, "top1": out["fp32_top1"], "latency_ms": t.median_ms,
                "latency": t.to_json()}
    data8, quant = int8_graph(model, x, calibration_images(data, cfg.calib_images, seed),
                              cfg.target, cfg.calibration, cfg.int8_types, cfg.threads,
                              cfg.int8_layers)
    int8 = Graph(data8, name=f"{spec.name} int8")
    e = paired_speedup(fp32, int8, target, spec.input_shape,
                       dataclasses.replace(STEP_PROTOCOL, sessions=sessions), processes=0,
                       seed=seed)
    return {**out, "top1": runtime_top1(target, data8, data.batches("test", 500)),
            "quantization": quant, "latency_ms": e.candidate_ms, "fp32_latency_ms": e.base_ms,
            "speedup": e.estimate, "speedup_interval": [e.low, e.high],
            "speedup_verdict": interval_verdict(e.low, e.high), "paired": e.to_json()}


def environment() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count()}


def run_search(ref: str, cfg: SearchConfig, out: str | Path, cache_dir: str | None = None,
               dataset: str | None = None, data_dir: str | None = None, workers: int = 0,
               ray_address: str | None = None) -> dict:
    """Run (or resume) one search on model ``ref`` (a shipped name or model folder: the CLI's
    edge); returns the ``result.json`` object.  :func:`prunelab.searches.search_model` is the same on objects."""
    from ..searches.run import method_entry, search_model

    method_entry(cfg)
    model, spec = load(ref, dataset=dataset, data_dir=data_dir)  # a factory: the data's shape
    data = data_for(spec, dataset, data_dir)
    return search_model(model, spec, data, cfg, out, cache_dir,
                        record={"model": str(ref), "dataset": dataset}, parent_ref=str(ref),
                        workers=workers, ray_address=ray_address)[0]
