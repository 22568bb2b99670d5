"""``prunelab run``, ``report`` and ``compare``: thin layers over :mod:`prunelab.pipeline` and
:mod:`prunelab.report`."""

from __future__ import annotations

from .common import doc, emit, print_table


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def print_summary(o: dict) -> None:
    """The verified before/after table of a pipeline run."""
    from ..pipeline import row_labels

    labels = row_labels(o)
    base = o["rows"]["unpruned"]["latency_ms"]
    rows = []
    for k in labels:
        r = o["rows"][k]
        rows.append([labels[k], _pct(r["test_top1"]), f"{r['macs'] / 1e6:.2f} M",
                     f"{r['params'] / 1e6:.3f} M",
                     f"{r['latency_ms']:.3f} ± {r['latency_iqr_ms'] / 2:.3f}",
                     f"{base / r['latency_ms']:.2f}x"])
    tc, p = o["target_config"], o["protocol"]
    met = "met" if o["budget_met"] else "NOT met"
    print_table(f"{o['method']} + {o['criterion']} on {o['model']}, {o['target']}: budget "
                f"{o['budget']} {met}", ["model", "test top-1", "MACs", "params",
                                    "latency ms (± IQR/2)", "speed-up"], rows,
                f"verified: test top-1 on {o['dataset']}; latency on {o['target']} (batch "
                f"{tc['batch_size']}, {tc['threads']} thread(s)), median of {p['repeats']} "
                f"interleaved "
                f"runs after {p['warmup']} warm-up; final vs unpruned {o['speedup']:.2f}x "
                f"({o['speedup_verdict']}); search {o['search_seconds']:.0f} s ({o['evaluations']} "
                f"evaluations), fine-tune {o['finetune_seconds']:.0f} s, wall "
                f"{o['wall_seconds']:.0f} "
                f"s; run folder {o['out']}")


def cmd_run(args):
    from ..pipeline import run_pipeline

    emit(args, run_pipeline(args.config, args.out), print_summary)


def cmd_report(args):
    from ..report import report

    def table(o):
        from ..ui import out

        out.print(f"wrote {o['html']} and {o['md']} ({', '.join(o['charts']) or 'no charts'})",
                  highlight=False)
    emit(args, report(args.run_dir), table)


def cmd_compare(args):
    from ..report import compare

    def table(o):
        rows = [[r["run"], r["method"], r["criterion"], r["target"],
                 f"{_pct(r['top1'])} ({r['split']})", f"{r['macs'] / 1e6:.2f} M",
                 f"{r['params'] / 1e6:.3f} M", f"{r['latency_ms']:.3f}",
                 f"{r['speedup']:.2f}x" + (" (noise)" if r["speedup_verdict"] == "within noise"
                                           else ""),
                 f"{r['search_seconds']:.0f}", f"{r['finetune_seconds']:.0f}"]
                for r in o["runs"]]
        print_table("runs compared", ["run", "method", "criterion", "target", "top-1", "MACs",
                                 "params", "ms", "speed-up", "search s", "fine-tune s"], rows,
                    "top-1 on the test split for verified runs (prunelab run), on validation for "
                    "bare "
                    "searches; latency and speed-up measured on each run's own target, interleaved "
                    "with the unpruned model" + (f"; plot {o['plot']}" if o["plot"] else ""))
    emit(args, compare(args.run_dirs, args.plot), table)


def _keys() -> str:
    """Every key of every [section], read from the sections themselves (prunelab.config)."""
    from ..config import SECTIONS

    return "; ".join(f"[{name}] " + ", ".join(
        k if k != "options" else f"[{name}.options]" for k in cls.model_fields)
        for name, cls in SECTIONS.items())


def register(sub) -> None:
    from ..pipeline import run_pipeline
    from ..report import compare, report

    s = sub.add_parser("run", help=doc(run_pipeline),
                       description=doc(run_pipeline) + " Config sections: " + _keys() +
                       ". See examples/*.toml.")
    s.add_argument("config", help="pipeline config (TOML), e.g. examples/quick.toml")
    s.add_argument("--out", help="run folder (default: [run] out, else runs/<config name>)")
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    s.set_defaults(fn=cmd_run)

    s = sub.add_parser("report", help=doc(report), description=doc(report))
    s.add_argument("run_dir", help="run folder (prunelab run) or search folder (prunelab search)")
    s.add_argument("--json", action="store_true", help="print the written paths as JSON")
    s.set_defaults(fn=cmd_report)

    s = sub.add_parser("compare", help=doc(compare), description=doc(compare))
    s.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    s.add_argument("--plot", metavar="F.png", help="write the accuracy-vs-speed-up plot here")
    s.add_argument("--json", action="store_true", help="print the table as JSON")
    s.set_defaults(fn=cmd_compare)
