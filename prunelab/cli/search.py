"""``prunelab search``: a thin layer over :func:`prunelab.searches.search_model`."""

from __future__ import annotations

import argparse
import json

from .common import emit, model_options, open_model, print_table, section_flags, section_values



def _option(s: str) -> tuple[str, object]:
    if "=" not in s:
        raise argparse.ArgumentTypeError(f"{s!r} must look like name=value, e.g. pop=24")
    k, v = s.split("=", 1)
    try:
        return k.strip(), json.loads(v)
    except json.JSONDecodeError:
        return k.strip(), v


TARGET_KEYS = ("batch_size", "threads", "precision", "calibration", "calib_images", "int8_types",
               "int8_layers")
SEARCH_KEYS = ("recal_batches", "val_images", "measure_front", "decision_processes", "fidelity",
               "score_precision")


def cmd_search(args):
    from ..searches import SEARCHES, SearchConfig
    from ..searches.run import method_entry, search_model
    from ..targets import TargetConfig

    SEARCHES.get(args.method)  # an unknown method fails before anything is loaded
    if args.criterion:
        from ..criteria import CRITERIA
        from ..criteria import parse_criterion

        CRITERIA.get(parse_criterion(args.criterion)[0])
    section_values(args, "target", TARGET_KEYS)
    section_values(args, "search", SEARCH_KEYS)
    section_values(args, "run", ("workers", "ray_address"))
    cfg = SearchConfig(method=args.method, criterion=args.criterion, target=TargetConfig(
        args.target, batch_size=args.batch_size, threads=args.threads, precision=args.precision,
        calibration=args.calibration, calib_images=args.calib_images,
        int8_types=args.int8_types, int8_layers=args.int8_layers), budget=args.budget,
        seed=args.seed, recal_batches=args.recal_batches, val_images=args.val_images,
        measure_front=args.measure_front, decision_processes=args.decision_processes,
        fidelity=args.fidelity, score_precision=args.score_precision, options=dict(args.option or []))
    method_entry(cfg)  # the method's options, before anything is loaded
    model, spec, data = open_model(args)  # a factory is probed with --dataset's input shape
    r = search_model(model, spec, data, cfg, args.out, args.cache_dir,
                     record={"model": str(args.model), "dataset": args.dataset},
                     parent_ref=str(args.model), workers=args.workers,
                     ray_address=args.ray_address)[0]

    def table(o):
        b, c = o["base"], o["chosen"]

        def row(name, p, extra=""):
            ms = p.get("latency_ms")
            return [name, f"{100 * p['top1']:.2f}%", f"{p['macs'] / 1e6:.2f} M",
                    f"{p['params'] / 1e6:.3f} M", "-" if ms is None else f"{ms:.3f}", extra]
        lo, hi = c.get("speedup_interval") or (c["measured_speedup"],) * 2
        own = c.get("method_choice")
        rows = [row("unpruned", b), row(f"landed ({o['method']})", c,
                                        f"{c['measured_speedup']:.2f}x [{lo:.2f}, {hi:.2f}]")]
        if own:
            # its front-run time is not paired like the landed figure: the ratio only
            rows.append(row(f"{o['method']}'s own choice", {**own, "latency_ms": None},
                            f"front run {own['measured_speedup']:.2f}x"))
        rows += [row(f"front {i + 1}", p, f"pred {p['predicted_ms']:.3f}")
                 for i, p in enumerate(o["pareto"])]
        met = "met" if c["budget_met"] else "NOT met"
        print_table(f"{o['method']} + {o['criterion']} on {o['model']}, {o['target']}: budget "
                    f"{o['budget']} {met}", ["model", "val top-1", "MACs", "params",
                                        "ms", "note"], rows,
                    f"speed-up {c['measured_speedup']:.2f}x, 95% interval [{lo:.2f}, {hi:.2f}]: "
                    f"{c['speedup_verdict']} ({o['target']}, batch "
                    f"{o['target_config']['batch_size']}, {o['target_config']['threads']} "
                    f"thread(s), paired with the unpruned model); landing: "
                    f"{(c.get('landing') or {}).get('status', '-')}"
                    f"{' - ' + c['landing']['message'] if (c.get('landing') or {}).get('message') else ''}; "
                    f"{o['evaluations']} evaluations in {o['search_seconds']:.0f} s (search) + "
                    f"{o['seconds'] - o['search_seconds']:.0f} s (measure, save); val top-1 on the "
                    f"whole validation split, front points on the search's subset; "
                    f"saved to {c['path']}; plot {o.get('plot')}")
    emit(args, r, table)


def register(sub) -> None:
    from ..searches import SEARCHES

    methods = "; ".join(f"{e.name}: {e.description}" for e in SEARCHES.entries())
    s = sub.add_parser("search", help="per-layer allocation search under a budget on a target",
                       description="Search per-layer widths under a budget, measured on a "
                       f"target. Methods: {methods}. Rerun the same command to resume.")
    model_options(s)
    s.add_argument("--method", required=True, help="search method (see above)")
    s.add_argument("--criterion", help="criterion spec name[:k=v] (default: the method's own: "
                   + ", ".join(f"{e.name} {e.meta['criterion']}" for e in SEARCHES.entries())
                   + ")")
    s.add_argument("--target", default="torch-cpu", help="latency target (prunelab targets)")
    s.add_argument("--budget", required=True,
                   help="latency=3.2ms | speedup=2.0 | macs=0.5 | params=0.3 (fraction kept)")
    s.add_argument("--out", required=True, help="run folder (rerun with it to resume)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--option", type=_option, action="append", metavar="NAME=VALUE",
                   help="method option, repeatable (e.g. --option pop=24 --option gens=10)")
    section_flags(s, "target", TARGET_KEYS)
    section_flags(s, "search", SEARCH_KEYS)
    section_flags(s, "run", ("workers", "ray_address"))
    s.add_argument("--cache-dir", help="latency cache folder (default ~/.cache/prunelab)")
    s.add_argument("--json", action="store_true", help="print the result as JSON")
    s.set_defaults(fn=cmd_search)
