"""Safe model folders: ``model.json`` (architecture, per-layer widths, input, normalisation,
provenance) + ``model.safetensors`` (weights).  Loading never unpickles.

A pruned model is rebuilt by constructing the original architecture, resizing every conv / BN /
linear layer to the widths recorded in ``model.json`` and loading the weights strictly, so the
reloaded model gives identical outputs.

    >>> import tempfile, torch
    >>> from prunelab.io import ModelSpec, save_model, load_model
    >>> from prunelab.models import build
    >>> net = build("resnet20", in_channels=1).eval()
    >>> spec = ModelSpec.for_zoo("resnet20", in_channels=1, num_classes=10)
    >>> d = tempfile.mkdtemp() + "/m"
    >>> _ = save_model(net, spec, d)
    >>> net2, spec2 = load_model(d)
    >>> x = torch.randn(2, 1, 32, 32)
    >>> bool(torch.equal(net(x), net2.eval()(x)))
    True
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .errors import PrunelabError

FORMAT = "prunelab-model"
FORMAT_VERSION = 1
PRETRAINED_DIR = Path(__file__).parent / "pretrained"


@dataclass
class ModelSpec:
    """Everything needed to rebuild a model besides its weights (serialised as model.json)."""

    arch: dict[str, Any]
    input_shape: list[int]
    mean: list[float]
    std: list[float]
    num_classes: int
    dataset: str | None = None
    layers: dict[str, dict[str, int]] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_zoo(cls, name: str, in_channels: int = 3, num_classes: int = 10, width: float = 1.0,
                input_size: int = 32, mean=None, std=None, dataset=None) -> "ModelSpec":
        mean = list(mean or [0.5] * in_channels)
        std = list(std or [0.5] * in_channels)
        return cls({"kind": "zoo", "name": name, "kwargs": {
            "in_channels": in_channels, "num_classes": num_classes, "width": width}},
            [in_channels, input_size, input_size], mean, std, num_classes, dataset)

    @property
    def name(self) -> str:
        return self.provenance.get("name") or self.arch.get("name") or self.arch.get("factory", "?")

    def to_json(self) -> dict:
        return {"format": FORMAT, "version": FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, d: dict, where: str) -> "ModelSpec":
        """A validated spec: every field's type and range is checked (one line naming the field
        on a mistake), so nothing downstream meets a KeyError or allocates absurd tensors."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise PrunelabError(f"{where} is not a prunelab model.json; save models with prunelab")
        v = d.get("version", 0)
        if not _is_int(v):
            raise PrunelabError(f"{where}: field 'version' must be an integer")
        if v > FORMAT_VERSION:
            raise PrunelabError(f"{where} was written by a newer prunelab; upgrade prunelab")
        _validate_spec(d, where)
        keys = cls.__dataclass_fields__
        return cls(**{k: val for k, val in d.items() if k in keys})


# --------------------------------------------------------------------------- validation

MAX_CHANNELS = 65536     # widest layer a model.json may declare
MAX_SIDE = 8192          # largest input height / width
MAX_CLASSES = 1_000_000


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    import math

    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _validate_spec(d: dict, where: str) -> None:
    def bad(field: str, want: str):
        raise PrunelabError(f"{where}: field {field!r} {want}; re-save the model with prunelab")

    for k in ("arch", "input_shape", "mean", "std", "num_classes"):
        if k not in d:
            bad(k, "is missing")
    if not isinstance(d["arch"], dict):
        bad("arch", "must be an object")
    shape = d["input_shape"]
    if not (isinstance(shape, list) and len(shape) == 3 and all(_is_int(x) for x in shape)):
        bad("input_shape", "must be [channels, height, width] integers")
    if not 1 <= shape[0] <= 4096 or not all(1 <= x <= MAX_SIDE for x in shape[1:]):
        bad("input_shape", f"must have 1-4096 channels and sides of 1-{MAX_SIDE} pixels")
    for k in ("mean", "std"):
        if not (isinstance(d[k], list) and len(d[k]) == shape[0] and
                all(_is_num(x) for x in d[k])):
            bad(k, f"must be {shape[0]} finite numbers (one per input channel)")
    if not all(x > 0 for x in d["std"]):
        bad("std", "must be positive")
    if not _is_int(d["num_classes"]) or not 1 <= d["num_classes"] <= MAX_CLASSES:
        bad("num_classes", f"must be an integer in 1..{MAX_CLASSES}")
    if d.get("dataset") is not None and not isinstance(d["dataset"], str):
        bad("dataset", "must be a string or null")
    layers = d.get("layers", {})
    if not isinstance(layers, dict):
        bad("layers", "must be an object of layer name -> widths")
    for name, w in layers.items():
        def width(x) -> bool:
            return _is_int(x) and 1 <= x <= MAX_CHANNELS

        def sizes(x) -> bool:
            return isinstance(x, list) and bool(x) and all(width(v) for v in x)

        if not isinstance(w, dict) or not w or not all(
                isinstance(k, str) and (width(x) or k == "normalized" and sizes(x) or
                                        k == "splits" and isinstance(x, dict) and x and all(
                                            isinstance(a, str) and a.isidentifier() and
                                            not a.startswith("_") and sizes(v)
                                            for a, v in x.items()))
                for k, x in w.items()):
            bad(f"layers.{name}", f"must map in/out/groups/features to integers in "
                                  f"1..{MAX_CHANNELS}")
        known = ({"in", "out", "groups"}, {"features"}, {"in", "out"}, {"sandwich"},
                 {"normalized"}, {"channels", "norm_groups"})
        if set(w) - {"splits"} not in known and set(w) != {"splits"}:
            bad(f"layers.{name}", "must have in/out/groups (conv), features (BN), in/out "
                                  "(linear), normalized (LayerNorm), channels/norm_groups "
                                  "(GroupNorm), sandwich, or splits (split sizes)")
        if "groups" in w and (w["in"] % w["groups"] or w["out"] % w["groups"]):
            bad(f"layers.{name}", "has groups that do not divide its channels")
    if not isinstance(d.get("provenance", {}), dict):
        bad("provenance", "must be an object")


# --------------------------------------------------------------------------- architecture

# A model folder is data.  Code runs only when the user names it: a ``factory`` architecture is
# built only with the same ``path/file.py:function`` (same resolved file, same content hash) given
# on the command line (``--factory``), in the run config (``[model] factory``) or as a callable in
# the library; nothing a folder names is ever imported by itself.
_TRUSTED: contextvars.ContextVar[tuple] = contextvars.ContextVar("prunelab_trusted_code",
                                                                 default=())


@contextlib.contextmanager
def trust_factory(*factories):
    """Within this block, folders whose architecture is one of ``factories`` (``"path.py:fn"``
    strings or callables) may be opened: the caller named the code.  ``None``s are skipped."""
    token = _TRUSTED.set(_TRUSTED.get() + tuple(f for f in factories if f is not None))
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def file_sha256(path: str | os.PathLike) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _split_factory(ref: str) -> tuple[Path, str]:
    path, _, fn = str(ref).rpartition(":")
    if not path or not fn or not path.endswith(".py"):
        raise PrunelabError(f"model factory {ref!r} must look like path/file.py:function")
    return Path(path).resolve(), fn


def _trusted_builder(arch: dict, where: str, factory=None):
    """The callable that builds a ``factory`` architecture, if the user named that very code."""
    recorded = arch.get("factory")
    if not isinstance(recorded, str):
        raise PrunelabError(f"{where}: arch.factory must be a string path/file.py:function")
    rpath, rfn = _split_factory(recorded)
    for f in (factory, *_TRUSTED.get()):
        if f is None:
            continue
        if callable(f):
            if getattr(f, "__name__", None) == rfn:
                return f
            continue
        path, fn = _split_factory(f)
        if (path, fn) != (rpath, rfn):
            continue
        if not path.is_file():
            raise PrunelabError(f"model factory file {path} not found; check the path")
        want = arch.get("sha256")
        if want and file_sha256(path) != want:
            raise PrunelabError(f"{path} changed since {where} was saved (content hash differs); "
                                "re-save the model with the current code, or restore the file")
        return load_factory(f)
    raise PrunelabError(
        f"{where} is built by code it names ({recorded}); prunelab never runs code a model folder "
        f"names: pass --factory {recorded} (in a run config: [model] factory) to trust it")


def _check_zoo(arch: dict, where: str) -> None:
    from .models import MODELS

    name, kwargs = arch.get("name"), arch.get("kwargs", {})
    if not isinstance(name, str) or name not in MODELS:
        raise PrunelabError(f"{where}: arch.name {name!r} is not a prunelab architecture; choose "
                            f"one of {', '.join(MODELS.names())}")
    if not isinstance(kwargs, dict) or not all(
            isinstance(k, str) and isinstance(v, (int, float, str, bool)) for k, v in
            kwargs.items()):
        raise PrunelabError(f"{where}: arch.kwargs must map names to numbers, strings or "
                            "booleans")


def build_arch(arch: dict[str, Any], where: str = "model.json", factory=None) -> nn.Module:
    """The unpruned architecture of a model folder, built without running any code the folder
    names (see :func:`trust_factory`)."""
    if not isinstance(arch, dict):
        raise PrunelabError(f"{where}: arch must be an object")
    kind = arch.get("kind")
    if kind == "zoo":
        from .models import build

        _check_zoo(arch, where)
        return build(arch["name"], **arch.get("kwargs", {}))
    if kind == "factory":
        fn = _trusted_builder(arch, where, factory)
        kwargs = arch.get("kwargs", {})
        if not isinstance(kwargs, dict):
            raise PrunelabError(f"{where}: arch.kwargs must be an object")
        try:
            model = fn(**kwargs)
        except Exception as e:  # user code: one line, not a traceback
            raise PrunelabError(f"model factory {arch['factory']} raised {type(e).__name__}: "
                                f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}"
                                ) from None
        if not isinstance(model, nn.Module):
            raise PrunelabError(f"model factory {arch['factory']} returned "
                                f"{type(model).__name__}, not a torch.nn.Module")
        return model
    if kind == "module":
        raise PrunelabError(f"{where} was saved from your own module ({arch.get('class')}); open "
                            "it with prunelab.load(path, like=your_module) from Python")
    raise PrunelabError(f"{where}: unknown architecture kind {kind!r}; re-save the model")


def load_factory(ref: str):
    """Import ``path/file.py:function`` (the user's own model code, named by the user)."""
    path, fn = _split_factory(ref)
    if not path.is_file():
        raise PrunelabError(f"model factory file {path} not found; check the path")
    spec = importlib.util.spec_from_file_location(f"prunelab_user_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException as e:  # user code: report, don't crash (SystemExit included)
        if isinstance(e, KeyboardInterrupt):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise PrunelabError(f"importing {path} (factory {fn}) failed: {type(e).__name__}: "
                            f"{first}") from None
    if not callable(getattr(mod, fn, None)):
        raise PrunelabError(f"{path} has no callable {fn!r}; name the function that builds the model")
    return getattr(mod, fn)


def layer_widths(model: nn.Module) -> dict[str, dict[str, int]]:
    """Shapes of every conv / BN / linear layer: the part of a pruned model that differs."""
    from .models._common import Sandwich

    out: dict[str, dict[str, int]] = {}
    for name, m in model.named_modules():
        if isinstance(m, Sandwich):
            out[name] = {"sandwich": 1}
        elif isinstance(m, nn.Conv2d):
            out[name] = {"in": m.in_channels, "out": m.out_channels, "groups": m.groups}
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            out[name] = {"features": m.num_features}
        elif isinstance(m, nn.Linear):
            out[name] = {"in": m.in_features, "out": m.out_features}
        elif isinstance(m, nn.LayerNorm):
            out[name] = {"normalized": list(m.normalized_shape)}
        elif isinstance(m, nn.GroupNorm):
            out[name] = {"channels": m.num_channels, "norm_groups": m.num_groups}
        if getattr(m, "prunelab_splits", None):  # split sizes pruning rewrote (pruning.sync_splits)
            out.setdefault(name, {})["splits"] = {a: [int(v) for v in getattr(m, a)]
                                                  for a in m.prunelab_splits}
    return out


def apply_widths(model: nn.Module, layers: dict[str, dict[str, int]]) -> None:
    """Resize layers in place to the recorded widths (weights are then loaded over them)."""
    from .models._common import Sandwich

    for name, w in layers.items():  # structural edits first: convs replaced by a Sandwich
        if w.get("sandwich"):
            try:
                conv = model.get_submodule(name)
            except AttributeError:
                conv = None
            if not isinstance(conv, nn.Conv2d):
                raise PrunelabError(f"model.json puts a sandwich at {name!r}, which is not a conv "
                                    "in the architecture; the folder does not match it")
            mix = nn.Conv2d(conv.out_channels, conv.out_channels, 1, bias=False)
            model.set_submodule(name, Sandwich(conv, mix))
    mods = dict(model.named_modules())
    for name, w in layers.items():
        if w.get("sandwich"):
            continue
        m = mods.get(name)
        if m is None:
            raise PrunelabError(f"model.json names layer {name!r} that the architecture lacks; "
                                "the folder does not match its architecture")
        if "splits" in w:
            _apply_splits(m, name, w["splits"])
            w = {k: v for k, v in w.items() if k != "splits"}
            if not w:
                continue
        want = ({"in", "out", "groups"} if isinstance(m, nn.Conv2d) else
                {"features"} if isinstance(m, nn.modules.batchnorm._BatchNorm) else
                {"in", "out"} if isinstance(m, nn.Linear) else
                {"normalized"} if isinstance(m, nn.LayerNorm) else
                {"channels", "norm_groups"} if isinstance(m, nn.GroupNorm) else None)
        if want is None or set(w) != want:
            raise PrunelabError(f"model.json gives layer {name!r} ({type(m).__name__}) the "
                                f"fields {sorted(w)}; the folder does not match its architecture")
        if isinstance(m, nn.Conv2d):
            m.in_channels, m.out_channels, m.groups = w["in"], w["out"], w["groups"]
            m.weight = nn.Parameter(m.weight.new_empty(w["out"], w["in"] // w["groups"],
                                                       *m.kernel_size))
            if m.bias is not None:
                m.bias = nn.Parameter(m.bias.new_empty(w["out"]))
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = w["features"]
            m.num_features = n
            if m.affine:
                m.weight = nn.Parameter(m.weight.new_empty(n))
                m.bias = nn.Parameter(m.bias.new_empty(n))
            if m.track_running_stats:
                m.running_mean = m.running_mean.new_zeros(n)
                m.running_var = m.running_var.new_ones(n)
        elif isinstance(m, nn.Linear):
            m.in_features, m.out_features = w["in"], w["out"]
            m.weight = nn.Parameter(m.weight.new_empty(w["out"], w["in"]))
            if m.bias is not None:
                m.bias = nn.Parameter(m.bias.new_empty(w["out"]))
        else:  # LayerNorm / GroupNorm: the attribute the forward reads; tensors follow the file
            if isinstance(m, nn.LayerNorm):
                m.normalized_shape = tuple(w["normalized"])
            else:
                m.num_channels, m.num_groups = w["channels"], w["norm_groups"]
            n = list(m.normalized_shape) if isinstance(m, nn.LayerNorm) else [m.num_channels]
            for t in ("weight", "bias"):
                if getattr(m, t, None) is not None:
                    setattr(m, t, nn.Parameter(getattr(m, t).new_empty(n)))


def _apply_splits(m: nn.Module, name: str, splits: dict[str, list[int]]) -> None:
    """The split sizes a pruned module's forward() reads (only attributes that already hold as
    many sizes: a folder never adds or retypes an attribute)."""
    for attr, sizes in splits.items():
        cur = getattr(m, attr, None)
        if not isinstance(cur, (list, tuple)) or len(cur) != len(sizes):
            raise PrunelabError(f"model.json gives {name!r} split sizes {attr}={sizes}, but the "
                                "architecture has no such list there; the folder does not "
                                "match its architecture")
        setattr(m, attr, type(cur)(sizes))
        m.prunelab_splits = sorted(set(getattr(m, "prunelab_splits", ())) | {attr})


def resize_to(model: nn.Module, shapes: dict[str, list[int]]) -> None:
    """Every other parameter or buffer whose shape in ``shapes`` (a weights file's header)
    differs from the module's, given that shape (its values are loaded over it): what pruning
    resized besides the layers :func:`layer_widths` records (a per-channel scale such as
    ConvNeXt's layer scale)."""
    for key, shape in shapes.items():
        owner, _, attr = key.rpartition(".")
        try:
            mod = model.get_submodule(owner)
        except AttributeError:
            continue  # load_weights names it
        cur = getattr(mod, attr, None)
        if not isinstance(cur, torch.Tensor) or list(cur.shape) == list(shape) or \
                len(shape) != cur.dim() or any(a > b for a, b in zip(shape, cur.shape)):
            continue  # pruning only narrows: anything else is load_weights' mismatch
        new = cur.new_empty(shape)
        if isinstance(cur, nn.Parameter):
            setattr(mod, attr, nn.Parameter(new, requires_grad=cur.requires_grad))
        elif attr in mod._buffers:
            mod._buffers[attr] = new


# --------------------------------------------------------------------------- atomic files

@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike):
    """Write a folder atomically: fill a temp sibling, then rename it into place."""
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as e:
        raise _write_error(out, e) from None
    try:
        yield tmp
        _normal_modes(tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            try:
                os.replace(tmp, out)
            except OSError:
                os.replace(old, out)  # the previous folder stays where it was
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except OSError as e:  # full disk, read-only, permissions: one line, nothing half-written
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_error(out, e) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_error(path: Path, e: OSError) -> PrunelabError:
    from .errors import write_error

    return write_error(path, e)


def make_dir(path: str | os.PathLike) -> Path:
    """``mkdir -p`` whose refusal (a full or read-only disk) is one line naming the folder."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _write_error(p, e) from None
    return p


def write_safetensors(state: dict, path: str | os.PathLike) -> None:
    """``safetensors.torch.save_file``, but a full disk raises :class:`OSError` (then
    :class:`PrunelabError` in :func:`atomic_dir`), not a ``SafetensorError`` traceback: the
    tensors are serialised in memory and written with Python's own file calls."""
    from safetensors.torch import save

    data = save(state)
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def _normal_modes(folder: Path) -> None:
    """mkdtemp/mkstemp create private (0700/0600) entries; give them the user's usual modes."""
    mask = _umask()
    os.chmod(folder, 0o777 & ~mask)
    for p in folder.rglob("*"):
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file's content, or None when it is missing, unreadable or torn (a killed writer):
    the one way run and search folders read their own records."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a file via a temp sibling + rename: readers never see half a file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as e:
        raise _write_error(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise _write_error(path, e) from None
        raise


def is_model_folder(path: str | os.PathLike) -> bool:
    """A folder prunelab wrote with :func:`save_model` (its model.json says so)."""
    d = read_json(Path(path) / "model.json")
    return isinstance(d, dict) and d.get("format") == FORMAT


def check_out(out: str | os.PathLike, kind: str = "model", overwrite: bool = False,
              flag: str = "--out") -> Path:
    """Refuse, before any work, to write where something prunelab did not write already is.

    ``kind="model"``: ``out`` may be missing, an empty folder, or (with ``overwrite``) a prunelab
    model folder; ``kind="file"``: missing, or (with ``overwrite``) an existing file."""
    p = Path(out)
    if p.parent.exists() and not p.parent.is_dir():
        raise PrunelabError(f"{flag} {p}: {p.parent} is a file, not a folder; choose another path")
    if not p.exists() and not p.is_symlink():
        _check_writable(p)
        return p
    if kind == "file":
        if p.is_dir():
            raise PrunelabError(f"{flag} {p} is a folder; give a file path")
        if not overwrite:
            raise PrunelabError(f"{flag} {p} exists; pass --overwrite to replace it, or choose a "
                                "new path")
        return p
    if p.is_dir() and not p.is_symlink():
        if is_model_folder(p):
            if overwrite:
                return p
            raise PrunelabError(f"{flag} {p} already holds a prunelab model; pass --overwrite to "
                                "replace it, or choose a new path")
        if not any(p.iterdir()):
            return p
    what = "a file" if not p.is_dir() else "a folder that prunelab did not write"
    raise PrunelabError(f"{flag} {p} exists and is {what}; prunelab never replaces what it did "
                        "not write: choose a new path")


def _check_writable(p: Path) -> None:
    """Before any work: the nearest existing folder above ``p`` takes new entries (a read-only
    mount or a folder without write permission fails here in one line, not after the work)."""
    import errno

    anc = p.absolute().parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir() or os.access(anc, os.W_OK | os.X_OK):
        return
    try:
        ro = bool(os.statvfs(anc).f_flag & os.ST_RDONLY)
    except OSError:
        ro = False
    raise _write_error(p, OSError(errno.EROFS if ro else errno.EACCES, ""))


def save_model(model: nn.Module, spec: ModelSpec, out: str | os.PathLike,
               overwrite: bool = False) -> Path:
    """Save a model folder (model.json + model.safetensors) atomically; returns its path.

    ``out`` must not exist, be an empty folder, or (``overwrite``) be a prunelab model folder:
    nothing else is ever replaced (:func:`check_out`)."""
    check_out(out, "model", overwrite)
    spec.layers = layer_widths(model)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_dir(out) as tmp:
        write_safetensors(state, tmp / "model.safetensors")
        (tmp / "model.json").write_text(json.dumps(spec.to_json(), indent=1))
    return Path(out)


def resolve(ref: str | os.PathLike) -> Path:
    """A model reference: a model folder, or the name of a shipped model (``resnet20.fmnist``)."""
    p = Path(ref)
    if p.is_dir():
        return p
    shipped = PRETRAINED_DIR / str(ref)
    if shipped.is_dir():
        return shipped
    names = ", ".join(list_pretrained()) or "none"
    raise PrunelabError(f"model {str(ref)!r} is neither a model folder nor a shipped model "
                        f"({names}); pass a folder written by prunelab")


def list_pretrained() -> list[str]:
    if not PRETRAINED_DIR.is_dir():
        return []
    return sorted(p.name for p in PRETRAINED_DIR.iterdir() if (p / "model.json").exists())


def read_spec(folder: Path) -> ModelSpec:
    mj = Path(folder) / "model.json"
    if not mj.is_file():
        raise PrunelabError(f"{folder} has no model.json; pass a folder written by prunelab")
    if mj.stat().st_size > 64 * 2**20:
        raise PrunelabError(f"{mj} is over 64 MB, not a model description; re-save the model")
    try:
        return ModelSpec.from_json(json.loads(mj.read_text(encoding="utf-8")), str(mj))
    except UnicodeDecodeError:
        raise PrunelabError(f"{mj} is not text (binary content); re-save the model") from None
    except json.JSONDecodeError as e:
        raise PrunelabError(f"{mj} is corrupt ({e.msg} at line {e.lineno}); re-save the model") \
            from None


def _check_widths_against_weights(layers: dict, path: Path) -> None:
    """Compare model.json's widths with the weight shapes in the safetensors header (read
    without loading any tensor), before any layer is allocated at those widths."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise PrunelabError(f"weights file {path} not found")
    try:
        with safe_open(str(path), "pt") as f:
            shapes = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise PrunelabError(f"{path} is not a valid safetensors file ({e}); re-save or "
                            "re-download it") from None
    for name, w in layers.items():
        got = shapes.get(f"{name}.weight")
        if "sandwich" in w or set(w) == {"splits"}:
            continue
        want = ([w["out"], w["in"] // w["groups"]] if "groups" in w else
                [w["features"]] if "features" in w else w["normalized"] if "normalized" in w
                else [w["channels"]] if "channels" in w else [w["out"], w["in"]])
        if got is None:
            continue  # e.g. an affine-free BN: load_weights names what is missing
        if got[:len(want)] != want:
            raise PrunelabError(f"model.json gives layer {name!r} widths {w}, but its weights "
                                f"have shape {got}; the folder is inconsistent: re-save it")


def _header_shapes(path: Path) -> dict[str, list[int]]:
    """The tensor shapes in a safetensors file's header (no tensor is read)."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        return {}  # load_weights says it is missing
    try:
        with safe_open(str(path), "pt") as f:
            return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise PrunelabError(f"{path} is not a valid safetensors file ({e}); re-save or "
                            "re-download it") from None


def load_weights(model: nn.Module, path: Path) -> None:
    """Load safetensors weights strictly; mismatches become one-line errors."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.exists():
        raise PrunelabError(f"weights file {path} not found")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise PrunelabError(f"{path} is not a valid safetensors file ({e}); re-save or "
                            "re-download it") from None
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    bad = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or extra or bad:
        what = (f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}" if extra
                else f"shape of {bad[0]} is {tuple(state[bad[0]].shape)}, architecture expects "
                     f"{tuple(own[bad[0]].shape)}")
        raise PrunelabError(f"weights {path.name} do not match the architecture ({what}); "
                            "pass the weights saved with this architecture")
    # the modules' state-dict versions (BN's, MNASNet's ...) are the architecture's own: a
    # module whose _load_from_state_dict reads its version must find it, as in torch.load
    state = collections.OrderedDict(state)
    meta = getattr(own, "_metadata", None)
    if meta is not None:
        state._metadata = meta
    model.load_state_dict(state, strict=True)


def load_model(ref: str | os.PathLike, factory=None) -> tuple[nn.Module, ModelSpec]:
    """Load a model folder or shipped model; returns ``(model in eval mode, spec)``.

    A folder of your own architecture needs ``factory``: the ``path/file.py:fn`` (or the
    callable) it records; no code a folder names runs otherwise (see :func:`trust_factory`)."""
    folder = resolve(ref)
    spec = read_spec(folder)
    _check_widths_against_weights(spec.layers, folder / "model.safetensors")
    model = build_arch(spec.arch, str(folder / "model.json"), factory)
    apply_widths(model, spec.layers)
    load_weights(model, folder / "model.safetensors")
    spec.provenance.setdefault("name", folder.name)
    return model.eval(), spec


def load_user_model(factory: str, weights: str | None, input_shape, num_classes: int, mean, std,
                    dataset=None, kwargs=None) -> tuple[nn.Module, ModelSpec]:
    """A user's own model: ``path/file.py:factory`` plus an optional safetensors weights file."""
    path, fn = _split_factory(factory)
    if not path.is_file():
        raise PrunelabError(f"model factory file {path} not found; check the path")
    spec = ModelSpec({"kind": "factory", "factory": f"{path}:{fn}", "sha256": file_sha256(path),
                      "kwargs": kwargs or {}},
                     list(input_shape), list(mean), list(std), num_classes, dataset)
    model = build_arch(spec.arch, factory, factory=factory)
    if weights:
        wp = Path(weights)
        if wp.suffix in (".pt", ".pth", ".bin", ".ckpt"):
            _load_torch_weights(model, wp)
        else:
            load_weights(model, wp)
    spec.provenance["name"] = Path(factory.rpartition(":")[0]).stem
    check_output(model.eval(), spec, factory)
    return model, spec


def check_output(model: nn.Module, spec: ModelSpec, what: str) -> None:
    """Once, up front: the model runs on the data's input shape and returns (batch, classes)
    logits (a (N, 10, 1, 1) output would give a top-1 of 5738%; 7 outputs on a 10-class data
    set would pass silently)."""
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *spec.input_shape))
    except Exception as e:  # user code
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise PrunelabError(f"{what} does not run on {'x'.join(map(str, spec.input_shape))} "
                            f"inputs ({type(e).__name__}: {first[:160]}); check the data set "
                            "and the model's input size") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, spec.num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise PrunelabError(f"{what} returns {got} for a batch of 2, but the data set needs "
                            f"(batch, {spec.num_classes}) logits; make forward() return one row "
                            "of class scores per image")


def _load_torch_weights(model: nn.Module, path: Path) -> None:
    """A ``.pt`` state dict, loaded with ``weights_only=True`` (no arbitrary unpickling)."""
    if not path.exists():
        raise PrunelabError(f"weights file {path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for bad / unsafe files
        raise PrunelabError(f"{path} is not a plain state dict loadable with weights_only=True "
                            f"({type(e).__name__}); save model.state_dict() or use safetensors") \
            from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[1].strip() if "\n" in str(e) else str(e)
        raise PrunelabError(f"weights {path.name} do not match the architecture ({first}); pass "
                            "the weights saved with this architecture") from None


def load_into(folder: str | os.PathLike, like: nn.Module) -> nn.Module:
    """A model folder's widths and weights on a copy of ``like`` (the unpruned module, or any
    module of the same architecture): how a folder saved from a user's own module is opened
    without importing any code.  ``like`` is not modified."""
    import copy

    folder = Path(folder)
    spec = read_spec(folder)
    net = copy.deepcopy(like).cpu()
    apply_widths(net, spec.layers)
    resize_to(net, _header_shapes(folder / "model.safetensors"))
    load_weights(net, folder / "model.safetensors")
    return net.eval()


def pruned_spec(spec: ModelSpec, name: str, parent_ref: str, pruned: dict) -> ModelSpec:
    """The spec of a model pruned from ``spec``: its provenance names the parent (as the user
    referred to it, so a fine-tune can find its teacher) and what was done to it."""
    pspec = ModelSpec(**{**spec.__dict__, "provenance": {
        "name": name, "parent": spec.name,
        "parent_ref": ref_of(parent_ref),
        "parent_provenance": {k: v for k, v in spec.provenance.items()
                              if k in ("name", "trained")},
        "pruned": pruned, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "prunelab": _version()}})
    pspec.layers = {}
    return pspec


def ref_of(ref: str) -> str:
    """How to find a model again: a folder's absolute path, else the ref as given."""
    p = Path(str(ref))
    return str(p.resolve()) if p.is_dir() else str(ref)


def _version() -> str:
    from .version import __version__

    return __version__
