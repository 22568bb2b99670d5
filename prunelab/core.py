"""The object core: your ``nn.Module`` and your ``DataLoader``s in, objects out.

Names, folders and files belong to the edges (the CLI, ``prunelab run CONFIG.toml``); everything
they do runs through these functions on objects.  The user's module is never modified or moved:
every step works on a copy.

    import prunelab as pl
    result = pl.search(model, example_inputs, train=train_loader, val=val_loader,
                       target="onnxruntime-cpu", budget="speedup=2", method="nsga2",
                       criterion="deeplift", out="runs/mine")           # out optional
    pruned = result.model                                             # widths as chosen
    tuned = pl.finetune(pruned, teacher=model, train=train_loader, val=val_loader, epochs=4)
    pl.save(tuned.model, "runs/mine/final"); pl.export_onnx(tuned.model, "mine.onnx",
                                                             example_inputs)

Data is any iterable of ``(inputs, labels)`` batches (a ``DataLoader``), or an
``eval_fn(model) -> float`` (higher is better) for tasks that are not top-1 classification; the
registered data sets (:func:`prunelab.data.load_dataset`) are one way to make such batches.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import torch
import torch.nn as nn

from .errors import PrunelabError

EvalFn = Callable[[nn.Module], float]

if TYPE_CHECKING:
    from .criteria import Criterion


# ----------------------------------------------------------------------------- results

@dataclass
class SearchResult:
    """What :func:`search` found: the chosen pruned model and the evidence."""

    model: nn.Module                 # the chosen pruned model (a new module)
    keep: dict[str, int]             # per-group widths chosen
    widths_before: dict[str, int]    # per-group widths of the unpruned model
    chosen: dict[str, Any]           # score, measured latency and speed-up, MACs, params, ...
    base: dict[str, Any]             # the unpruned model's figures, measured alongside
    pareto: list[dict]               # the measured Pareto front (latency vs score)
    method: str
    criterion: str
    budget: str
    target: str
    out: str | None                  # the search folder (None: a temporary one, removed)
    raw: dict = field(default_factory=dict, repr=False)  # the whole result.json

    @property
    def speedup(self) -> float:
        return self.chosen["measured_speedup"]

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("model")
        return d


@dataclass
class FinetuneResult:
    """What :func:`finetune` did: the tuned model (a new module) and its history."""

    model: nn.Module
    history: list[dict]
    best_epoch: int | None
    before_score: float | None       # validation score of the input (after BN re-estimation)
    score: float | None              # validation score of the returned model
    test_top1: float | None
    teacher_score: float | None
    seconds: float
    config: dict
    final_recal: dict | None = None  # the BN re-estimate after the last epoch, and if it was kept

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("model")
        return d


# ----------------------------------------------------------------------------- helpers

def _d(section: str, key: str):
    """A keyword default, read from its one definition (:mod:`prunelab.config`)."""
    from .config import default

    return default(section, key)


def _criterion_spec(crit) -> str:
    """How a Criterion object is named in a search folder's record (its name and settings)."""
    import json

    opts = ":".join(f"{k}={json.dumps(v)}" for k, v in sorted(crit.config().items())
                    if isinstance(v, (int, float, str, bool)))
    return f"{crit.name}" + (f":{opts}" if opts else "") + f" ({type(crit).__qualname__})"

def _input_shape(example_inputs) -> tuple[int, ...]:
    if isinstance(example_inputs, torch.Tensor):
        if example_inputs.dim() < 2:
            raise PrunelabError("example_inputs must be a batch, e.g. torch.randn(1, 3, 32, 32)")
        return tuple(int(d) for d in example_inputs.shape[1:])
    if isinstance(example_inputs, (tuple, list)) and example_inputs and \
            all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in example_inputs):
        return tuple(example_inputs)
    raise PrunelabError("example_inputs must be a tensor batch (torch.randn(1, 3, 32, 32)) or one "
                        "input's shape ((3, 32, 32))")


def _check_module(model, what: str = "model") -> None:
    if not isinstance(model, nn.Module):
        raise PrunelabError(f"{what} must be a torch.nn.Module, got {type(model).__name__}")


def _copy(model: nn.Module) -> nn.Module:
    """A CPU copy in eval mode (the user's module keeps its device, mode and parameters)."""
    return copy.deepcopy(model).cpu().eval()


def _num_outputs(net: nn.Module, input_shape, classifier: bool) -> int:
    """The width of the model's output; with ``classifier`` it must be (batch, classes)."""
    with torch.no_grad():
        out = net(torch.zeros(2, *input_shape))
    if not isinstance(out, torch.Tensor):
        raise PrunelabError(f"the model returns {type(out).__name__}, not a tensor; wrap it so "
                            "forward() returns the logits (or pass eval_fn=)")
    if classifier and out.dim() != 2:
        raise PrunelabError(f"the model's output has shape {tuple(out.shape)}; top-1 needs "
                            "(batch, classes) logits: flatten them, or pass eval_fn=")
    return int(out.shape[1]) if out.dim() >= 2 else 1


def module_spec(model: nn.Module, input_shape, num_classes: int, mean=None, std=None,
                name: str | None = None):
    """The :class:`~prunelab.io.ModelSpec` of a user's module: the class is recorded, never
    imported (a folder saved from it opens with :func:`load` given the module)."""
    from .io import ModelSpec

    c = input_shape[0]
    cls = type(model)
    return ModelSpec({"kind": "module", "class": f"{cls.__module__}.{cls.__qualname__}"},
                     list(input_shape), list(mean or [0.0] * c), list(std or [1.0] * c),
                     num_classes, None, provenance={"name": name or cls.__name__})


def _layer_names(model: nn.Module, layers: Sequence) -> tuple[str, ...]:
    names = {m: n for n, m in model.named_modules()}
    out = []
    for layer in layers:
        if isinstance(layer, str):
            if layer not in dict(model.named_modules()):
                raise PrunelabError(f"ignored layer {layer!r} is not a module of the model; name "
                                    "it as in model.named_modules()")
            out.append(layer)
        elif layer in names:
            out.append(names[layer])
        else:
            raise PrunelabError("ignored_layers must be names or modules of the model")
    return tuple(out)


# ----------------------------------------------------------------------------- search

def search(model: nn.Module, example_inputs, *, train: Iterable | None = None,
           val: Iterable | None = None, eval_fn: EvalFn | None = None,
           target: str = _d("target", "name"), budget: str = _d("search", "budget"),
           method: str = "nsga2", criterion: "str | Criterion | None" = None,
           out: str | Path | None = None, seed: int = 0, options: dict | None = None,
           ignored_layers: Sequence = (), recal_batches: int = _d("search", "recal_batches"),
           val_images: int = _d("search", "val_images"),
           measure_front: int = _d("search", "measure_front"),
           fidelity: str = _d("search", "fidelity"),
           score_precision: str = _d("search", "score_precision"),
           decision_processes: int = _d("search", "decision_processes"),
           batch_size: int = _d("target", "batch_size"), threads: int = _d("target", "threads"),
           precision: str = _d("target", "precision"),
           calibration: str = _d("target", "calibration"),
           calib_images: int = _d("target", "calib_images"),
           int8_types: str = _d("target", "int8_types"),
           int8_layers: str = _d("target", "int8_layers"),
           cache_dir: str | None = None,
           mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
           name: str | None = None, workers: int = 0,
           ray_address: str | None = None) -> SearchResult:
    """Search per-layer widths of ``model`` for ``budget`` on ``target``; see the module doc.

    ``train`` feeds BN re-estimation of each candidate (``recal_batches`` batches) and the
    data-driven criteria; ``val`` scores candidates by top-1 on ``val_images`` images, or
    ``eval_fn(model)`` scores them.  ``ignored_layers`` (names or modules) are never pruned, nor
    are the layers feeding the output.  ``out`` keeps the search folder (log, Pareto front, chosen
    model) and makes the search resumable; without it a temporary folder is used and removed.
    ``mean``/``std``: how the loaders normalise (a black-image DeepLIFT reference).
    ``workers``: evaluate batches of candidates on that many Ray workers (``ray_address``:
    join a running cluster); same candidates, same choice as without.  ``criterion``: a
    registered name (``"deeplift"``, ``"tp:importance=lamp"``) or a
    :class:`~prunelab.criteria.Criterion` object of your own.  The defaults are ``[search]``'s
    and ``[target]``'s (:mod:`prunelab.config`).  ``precision="int8"`` (onnxruntime-cpu,
    openvino-cpu) searches int8 models against a budget relative to the unpruned fp32 model and
    writes the int8 graph (calibrated on ``calib_images`` training images) to
    ``out/model.int8.onnx``; pass ``out`` to keep it."""
    from .searches import SearchConfig
    from .searches.run import search_model
    from .targets import TargetConfig

    _check_module(model)
    shape = _input_shape(example_inputs)
    if eval_fn is None and val is None:
        raise PrunelabError("pass val= (a loader of (inputs, labels) batches) or eval_fn= "
                            "(model -> score) to score the candidates")
    if eval_fn is not None and not callable(eval_fn):
        raise PrunelabError("eval_fn must be a callable model -> float")
    from .criteria import Criterion, build_criterion
    from .searches.run import method_entry

    crit_obj = criterion if isinstance(criterion, Criterion) else None
    if criterion is not None and crit_obj is None and not isinstance(criterion, str):
        raise PrunelabError("criterion must be a registered name (e.g. \"l1\") or a "
                            f"prunelab Criterion object, got {type(criterion).__name__}")
    cfg = SearchConfig(method=method, criterion=_criterion_spec(crit_obj) if crit_obj else
                       criterion, target=TargetConfig(
                           target, batch_size=batch_size, threads=threads, precision=precision,
                           calibration=calibration, calib_images=calib_images,
                           int8_types=int8_types, int8_layers=int8_layers),
                       budget=budget, seed=seed, recal_batches=recal_batches,
                       val_images=val_images, measure_front=measure_front,
                       decision_processes=decision_processes, fidelity=fidelity,
                       score_precision=score_precision,
                       options=dict(options or {}))
    crit = crit_obj or build_criterion(cfg.criterion or method_entry(cfg).meta["criterion"],
                                       seed=seed)
    if train is None and (recal_batches > 0 or crit.needs_data):
        raise PrunelabError(f"pass train= (a loader): BN re-estimation (recal_batches="
                            f"{recal_batches}) and criterion {crit.name} reads training batches; "
                            "or set recal_batches=0 with a criterion that needs no data (l1)")
    net = _copy(model)
    ignored = _layer_names(net, [n if isinstance(n, str) else
                                 {m: k for k, m in model.named_modules()}.get(n, n)
                                 for n in ignored_layers])
    classes = _num_outputs(net, shape, classifier=eval_fn is None)
    spec = module_spec(net, shape, classes, mean, std, name)
    from .data.loaders import LoaderData

    data = LoaderData(train, val, mean=tuple(mean) if mean else None,
                      std=tuple(std) if std else None, num_classes=classes)
    tmp = None
    if out is None:
        tmp = Path(tempfile.mkdtemp(prefix="prunelab-search-"))
        folder = tmp / "search"
    else:
        folder = Path(out)
    try:
        res, pruned = search_model(net, spec, data, cfg, folder, cache_dir, eval_fn=eval_fn,
                                   ignored=ignored, record={"model": spec.arch["class"],
                                                            "input_shape": list(shape)},
                                   workers=workers, ray_address=ray_address,
                                   criterion=crit_obj)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    chosen = res["chosen"]
    return SearchResult(pruned, {**res["chosen"]["keep"]},
                        dict(res.get("method_info", {}).get("widths_before", {}))
                        or _widths(net, shape, ignored), chosen, res["base"], res["pareto"],
                        res["method"], res["criterion"], res["budget"], res["target"],
                        None if tmp is not None else str(folder.resolve()),
                        {k: v for k, v in res.items() if k != "out"})


def _widths(net: nn.Module, shape, ignored) -> dict[str, int]:
    from .pruning import prunable_groups

    return {g.name: g.width for g in prunable_groups(net, shape, None, ignored)[1]}


# ----------------------------------------------------------------------------- one-shot

def prune(model: nn.Module, example_inputs, *, criterion: "str | Criterion" = "l1",
          ratio: float | None = None, keep: dict[str, int] | None = None, round_to: int = 1,
          train: Iterable | None = None, ignored_layers: Sequence = (),
          recal_batches: int = 0):
    """Prune a copy of ``model`` in one shot: one ``ratio`` for every group, or exact per-group
    ``keep`` counts (group names as :func:`prunelab.pruning.prunable_groups` gives them).  With a
    data-free criterion (``l1``, ``l2``, ``fp-omp``, ...) no data is needed at all; a
    data-driven one (``deeplift``, ``taylor``) reads batches from ``train``, which also feeds
    ``recal_batches`` batches of BN re-estimation.  No fine-tuning happens here.  Returns a
    :class:`prunelab.pruning.PruneResult` (``.model``, ``.keep``, MACs and params before/after).

    >>> import torch, prunelab as pl
    >>> from prunelab.models import build
    >>> r = pl.prune(build("resnet20", in_channels=1), torch.zeros(1, 1, 32, 32), ratio=0.5)
    >>> r.macs_after < r.macs_before
    True
    """
    from .criteria import Criterion, build_criterion
    from .data.loaders import LoaderData
    from .pruning import prune as _prune
    from .train import recalibrate_bn

    _check_module(model)
    shape = _input_shape(example_inputs)
    if not isinstance(recal_batches, int) or isinstance(recal_batches, bool) or recal_batches < 0:
        raise PrunelabError(f"recal_batches must be an integer >= 0, got {recal_batches!r}")
    if ratio is not None and not (isinstance(ratio, (int, float)) and 0 < ratio < 1):
        raise PrunelabError(f"ratio {ratio!r} is outside (0, 1); give the fraction of filters "
                            "to remove, e.g. 0.5")
    crit = criterion if isinstance(criterion, Criterion) else build_criterion(criterion)
    if train is None and (crit.needs_data or recal_batches):
        raise PrunelabError(f"pass train= (a loader): criterion {crit.name} and BN re-estimation "
                            f"(recal_batches={recal_batches}) read training batches")
    net = _copy(model)
    names = {m: n for n, m in model.named_modules()}
    ignored = _layer_names(net, [names.get(n, n) if not isinstance(n, str) else n
                                 for n in ignored_layers])
    classes = _num_outputs(net, shape, classifier=False)
    data = LoaderData(train, None) if train is not None else None
    res = _prune(net, crit, ratio=ratio, keep=keep, input_shape=shape, data=data,
                 num_classes=classes, round_to=round_to, inplace=True, ignored=ignored)
    if recal_batches:
        recalibrate_bn(res.model, data.batches("train", 128, shuffle=True), recal_batches)
    res.model.eval()
    return res


def evaluate(model: nn.Module, data: Iterable) -> float:
    """Top-1 (0-1) of ``model`` on a loader of ``(inputs, labels)`` batches, in eval mode (the
    module's mode is restored)."""
    from .train import evaluate as _top1

    _check_module(model)
    return _top1(model, data)


# ----------------------------------------------------------------------------- fine-tuning

def _ft(key: str):
    from .config import default

    return default("finetune", key)


def finetune(model: nn.Module, *, train: Iterable | None = None, val: Iterable | None = None,
             teacher: nn.Module | None = None, eval_fn: EvalFn | None = None,
             test: Iterable | None = None, data=None, epochs: int = _ft("epochs"),
             lr: float = _ft("lr"), batch_size: int | None = None,
             kd_weight: float = _ft("kd_weight"), kd_temperature: float = _ft("kd_temperature"),
             weight_decay: float = _ft("weight_decay"), seed: int = 0,
             recal_batches: int = _ft("recal_batches"), recal_end: bool = _ft("recal_end"),
             precision: str = _ft("precision"), threads: int | None = None,
             checkpoint: str | Path | None = None, extra: dict | None = None,
             desc: str = "finetune") -> FinetuneResult:
    """Fine-tune a copy of ``model`` (SGD + Nesterov, cosine schedule), distilled from
    ``teacher`` (the unpruned model; None: plain cross-entropy), keeping the epoch with the best
    validation score (the starting weights count as epoch 0).  ``train``/``val``/``test`` are
    loaders of ``(inputs, labels)``, or ``data`` is a prunelab data set
    (:func:`prunelab.data.load_dataset`: seeded shuffling and augmentation per epoch);
    ``eval_fn(model) -> float`` replaces validation top-1.  ``checkpoint`` (a folder) makes it
    resumable; ``extra`` is stored in it and must match on a resume.  The defaults are
    ``[finetune]``'s (:mod:`prunelab.config`); every number is checked there, up front.  This is
    the one fine-tune path: ``prunelab finetune`` and the pipeline's stage call it."""
    from .config import check_section
    from .data.loaders import LoaderData
    from .train import TrainConfig, evaluate, fit

    _check_module(model)
    if teacher is not None:
        _check_module(teacher, "teacher")
    if data is None and train is None:
        raise PrunelabError("finetune needs train= (a loader of (inputs, labels) batches)")
    if data is None and val is None and eval_fn is None:
        raise PrunelabError("pass val= (a loader) or eval_fn= to pick the best epoch")
    if batch_size is None:
        batch_size = getattr(train, "batch_size", None) or _ft("batch_size")
    check_section("finetune", dict(
        epochs=epochs, lr=lr, batch_size=batch_size, kd_weight=kd_weight,
        kd_temperature=kd_temperature, weight_decay=weight_decay, recal_batches=recal_batches,
        recal_end=recal_end, precision=precision, threads=threads), style="kwargs")
    cfg = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                      weight_decay=weight_decay, precision=precision, threads=threads)
    net = _copy(model)
    tnet = None
    if teacher is not None and kd_weight > 0:
        tnet = _copy(teacher)
        for p in tnet.parameters():
            p.requires_grad_(False)
    if data is None:
        data = LoaderData(train, val, test)
    has_test = getattr(data, "has", lambda split: True)("test")
    score = (lambda m: _score(eval_fn, m)) if eval_fn is not None else None
    teacher_score = None
    if tnet is not None:
        teacher_score = score(tnet) if score else evaluate(tnet, data.batches("val", 500))
    import time

    t0 = time.perf_counter()
    res = fit(net, data, cfg, checkpoint=checkpoint, teacher=tnet,
              kd_temperature=kd_temperature, kd_weight=kd_weight if tnet is not None else 0.0,
              desc=desc, keep_best=True, recal_batches=recal_batches,
              recal_end=recal_end, score=score, extra=extra)
    after = (res.final_recal["val_top1"] if res.final_recal and res.final_recal["kept"]
             else res.best_val_top1)
    test_top1 = evaluate(net, data.batches("test", 500)) if has_test else None
    return FinetuneResult(net, res.history, res.best_epoch, res.start_val_top1, after, test_top1,
                          teacher_score, time.perf_counter() - t0,
                          {**asdict(cfg), "kd_weight": kd_weight if tnet is not None else 0.0,
                           "kd_temperature": kd_temperature, "recal_batches": recal_batches,
                           "recal_end": recal_end}, res.final_recal)


def _score(eval_fn: EvalFn, net: nn.Module) -> float:
    from .searches.scoring import checked_score

    return checked_score(eval_fn, net)


# ----------------------------------------------------------------------------- files

def save(model: nn.Module, path: str | Path, example_inputs=None, *, spec=None,
         overwrite: bool = False) -> Path:
    """Save ``model`` as a model folder (``model.json`` + ``model.safetensors``, no pickle).

    A prunelab-built model keeps its spec (pass ``spec``); a user's module records its class
    and widths, and opens again with ``load(path, like=the_unpruned_module)``."""
    from .io import save_model

    from .io import check_out

    _check_module(model)
    p = check_out(path, "model", overwrite, "save path")
    if spec is None:
        if example_inputs is None:
            raise PrunelabError("save needs example_inputs (or a spec) to record the input shape")
        net = _copy(model)
        shape = _input_shape(example_inputs)
        spec = module_spec(net, shape, _num_outputs(net, shape, classifier=False),
                           name=p.name)
    return save_model(model, spec, p, overwrite)


def load(path: str | Path, like: nn.Module | None = None):
    """Open a model folder.  A folder saved from your own module needs ``like`` (that module
    or the unpruned one: its code is yours, never imported from the folder) and returns the
    module; a shipped name or a zoo folder returns ``(model, spec)`` as
    :func:`prunelab.io.load_model`."""
    from .io import load_into, load_model, read_spec, resolve

    if like is not None:
        _check_module(like, "like")
        return load_into(resolve(path), like)
    folder = resolve(path)
    if read_spec(folder).arch.get("kind") == "module":
        raise PrunelabError(f"{folder} was saved from your own module; pass like=your_module "
                            "(prunelab never imports code named in a folder)")
    return load_model(folder)


def int8_graph(model: nn.Module, example_inputs, calibration_images, target: str = "onnxruntime-cpu",
               calibration: str = "minmax", int8_types: str = "auto", threads: int = 1,
               int8_layers: str = "all") -> tuple[bytes, dict]:
    """The int8 graph of ``model`` exactly as ``target`` (onnxruntime-cpu or openvino-cpu, with
    ``precision="int8"``) times and runs it: the exported ONNX graph quantized statically (QDQ,
    per-channel weights) on ``calibration_images`` (N, C, H, W, normalised like training, at
    least 8), types chosen per CPU unless ``int8_types`` forces them, every layer in int8 or
    (``int8_layers="fast"``) each resolution stage kept fp32 where that measures faster on
    ``target``.  Returns the ONNX bytes and the choice made (types, 7-bit weights, method,
    images, CPU).  The module is not modified."""
    _check_module(model)
    shape = _input_shape(example_inputs)
    batch = int(example_inputs.shape[0]) if isinstance(example_inputs, torch.Tensor) else 1
    images = calibration_images.detach().cpu().numpy() if isinstance(
        calibration_images, torch.Tensor) else calibration_images
    if images is None or getattr(images, "ndim", 0) != len(shape) + 1 or \
            tuple(images.shape[1:]) != tuple(shape):
        dims = ", ".join(map(str, shape))
        raise PrunelabError(f"int8 needs calibration_images shaped (N, {dims}), normalised like "
                            "the training images; e.g. 256 training images")
    from .quant import int8_graph as _int8

    return _int8(_copy(model), batch, shape, images, target, calibration, int8_types, threads,
                 int8_layers)


def export_onnx(model: nn.Module, path: str | Path, example_inputs, opset: int = 17,
                dynamic_batch: bool = False, overwrite: bool = False, precision: str = "fp32",
                calibration_images=None, target: str = "onnxruntime-cpu",
                calibration: str = "minmax", int8_types: str = "auto",
                metadata: dict | None = None, int8_layers: str = "all") -> dict:
    """Export ``model`` to ONNX exactly as the ONNX-based targets measure it
    (:func:`prunelab.targets._onnx.to_onnx`: same exporter, names ``input``/``logits``, the batch
    of ``example_inputs``, 1 for a shape); ``dynamic_batch`` makes the batch symbolic and says so
    in the result.  ``precision="int8"`` writes the int8 graph of :func:`int8_graph` (the graph
    ``target`` times; give ``calibration_images``).  ``metadata`` (JSON) goes into the file's
    ``metadata_props`` under ``prunelab``.  The module is not modified."""
    from .io import atomic_write_bytes, check_out
    from .quant import with_metadata
    from .targets._onnx import to_onnx

    _check_module(model)
    shape = _input_shape(example_inputs)
    batch = int(example_inputs.shape[0]) if isinstance(example_inputs, torch.Tensor) else 1
    if precision not in ("fp32", "int8"):
        raise PrunelabError(f"precision must be fp32 or int8, got {precision!r}")
    if precision == "int8" and dynamic_batch:
        raise PrunelabError("an int8 graph is exported with the fixed batch it is timed with; "
                            "drop --dynamic-batch")
    p = check_out(path, "file", overwrite, "export path")
    quant = None
    if precision == "int8":
        data, quant = int8_graph(model, torch.zeros(batch, *shape), calibration_images, target,
                                 calibration, int8_types, int8_layers=int8_layers)
    else:
        data = to_onnx(_copy(model), [torch.zeros(batch, *shape)], opset=opset,
                       dynamic_batch=dynamic_batch)
    meta = {**(metadata or {}), "input_shape": [batch, *shape], "precision": precision,
            **({"quantization": quant} if quant else {})}
    data = with_metadata(data, meta)
    atomic_write_bytes(p, data)
    return {"onnx": str(p.resolve()), "bytes": len(data), "opset": opset,
            "input_shape": [batch, *shape], "input_names": ["input"], "output_names": ["logits"],
            "precision": precision, **({"quantization": quant} if quant else {}),
            "differs_from_measured": ["dynamic batch dimension"] if dynamic_batch else []}
