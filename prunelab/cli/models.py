"""``prunelab list|models|datasets|criteria|eval|prune|train|finetune|export``: a thin layer over
:mod:`prunelab.commands` (each command's help is the docstring of its call)."""

from __future__ import annotations

import json
import sys

from ..errors import PrunelabError
from .common import (Parser, common_measure, doc, emit, floats, fmt_row, keep_counts, lat_note,
                     model_kwargs, model_options, open_model, precision_kwargs, precision_options,
                     print_table, ratio, section_flags,
                     section_values)


def cmd_list(args):
    from ..criteria import CRITERIA
    from ..data import DATASETS
    from ..io import list_pretrained
    from ..models import MODELS

    if args.kind == "models":
        import json as _j

        from ..io import PRETRAINED_DIR

        shipped = []
        for n in list_pretrained():
            prov = _j.loads((PRETRAINED_DIR / n / "model.json").read_text())["provenance"]
            shipped.append({"name": n, "test_top1": prov.get("trained", {}).get("test_top1")})
        obj = {"architectures": [{"name": e.name, "description": e.description, **e.meta}
                                 for e in MODELS.entries()], "pretrained": shipped}

        def table(o):
            print_table("architectures", ["name", "description"],
                        [[a["name"], a["description"]] for a in o["architectures"]])
            print_table("shipped pretrained models", ["name", "test top-1"],
                        [[s["name"], f"{100 * s['test_top1']:.2f}%" if s["test_top1"] else "-"]
                    for s in o["pretrained"]])
        emit(args, obj, table)
        return
    reg = {"criteria": CRITERIA, "datasets": DATASETS}[args.kind]
    obj = [{"name": e.name, "description": e.description, **e.meta} for e in reg.entries()]
    if args.kind == "criteria":  # said once, on the criterion class ("options": depends on them)
        for o, e in zip(obj, reg.entries()):
            nd = e.fn.needs_data
            o["needs_data"] = nd if isinstance(nd, bool) else "options"
    emit(args, obj, lambda o: print_table(args.kind, ["name", "description", "needs data"],
                                      [[e["name"], e["description"],
                                        str(e.get("needs_data", "-"))] for e in o]))


def cmd_eval(args):
    from .. import commands

    if args.target:
        return _eval_on_target(args)
    if args.precision != "fp32":
        raise PrunelabError("--precision int8 is judged in the runtime that runs it; add "
                            "--target onnxruntime-cpu (or openvino-cpu)")
    if str(args.model).endswith(".onnx"):
        raise PrunelabError(f"{args.model} is an ONNX file: evaluate it in its runtime with "
                            "--target onnxruntime-cpu (or openvino-cpu)")
    model, spec, data = open_model(args)
    r = commands.measure(model, spec, data, args.batch_size, args.threads, args.repeats)
    emit(args, r, lambda o: print_table(f"{o['model']} (test split)",
                                    ["model", "top-1", "MACs", "params", "latency ms"],
                                    [fmt_row(o)], lat_note(o)))


def _eval_on_target(args):
    from .. import commands
    from ..targets import TargetConfig

    cfg = TargetConfig(args.target, batch_size=args.batch_size, threads=args.threads or 1,
                       **precision_kwargs(args))
    onnx_file = str(args.model).endswith(".onnx")
    ref = args.model if onnx_file else open_model(args, data=False)[:2]
    r = commands.evaluate_on_target(ref, cfg, args.dataset, args.data_dir)

    def table(o):
        rows = []
        if "fp32_top1" in o and o["precision"] == "int8":
            rows.append([f"{o['model']} fp32", f"{100 * o['fp32_top1']:.2f}%",
                         f"{o['fp32_latency_ms']:.4f}", "1.00x"])
            lo, hi = o["speedup_interval"]
            rows.append([f"{o['model']} int8", f"{100 * o['top1']:.2f}%",
                         f"{o['latency_ms']:.4f}", f"{o['speedup']:.2f}x [{lo:.2f}, {hi:.2f}]"])
        else:
            rows.append([o["model"], f"{100 * o['top1']:.2f}%", f"{o['latency_ms']:.4f}", "-"])
        q = o.get("quantization")
        note = (f"{o['target']}, batch {args.batch_size}, {args.threads or 1} thread(s); top-1 "
                "computed by the runtime itself")
        if q:
            note += (f"; int8: {q['activations']} activations, {q['weights']} weights"
                     f"{' (7-bit)' if q['reduce_range'] else ''}, {q['method']} calibration on "
                     f"{q['images']} {q['data']} images ({q['reason']})")
        print_table("test split, in the runtime", ["model", "top-1", "latency ms",
                                                   "speed-up vs fp32 [95%]"], rows, note)
    emit(args, r, table)


def cmd_prune(args):
    from .. import commands

    if (args.ratio is None) == (args.keep is None):
        raise PrunelabError("give exactly one of --ratio or --keep")
    from ..criteria import parse_criterion

    from ..criteria import CRITERIA

    name, opts = parse_criterion(args.criterion)
    CRITERIA.get(name)  # an unknown name fails before any model or data is loaded
    if args.criterion_options:
        try:
            opts.update(json.loads(args.criterion_options))
        except json.JSONDecodeError:
            raise PrunelabError("--criterion-options must be a JSON object") from None
    if args.no_compensation:
        opts["compensation"] = "none"
    r = commands.prune(args.model, name, ratio=args.ratio, keep=args.keep, out=args.out,
                  round_to=args.round_to, batch_size=args.batch_size, threads=args.threads,
                  repeats=args.repeats, criterion_options=opts, **model_kwargs(args),
                  recal_batches=args.recal_batches, overwrite=args.overwrite)

    def table(o):
        b = o["base"]
        rows = [fmt_row(b), fmt_row({**o, "model": f"pruned ({o['criterion']})"})]
        rows.append(["change", f"{100 * (o['top1'] - b['top1']):+.2f} pts",
                     f"-{100 * o['macs_removed']:.1f}%",
                     f"-{100 * (1 - o['params'] / b['params']):.1f}%",
                     f"{o['measured_speedup']:.2f}x faster"])
        recal = (f"BN recalibrated on {o['bn_recalibration_batches']} training batches"
                 if o["bn_recalibration_batches"] else "BN statistics unchanged")
        print_table(f"before / after pruning (no fine-tuning, {recal}; test split)",
                    ["model", "top-1", "MACs", "params", "latency ms"], rows,
                    lat_note(o) + (f"\nsaved to {o['out']}" if o["out"] else ""))
    emit(args, r, table)




def cmd_criteria_evaluate(args):
    from ..io import check_out
    from ..sweep import SweepConfig, layer_sweep, uniform_sweep

    if args.out:
        check_out(args.out, "file", args.overwrite)
    model, spec, data = open_model(args)
    crits = [c.strip() for c in args.criteria.split(",") if c.strip()]
    if args.no_compensation:
        crits = [c + ":compensation=none" if c.split(":")[0] in ("fp-omp", "lrf") else c
                 for c in crits]
    cfg = SweepConfig(recal_batches=args.recal_batches, val_images=args.val_images,
                      seed=args.seed)
    if args.per_layer:
        rows = []
        for c in crits:
            rows += layer_sweep(model, spec, data, c, args.ratios, cfg)
    else:
        rows = uniform_sweep(model, spec, data, crits, args.ratios, cfg)
    if args.out:
        from ..io import atomic_write_text

        atomic_write_text(args.out, json.dumps(rows, indent=1))  # checked before the sweep

    def table(rows):
        base = rows[0]["base_top1"] if rows else 0
        cols = (["criterion", "layer", "ratio", "val top-1", "drop", "MACs"] if args.per_layer
                else ["criterion", "ratio", "val top-1", "vs base", "MACs kept", "score s"])
        out = []
        for r in rows:
            if args.per_layer:
                out.append([r["criterion"], r["layer"], f"{r['ratio']:.2f}",
                            f"{100 * r['top1']:.2f}%", f"{100 * r['drop']:+.2f}",
                            f"{r['macs'] / 1e6:.1f} M"])
            else:
                out.append([r["criterion"], f"{r['ratio']:.2f}", f"{100 * r['top1']:.2f}%",
                            f"{100 * (r['top1'] - base):+.2f}", f"{100 * r['macs_kept']:.1f}%",
                            f"{r['seconds']:.2f}"])
        print_table(f"{spec.name}: prune, recalibrate BN ({args.recal_batches} batches), validation "
                    f"top-1 (unpruned {100 * base:.2f}%)", cols, out,
                    "no fine-tuning; 'score s' = seconds the criterion took to score every filter")
    emit(args, rows, table)


TRAIN_KEYS = ("epochs", "lr", "weight_decay", "batch_size", "seed", "precision", "threads")


def cmd_train(args):
    from .. import commands
    from ..train import TrainConfig

    cfg = TrainConfig(**section_values(args, "train", TRAIN_KEYS))
    command = "prunelab " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("prunelab") else None
    r = commands.train(args.arch, args.out, args.dataset, args.data_dir, args.width, cfg,
                  command=command, overwrite=args.overwrite)
    emit(args, r, lambda o: print_table("trained", ["model", "test top-1", "val top-1", "seconds"],
                                    [[o["model"], f"{100 * o['top1']:.2f}%",
                                      f"{100 * o['val_top1']:.2f}%", f"{o['seconds']:.0f}"]],
                                    f"saved to {o['out']}"))


# the fine-tune options, as [finetune] in a run config (--teacher and --epochs apart)
FINETUNE_KEYS = ("kd_weight", "kd_temperature", "lr", "batch_size", "weight_decay",
                 "recal_batches", "recal_end", "precision", "threads")


def cmd_finetune(args):
    import os

    from .. import commands
    from ..distributed import init_from_env, is_main, launch, strip_nproc

    section_values(args, "finetune", ("epochs", "nproc") + FINETUNE_KEYS)
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:  # start them under torchrun
        code = launch(strip_nproc(sys.argv[1:]), args.nproc)
        if code:
            raise SystemExit(2 if code > 0 else 1)
        return
    init_from_env()
    command = "prunelab " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("prunelab") else None
    r = commands.finetune(args.model, args.epochs, args.out,
                     teacher=None if args.no_teacher else args.teacher,
                     kd_temperature=args.kd_temperature, kd_weight=args.kd_weight, lr=args.lr,
                     batch_size=args.batch_size, seed=args.seed, weight_decay=args.weight_decay,
                     recal_batches=args.recal_batches, recal_end=args.recal_end,
                     precision=args.precision, threads=args.threads, **model_kwargs(args),
                     command=command, overwrite=args.overwrite)

    def table(o):
        pct = lambda v: "-" if v is None else f"{100 * v:.2f}%"  # noqa: E731
        rows = [[o["from"], "as loaded", pct(o["before_val_top1"]), "-"]]
        if o["recal_val_top1"] is not None:
            rows.append(["", f"BN re-estimated ({o['bn_recalibration_batches']} batches)",
                         pct(o["recal_val_top1"]), "-"])
        end = ", BN re-estimated" if (o["final_bn_recalibration"] or {}).get("kept") else ""
        stage = (f"best epoch {o['best_epoch']}/{o['epochs']}" if o["best_epoch"] else
                 "start kept (no epoch beat it)")
        rows.append([o["model"], stage + end,
                     pct(o["after_val_top1"]), pct(o["test_top1"])])
        rows.append(["change", "", f"{100 * (o['after_val_top1'] - o['before_val_top1']):+.2f} "
                     "pts", ""])
        t = o["teacher"]
        kd = (f"distilled from {t['model']} (val top-1 {pct(t['val_top1'])}), weight "
              f"{o['kd_weight']}, temperature {o['kd_temperature']}" if t else "no distillation")
        print_table("before / after fine-tuning", ["model", "stage", "val top-1", "test top-1"], rows,
                    f"{o['epochs']} epochs, lr {o['lr']}, {o['seconds']:.0f}s\n{kd}\n"
                    f"test top-1 measured once, at the end\nsaved to {o['out']}")
    if is_main():
        emit(args, r, table)


def cmd_export(args):
    from .. import commands

    opts = dict(batch_size=args.batch_size, dynamic_batch=args.dynamic_batch,
                overwrite=args.overwrite, precision=args.precision, target=args.target,
                calibration=args.calibration, calib_images=args.calib_images,
                int8_types=args.int8_types, int8_layers=args.int8_layers)
    commands.check_export(args.onnx, **opts)  # before the model and data are opened
    model, spec, data = open_model(args, data=args.precision == "int8")
    r = commands.export_onnx((model, spec), args.onnx, opset=args.opset, data=data, **opts)
    emit(args, r, lambda o: print(
        f"wrote {o['onnx']} ({o['bytes'] / 1e6:.2f} MB, opset {o['opset']}, input "
        f"{o['input_shape']}): "
        + (f"the {o['precision']} graph the ONNX targets time" if not o["differs_from_measured"] else
           "differs from the timed graph: " + ", ".join(o["differs_from_measured"]))))


def register(sub) -> None:
    """Add the model subcommands to the ``prunelab`` parser's ``sub``."""
    from .. import commands
    from ..criteria import CRITERIA

    s = sub.add_parser("list", help="list registered models, criteria or datasets")
    s.add_argument("kind", choices=["models", "criteria", "datasets"])
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_list)
    for kind in ("models", "datasets"):
        s = sub.add_parser(kind, help=f"same as `prunelab list {kind}`")
        s.add_argument("--json", action="store_true")
        s.set_defaults(fn=cmd_list, kind=kind)
    s = sub.add_parser("criteria", help="filter criteria")
    csub = s.add_subparsers(dest="ccmd", required=True, parser_class=Parser)
    c = csub.add_parser("list", help="list registered criteria")
    c.add_argument("--json", action="store_true")
    c.set_defaults(fn=cmd_list, kind="criteria")
    from ..sweep import uniform_sweep

    c = csub.add_parser("evaluate", help=doc(uniform_sweep),
                        description="For each criterion and ratio: prune (uniformly, or one layer "
                        "at a time with --per-layer), recalibrate BN, report validation top-1 and "
                        "the seconds the criterion took to score all filters.")
    model_options(c)
    c.add_argument("--criteria", required=True,
                   help="comma-separated criteria; options as name:key=value, e.g. "
                        "fp-omp:compensation=sandwich")
    c.add_argument("--ratios", type=floats, default=[0.1, 0.3, 0.5],
                   help="comma-separated pruning ratios (default 0.1,0.3,0.5)")
    c.add_argument("--per-layer", action="store_true", help="prune one layer at a time")
    c.add_argument("--no-compensation", action="store_true",
                   help="fp-omp / lrf without weight compensation (the ablation)")
    c.add_argument("--recal-batches", type=int, default=20, help="BN recalibration batches")
    c.add_argument("--val-images", type=int, default=None, help="limit the validation images")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--out", help="also write the JSON rows to this file")
    c.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    c.add_argument("--json", action="store_true")
    c.set_defaults(fn=cmd_criteria_evaluate)

    s = sub.add_parser("eval", help=doc(commands.measure), description=doc(commands.measure)
                       + " With --target (onnxruntime-cpu, openvino-cpu): top-1 computed by that "
                       "runtime, of the fp32 graph or, with --precision int8, of the int8 graph "
                       "beside it; MODEL may then be an exported .onnx file, run as it is.")
    model_options(s)
    common_measure(s)
    from ..targets import TARGETS

    s.add_argument("--target", choices=TARGETS.names(), metavar="T",
                   help="judge the model in this runtime (onnxruntime-cpu, openvino-cpu)")
    precision_options(s)
    s.set_defaults(fn=cmd_eval)

    s = sub.add_parser("prune", help=doc(commands.prune), description=doc(commands.prune))
    model_options(s)
    s.add_argument("--criterion", default="l1", metavar="NAME[:key=value...]",
                   help=f"filter criterion: {', '.join(CRITERIA.names())} (default l1); options "
                        "as name:key=value")
    s.add_argument("--no-compensation", action="store_true",
                   help="fp-omp / lrf without weight compensation")
    s.add_argument("--criterion-options", help='JSON object of criterion options, e.g. {"seed": 1}')
    s.add_argument("--ratio", type=ratio, help="fraction of each layer's filters to remove")
    s.add_argument("--keep", type=keep_counts, help="per-layer keep counts: layer=N,... or file.json")
    s.add_argument("--round-to", type=int, default=1, help="align kept widths to this multiple")
    s.add_argument("--out", help="write the pruned model folder here")
    s.add_argument("--recal-batches", type=int, default=20,
                   help="re-estimate BN statistics on this many training batches (0: off)")
    common_measure(s)
    s.add_argument("--overwrite", action="store_true",
                   help="replace the output if it is one prunelab wrote (never anything else)")
    s.set_defaults(fn=cmd_prune)

    s = sub.add_parser("train", help=doc(commands.train), description=doc(commands.train))
    s.add_argument("arch", help="zoo architecture (see `prunelab models`) or path/file.py:factory")
    s.add_argument("--out", required=True, help="model folder to write")
    s.add_argument("--dataset", default="fmnist")
    s.add_argument("--data-dir")
    s.add_argument("--width", type=float, default=1.0, help="width multiplier")
    section_flags(s, "train", TRAIN_KEYS)  # from [train]'s one definition (prunelab.config)
    s.add_argument("--json", action="store_true")
    s.add_argument("--overwrite", action="store_true",
                   help="replace the output if it is one prunelab wrote (never anything else)")
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("finetune", help=doc(commands.finetune), description=doc(commands.finetune))
    model_options(s, help="pruned model folder, shipped model name, or path/file.py:factory")
    section_flags(s, "finetune", ("epochs",), required=("epochs",))
    s.add_argument("--out", required=True, help="model folder to write")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--teacher", default="parent", metavar="BASE",
                   help="model to distil from (default: the pruned model's parent when found)")
    g.add_argument("--no-teacher", action="store_true", help="no knowledge distillation")
    section_flags(s, "finetune", FINETUNE_KEYS)
    s.add_argument("--seed", type=int, default=0)
    section_flags(s, "finetune", ("nproc",))
    s.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    s.add_argument("--overwrite", action="store_true",
                   help="replace the output if it is one prunelab wrote (never anything else)")
    s.set_defaults(fn=cmd_finetune)

    s = sub.add_parser("export", help=doc(commands.export_onnx), description=doc(commands.export_onnx))
    model_options(s)
    s.add_argument("--onnx", required=True, help="ONNX file to write")
    s.add_argument("--opset", type=int, default=17)
    s.add_argument("--batch-size", type=int, default=1,
                   help="the batch the graph is exported (and timed) with (1)")
    s.add_argument("--dynamic-batch", action="store_true",
                   help="symbolic batch dimension (the timed graph has a fixed one)")
    precision_options(s)
    s.add_argument("--target", default="onnxruntime-cpu", choices=("onnxruntime-cpu",
                                                                    "openvino-cpu"),
                   help="the runtime an int8 graph is made for (default onnxruntime-cpu)")
    s.add_argument("--json", action="store_true")
    s.add_argument("--overwrite", action="store_true",
                   help="replace the output if it is one prunelab wrote (never anything else)")
    s.set_defaults(fn=cmd_export)
