"""``prunelab targets`` and ``prunelab latency build|validate|profile|steps|compare``: a thin layer
over :mod:`prunelab.commands.latency` (each command's help is the docstring of its call)."""

from __future__ import annotations


from .common import (doc, emit, model_options, open_model, Parser, precision_kwargs,
                     precision_options, print_table)


def _cfg(args):
    from ..targets import TargetConfig

    return TargetConfig(args.target, batch_size=args.batch_size, threads=args.threads,
                        **precision_kwargs(args))


def _lut(args):
    from ..latency.lut import LutConfig

    return LutConfig(args.sweep, args.nodes, repeats=args.lut_repeats)


def _say():
    """Progress on one self-overwriting stderr line when it is a terminal; silent otherwise."""
    import sys

    from ..ui import quiet

    if quiet() or not sys.stderr.isatty():
        return lambda s: None
    return lambda s: sys.stderr.write(f"\r{s[:100]}\x1b[K") and sys.stderr.flush()



def _model(args):
    """The model options resolved once (:func:`.common.open_model`), as a ``(model, spec)``."""
    model, spec, _ = open_model(args, data=False)
    return model, spec


def _note(o) -> str:
    return f"{o['target']}, batch {o['batch_size']}, {o['threads']} threads, {o['precision']}"


def cmd_targets(args):
    from ..commands import latency as api

    rows = api.targets()
    emit(args, rows, lambda o: print_table("latency targets", ["name", "runtime", "device",
                                                           "available", "description / fix"],
                                       [[r["name"], r["runtime"], r["device"],
                                         "yes" if r["available"] else "no",
                                         r["reason"] or r["description"]] for r in o]))


def cmd_build(args):
    from ..commands import latency as api

    r = api.build(_model(args), _cfg(args), args.cache_dir, args.calibrate, _say(), _lut(args))
    emit(args, r, lambda o: print_table(
        f"lookup table of {o['model']}", ["signature", "step in", "step out", "grid"],
        [[t["signature"], str(t["step_in"]), str(t["step_out"]),
          f"{len(t['nodes_in'])}x{len(t['nodes_out'])}"] for t in o["tables"]],
        f"{_note(o)}; {o['lut_points_measured']} points measured in {o['lut_seconds']:.0f} s "
        f"(cache {o['cache']}); calibrated ms = {_calib(o)} + {o['overhead_ms']:.3f}; "
        f"unpruned predicted {o['predicted_ms']:.3f} ms"))


def _calib(o) -> str:
    if o.get("coefs"):
        return " + ".join(f"{v:.3f} x {k}" for k, v in o["coefs"].items())
    return f"{o['scale']:.3f} x sum"


def cmd_validate(args):
    from ..commands import latency as api

    r = api.validate(_model(args), _cfg(args), args.samples, args.seed, args.cache_dir,
                     args.calibrate, _say(), _lut(args))
    if args.json and not args.rows:
        r = {k: v for k, v in r.items() if k != "rows"}
    emit(args, r, lambda o: print_table(
        f"predicted vs measured latency of {o['model']} ({o['samples']} random widths)",
        ["target", "MAPE", "Spearman", "measured range ms", "median noise (IQR)"],
        [[o["target"], f"{100 * o['mape']:.1f}%", f"{o['spearman']:.3f}",
          f"{o['measured_range_ms'][0]:.3f} - {o['measured_range_ms'][1]:.3f}",
          f"{100 * o['median_rel_iqr']:.1f}%"]],
        f"{_note(o)}; table built in {o['lut_seconds']:.0f} s ({o['lut_points_measured']} new "
        f"points); fingerprint {o['fingerprint']}"))


def cmd_profile(args):
    from ..commands import latency as api
    from ..latency.measure import Protocol

    r = api.profile(_model(args), _cfg(args), args.cache_dir, Protocol(repeats=args.repeats),
                    args.plot, _say())
    rows = [[x["layer"], x["kind"], f"{x['cin']}->{x['cout']}", f"{x['k']}/{x['stride']}",
             f"{x['hw'][0]}x{x['hw'][1]}", x["fused"], f"{x['macs'] / 1e6:.2f}",
             f"{x['ms']:.4f}", f"{100 * x['share']:.1f}%"] for x in r["layers"]]
    rows.append(["(other)", "", "", "", "", "", "", f"{r['other_ms']:.4f}", ""])
    emit(args, r, lambda o: print_table(
        f"{o['model']} on {o['target']}: where the time goes",
        ["layer", "kind", "channels", "k/s", "input", "fused", "MMACs", "ms alone", "share"], rows,
        f"{_note(o)}; whole model {o['latency_ms']:.3f} ms (IQR {o['latency']['iqr_ms']:.3f}), "
        f"{o['macs'] / 1e6:.1f} M MACs; layers alone sum to {o['layers_sum_ms']:.3f} ms"
        + (f"; chart {o['plot']}" if o.get("plot") else "")))


def cmd_steps(args):
    from ..commands import latency as api

    r = api.steps(_model(args), _cfg(args), args.cache_dir, _say(), args.calibrate, _lut(args))

    def short(ws):
        return ",".join(map(str, ws)) if len(ws) <= 12 else (
            ",".join(map(str, ws[:5])) + ",...," + ",".join(map(str, ws[-3:])))
    emit(args, r, lambda o: print_table(
        f"hardware step sizes of {o['model']}", ["group", "width", "step", "useful widths"],
        [[g["group"], str(g["width"]), str(g["step"]), short(g["useful_widths"])]
         for g in o["groups"]], _note(o)))


def cmd_compare(args):
    from ..commands import latency as api
    from ..latency.measure import Protocol

    # an .onnx file is timed as it is (e.g. an int8 export); the rest are models to open
    models = [m if str(m).endswith(".onnx") else open_model(args, m, data=False)[:2]
              for m in args.models]
    r = api.compare_models(models, _cfg(args), Protocol(repeats=args.repeats,
                                                        sessions=args.sessions),
                           args.processes, args.seed)

    def vs(v):
        if "low" not in v:
            return "1 (reference)"
        return (f"{v['estimate']:.3f}x [{v['low']:.3f}, {v['high']:.3f}] ({v['verdict']})")
    emit(args, r, lambda o: print_table(
        "interleaved latency", ["model", "MMACs", "median ms", "IQR ms",
                                "speed-up vs first [95% interval]"],
        [[m["model"], f"{m['macs'] / 1e6:.2f}" if m["macs"] is not None else "-",
          f"{m['latency_ms']:.4f}",
          f"{m['latency']['iqr_ms']:.4f}", vs(m["vs_first"])] for m in o["models"]],
        _note(o) + (f"; interval from {o['processes']} fresh processes (paired ABBA sessions)"
                    if o["processes"] else f"; interval from {args.sessions} paired sessions "
                    "in this process")))


def _target_opts(p):
    from ..targets import TARGETS

    p.add_argument("--target", default="torch-cpu", choices=TARGETS.names(), metavar="T",
                   help=f"{', '.join(TARGETS.names())} (default torch-cpu)")
    p.add_argument("--batch-size", type=int, default=1, help="batch size (default 1)")
    p.add_argument("--threads", type=int, default=1, help="runtime threads (default 1)")
    precision_options(p)
    p.add_argument("--cache-dir", help="measurement cache (default $PRUNELAB_CACHE or "
                   "~/.cache/prunelab)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def register(sub) -> None:
    """Add ``targets`` and ``latency`` to the main parser's subcommands."""
    from ..commands import latency as api

    s = sub.add_parser("targets", help=doc(api.targets), description=doc(api.targets))
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_targets)

    s = sub.add_parser("latency", help="latency on the target runtime: lookup tables, validation, "
                       "profiles, step sizes")
    lsub = s.add_subparsers(dest="lcmd", required=True, parser_class=Parser)
    for name, fn, call in (("build", cmd_build, api.build), ("validate", cmd_validate,
                                                             api.validate),
                           ("profile", cmd_profile, api.profile), ("steps", cmd_steps, api.steps)):
        c = lsub.add_parser(name, help=doc(call), description=doc(call))
        model_options(c)
        _target_opts(c)
        c.set_defaults(fn=fn)
        if name in ("build", "validate", "steps"):
            c.add_argument("--calibrate", type=int, default=api.CALIBRATE,
                           help="random pruned variants measured to calibrate the predictor "
                                f"(default {api.CALIBRATE})")
            c.add_argument("--sweep", type=int, default=256,
                           help="at most this many widths per axis sweep (default 256)")
            c.add_argument("--nodes", type=int, default=6, help="table grid nodes per axis "
                           "(default 6)")
            c.add_argument("--lut-repeats", type=int, default=20,
                           help="timed runs per table point (default 20)")
        if name == "validate":
            c.add_argument("--samples", type=int, default=50, help="random widths (default 50)")
            c.add_argument("--seed", type=int, default=0)
            c.add_argument("--rows", action="store_true", help="with --json: every sample too")
        if name == "profile":
            c.add_argument("--plot", metavar="F.png", help="write a bar chart of the layers")
            c.add_argument("--repeats", type=int, default=50, help="whole-model timed runs")
    c = lsub.add_parser("compare", help=doc(api.compare_models),
                        description=doc(api.compare_models))
    model_options(c, many=True)
    _target_opts(c)
    c.add_argument("--repeats", type=int, default=50,
                   help="timed runs per model and session (default 50)")
    c.add_argument("--sessions", type=int, default=3,
                   help="fresh runtime sessions per model; the figure is the fastest session's "
                   "median (default 3: a stretch of interference can slow a whole session); with "
                   "--processes 0 the paired samples of the interval")
    c.add_argument("--processes", type=int, default=6,
                   help="fresh processes, one paired sample of the speed-up each, for the 95%% "
                   "interval (default 6, the fewest for a decision; 0: sessions in this process)")
    c.add_argument("--seed", type=int, default=0, help="which model is made first in the first "
                   "sample (then alternating)")
    c.set_defaults(fn=cmd_compare)
