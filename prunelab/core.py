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
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn as nn

from .errors import PrunelabError

EvalFn = Callable[[nn.Module], float]


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

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("model")
        return d


# ----------------------------------------------------------------------------- helpers

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
           target: str = "torch-cpu", budget: str = "macs=0.5", method: str = "nsga2",
           criterion: str | None = None, out: str | Path | None = None, seed: int = 0,
           options: dict | None = None, ignored_layers: Sequence = (),
           recal_batches: int = 6, val_images: int = 1000, measure_front: int = 12,
           batch_size: int = 1, threads: int = 1, cache_dir: str | None = None,
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
    join a running cluster); same candidates, same choice as without."""
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
    cfg = SearchConfig(method, criterion, TargetConfig(target, batch_size=batch_size,
                                                       threads=threads),
                       budget, seed, recal_batches, val_images, measure_front,
                       dict(options or {}))
    from .searches.run import method_entry

    crit_name = cfg.criterion or method_entry(cfg).meta["criterion"]
    if train is None and (recal_batches > 0 or _needs_data(crit_name)):
        raise PrunelabError(f"pass train= (a loader): BN re-estimation (recal_batches="
                            f"{recal_batches}) and criterion {crit_name} read training batches; "
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
                                   workers=workers, ray_address=ray_address)
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


def _needs_data(criterion: str) -> bool:
    from .criteria import CRITERIA
    from .sweep import parse_criterion

    return bool(CRITERIA.get(parse_criterion(criterion)[0]).meta.get("needs_data"))


# ----------------------------------------------------------------------------- fine-tuning

def finetune(model: nn.Module, *, train: Iterable, val: Iterable | None = None,
             teacher: nn.Module | None = None, eval_fn: EvalFn | None = None,
             test: Iterable | None = None, epochs: int = 1, lr: float = 0.01,
             kd_weight: float = 0.5, kd_temperature: float = 4.0, weight_decay: float = 5e-4,
             seed: int = 0, recal_batches: int = 20, recal_end: bool = True,
             precision: str = "auto", threads: int | None = None,
             checkpoint: str | Path | None = None) -> FinetuneResult:
    """Fine-tune a copy of ``model`` (SGD + Nesterov, cosine schedule), distilled from
    ``teacher`` (the unpruned model; None: plain cross-entropy), keeping the epoch with the best
    validation score (the starting weights count as epoch 0).  ``train``/``val``/``test`` are
    loaders of ``(inputs, labels)``; ``eval_fn(model) -> float`` replaces validation top-1.
    ``checkpoint`` (a folder) makes it resumable."""
    from .data.loaders import LoaderData
    from .train import TrainConfig, evaluate, fit

    _check_module(model)
    if teacher is not None:
        _check_module(teacher, "teacher")
    if train is None:
        raise PrunelabError("finetune needs train= (a loader of (inputs, labels) batches)")
    if val is None and eval_fn is None:
        raise PrunelabError("pass val= (a loader) or eval_fn= to pick the best epoch")
    if not 0 <= kd_weight <= 1 or not 0 < kd_temperature < float("inf"):
        raise PrunelabError("kd_weight must be in [0, 1] and kd_temperature a positive number")
    if not 0 < lr < float("inf") or not 0 <= weight_decay < float("inf"):
        raise PrunelabError("lr must be a positive number and weight_decay >= 0")
    batch = getattr(train, "batch_size", None) or 128
    cfg = TrainConfig(epochs=epochs, lr=lr, batch_size=batch, seed=seed,
                      weight_decay=weight_decay, precision=precision, threads=threads)
    net = _copy(model)
    tnet = None
    if teacher is not None and kd_weight > 0:
        tnet = _copy(teacher)
        for p in tnet.parameters():
            p.requires_grad_(False)
    data = LoaderData(train, val, test)
    score = (lambda m: _score(eval_fn, m)) if eval_fn is not None else None
    teacher_score = None
    if tnet is not None:
        teacher_score = score(tnet) if score else evaluate(tnet, data.batches("val"))
    import time

    t0 = time.perf_counter()
    res = fit(net, data, cfg, checkpoint=checkpoint, teacher=tnet,
              kd_temperature=kd_temperature, kd_weight=kd_weight if tnet is not None else 0.0,
              desc="finetune", keep_best=True, recal_batches=recal_batches,
              recal_end=recal_end, score=score)
    after = (res.final_recal["val_top1"] if res.final_recal and res.final_recal["kept"]
             else res.best_val_top1)
    test_top1 = evaluate(net, data.batches("test")) if test is not None else None
    return FinetuneResult(net, res.history, res.best_epoch, res.start_val_top1, after, test_top1,
                          teacher_score, time.perf_counter() - t0,
                          {**asdict(cfg), "kd_weight": kd_weight if tnet is not None else 0.0,
                           "kd_temperature": kd_temperature, "recal_batches": recal_batches,
                           "recal_end": recal_end})


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


def export_onnx(model: nn.Module, path: str | Path, example_inputs, opset: int = 17,
                dynamic_batch: bool = False, overwrite: bool = False) -> dict:
    """Export ``model`` to ONNX exactly as the ONNX-based targets measure it
    (:func:`prunelab.targets._onnx.to_onnx`: same exporter, names ``input``/``logits``, the batch
    of ``example_inputs``, 1 for a shape); ``dynamic_batch`` makes the batch symbolic and says so
    in the result.  The module is not modified."""
    from .io import atomic_write_bytes, check_out
    from .targets._onnx import to_onnx

    _check_module(model)
    shape = _input_shape(example_inputs)
    batch = int(example_inputs.shape[0]) if isinstance(example_inputs, torch.Tensor) else 1
    p = check_out(path, "file", overwrite, "export path")
    data = to_onnx(_copy(model), [torch.zeros(batch, *shape)], opset=opset,
                   dynamic_batch=dynamic_batch)
    atomic_write_bytes(p, data)
    return {"onnx": str(p.resolve()), "bytes": len(data), "opset": opset,
            "input_shape": [batch, *shape], "input_names": ["input"], "output_names": ["logits"],
            "differs_from_measured": ["dynamic batch dimension"] if dynamic_batch else []}
