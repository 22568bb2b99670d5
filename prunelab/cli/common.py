"""What every ``prunelab`` subcommand module shares: the one-line-error parser, argument types,
the JSON-or-table output and the ``--factory`` flag."""

from __future__ import annotations

import argparse
import json
import re
import sys

# reST markup as the docstrings write it: a role (:func:`x`, :py:meth:`~a.b`, :class:`t <a.T>`),
# a literal (``x``), interpreted text (`x`), and a paragraph ending in "::" before a code block
_ROLE = re.compile(r":(?:[a-z]+:)?[a-z]+:`([^`]+)`")
_LITERAL = re.compile(r"``(.+?)``", re.S)
_TICKS = re.compile(r"`([^`]+)`")
_DOUBLE_COLON = re.compile(r"(\S)::(?=\s*$)", re.M)


def _role_text(m: re.Match) -> str:
    text = m.group(1)
    if text.endswith(">") and " <" in text:  # :func:`shown text <target>`
        return text[:text.rindex(" <")]
    return text[1:].rsplit(".", 1)[-1] if text.startswith("~") else text


def plain(text: str) -> str:
    """Help text as a terminal shows it: reST markup from a docstring made plain, so that
    ``:func:`prunelab.api.load``` reads ``prunelab.api.load`` and a double-backquoted literal
    reads as the literal.

    >>> plain(":func:`prunelab.core.search` writes ``out`` (see `prunelab run`)::")
    'prunelab.core.search writes out (see prunelab run):'
    >>> plain(":class:`~prunelab.targets.base.Target`, :meth:`shown <a.b>`")
    'Target, shown'
    """
    text = _ROLE.sub(_role_text, text)
    text = _LITERAL.sub(r"\1", text)
    text = _TICKS.sub(r"\1", text)
    return _DOUBLE_COLON.sub(r"\1:", text)


class Parser(argparse.ArgumentParser):
    """The one-line-error parser; its help is plain text (:func:`plain`), wherever the text came
    from (a docstring, a config field's description, a registry entry)."""

    def error(self, message):  # one line, exit 2, no usage dump
        sys.stderr.write(f"prunelab: error: {message} (see `{self.prog} --help`)\n")
        raise SystemExit(2)

    def format_help(self) -> str:
        return plain(super().format_help())


def doc(fn) -> str:
    """The first paragraph of ``fn``'s docstring on one line, as plain text: a subcommand's help
    and description (``%`` escaped: argparse %-formats help text)."""
    return plain((fn.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")).replace(
        "%", "%%")


def ratio(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"ratio {s!r} is not a number") from None
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"ratio {v} is outside (0, 1); give the fraction of "
                                         "filters to remove, e.g. 0.5")
    return v


def keep_counts(s: str) -> dict[str, int]:
    """``layer=N,layer=N`` or a JSON file mapping layer names to keep counts."""
    from pathlib import Path

    if s.endswith(".json"):
        try:
            d = json.loads(Path(s).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise argparse.ArgumentTypeError(f"cannot read keep counts from {s}: {e}") from None
        if isinstance(d, dict) and "keep" in d:
            d = d["keep"]
    else:
        try:
            d = {k.strip(): int(v) for k, v in (p.split("=") for p in s.split(",") if p)}
        except ValueError:
            raise argparse.ArgumentTypeError("keep counts look like layer=N,layer=N or a .json "
                                             "file") from None
    if not isinstance(d, dict) or not all(isinstance(v, int) for v in d.values()):
        raise argparse.ArgumentTypeError("keep counts must map layer names to integers")
    return d


def emit(args, obj, table) -> None:
    if args.json:
        print(json.dumps(obj, indent=1, default=str))
    else:
        table(obj)


def fmt_row(r: dict) -> list[str]:
    top1 = f"{100 * r['top1']:.2f}%" if r.get("top1") is not None else "-"
    iqr = r["latency"]["iqr_ms"]
    return [r["model"], top1, f"{r['macs'] / 1e6:.2f} M", f"{r['params'] / 1e6:.3f} M",
            f"{r['latency_ms']:.3f} ± {iqr / 2:.3f}"]


def lat_note(r: dict) -> str:
    lt = r["latency"]
    return (f"latency: {lt['runtime']}, batch {lt['batch_size']}, {lt['threads']} threads, median "
            f"of {lt['repeats']} runs after {lt['warmup']} warm-up (± half IQR)")


def print_table(title, cols, rows, note=""):
    from rich.table import Table

    from ..ui import out

    t = Table(title=title, caption=note or None)
    for c in cols:
        t.add_column(c, justify="left" if c in cols[:1] else "right")
    for r in rows:
        t.add_row(*r)
    out.print(t)

def floats(s: str) -> list[float]:
    out = []
    for p in s.split(","):
        out.append(ratio(p.strip()))
    return out


def factory_arg(p) -> None:
    """``--factory path/file.py:fn``: the code a model folder of your own architecture was built
    with; prunelab never runs code that a folder names unless you name it here too."""
    p.add_argument("--factory", metavar="FILE.py:FN",
                   help="trust this model code to open a folder of your own architecture (it "
                        "must be the file and function recorded in its model.json)")


MODEL_HELP = "shipped model name, model folder, or path/file.py:factory"


def model_options(p, many: bool = False, help: str = MODEL_HELP) -> None:
    """The options of every command that opens a model, defined once: the model reference
    (``models``, two or more, with ``many``), ``--factory``, ``--weights``, ``--dataset`` and
    ``--data-dir``.  :func:`open_model` resolves them."""
    if many:
        p.add_argument("models", nargs="+", metavar="MODEL", help="two or more: " + help)
    else:
        p.add_argument("model", help=help)
    factory_arg(p)
    p.add_argument("--weights", help="safetensors / .pt state dict for a path/file.py:factory "
                   "model")
    p.add_argument("--dataset", help="dataset name (default: the one the model was trained on; "
                   "for a path/file.py:factory model it sets the input shape, default fmnist)")
    p.add_argument("--data-dir", help="folder with the dataset files")


def model_kwargs(args) -> dict:
    """The parsed :func:`model_options` as the keyword arguments of :func:`prunelab.commands.load`
    (for library calls that open the model themselves, the same way)."""
    return {"weights": args.weights, "dataset": args.dataset, "data_dir": args.data_dir}


def open_model(args, ref: str | None = None, data: bool = True):
    """The one resolver of :func:`model_options`: ``(model, spec, data)`` for ``ref`` (default
    ``args.model``).  A ``path/file.py:factory`` is built for ``--dataset``'s input shape,
    classes and normalisation (with ``--weights``); a folder or shipped name is opened (its own
    architecture trusted by ``--factory``, see :func:`prunelab.io.trust_factory`); with ``data``
    the data set (``--dataset``, else the model's own) is loaded and checked against the model,
    else ``None``."""
    from .. import commands

    ref = args.model if ref is None else ref
    kw = model_kwargs(args)
    factory = str(ref).rpartition(":")[0].endswith(".py")
    if len(getattr(args, "models", None) or ()) > 1 and not factory:
        kw["weights"] = None  # several models: --weights belongs to the factory ones
    model, spec = commands.load(ref, **kw)
    return model, spec, (commands.data_for(spec, args.dataset, args.data_dir) if data else None)


def precision_options(p) -> None:
    """``--precision`` and the int8 calibration flags (the target section's keys)."""
    from ..quant import LAYERS, METHODS, TYPES

    p.add_argument("--precision", default="fp32", choices=("fp32", "int8"),
                   help="fp32, or int8 on onnxruntime-cpu / openvino-cpu (static QDQ, "
                        "calibrated on the training split) (default fp32)")
    p.add_argument("--calibration", default="minmax", choices=METHODS,
                   help="int8 calibration method (default minmax)")
    p.add_argument("--calib-images", type=int, default=256,
                   help="int8 calibration images from the training split (default 256)")
    p.add_argument("--int8-types", default="auto", choices=TYPES,
                   help="int8 activation/weight types (default auto: chosen per CPU)")
    p.add_argument("--int8-layers", default="all", choices=LAYERS,
                   help="int8 layers: all (default), or fast: each resolution stage kept fp32 "
                        "where that measures faster in the whole graph")


def precision_kwargs(args) -> dict:
    return {"precision": args.precision, "calibration": args.calibration,
            "calib_images": args.calib_images, "int8_types": args.int8_types,
            "int8_layers": args.int8_layers}


def common_measure(p):
    p.add_argument("--batch-size", type=int, default=1, help="latency batch size (default 1)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    p.add_argument("--repeats", type=int, default=50, help="timed runs (default 50)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def section_flags(p, section: str, keys, required=(), defaults=None) -> None:
    """One ``--flag`` per key of a typed run-config section (:data:`prunelab.config.SECTIONS`),
    with the section's type, default, choices and description: ``prunelab run`` and the command
    take the same options, defined once.  ``defaults`` overrides a default where the command's
    differs (said in its help).  Check the parsed values with :func:`section_values`."""
    import types
    import typing

    from ..config import SECTIONS, COMMAND_SECTIONS

    fields = {**SECTIONS, **COMMAND_SECTIONS}[section].model_fields
    for key in keys:
        f = fields[key]
        default = (defaults or {}).get(key, f.get_default(call_default_factory=True))
        ann = f.annotation
        union = typing.get_origin(ann) in (typing.Union, types.UnionType)
        args = [a for a in typing.get_args(ann) if a is not type(None)] if union else [ann]
        base = typing.get_origin(args[0]) is typing.Annotated and typing.get_args(args[0])[0] \
            or args[0]
        flag = "--" + key.replace("_", "-")
        help_ = (f.description or "") + ("" if key in required or default is None
                                          else f" (default {default})")
        if base is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default,
                           help=help_)
        elif typing.get_origin(base) is typing.Literal:
            p.add_argument(flag, choices=list(typing.get_args(base)), default=default,
                           help=help_)
        else:
            p.add_argument(flag, type=_flag_type(flag, base), required=key in required,
                           default=None if key in required else default, help=help_)


def _flag_type(flag: str, base):
    def conv(s: str):
        try:
            return base(s)
        except ValueError:
            kind = "an integer" if base is int else "a number"
            raise argparse.ArgumentTypeError(f"{flag} {s!r} is not {kind}") from None
    conv.__name__ = base.__name__
    return conv


def section_values(args, section: str, keys) -> dict:
    """The parsed flags of :func:`section_flags`, checked by the section's model (one line on a
    bad value: ``--lr inf: input should be a finite number (peak learning rate)``)."""
    from ..config import check_section

    values = {k: getattr(args, k) for k in keys}
    check_section(section, {k: v for k, v in values.items() if v is not None}, cli=True)
    return values
