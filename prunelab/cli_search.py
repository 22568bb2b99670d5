"""``prunelab search``: a thin layer over :func:`prunelab.searches.run_search`."""

from __future__ import annotations

import argparse
import json



def _option(s: str) -> tuple[str, object]:
    if "=" not in s:
        raise argparse.ArgumentTypeError(f"{s!r} must look like name=value, e.g. pop=24")
    k, v = s.split("=", 1)
    try:
        return k.strip(), json.loads(v)
    except json.JSONDecodeError:
        return k.strip(), v


def cmd_search(args):
    from .cli import _emit, _table
    from .searches import SEARCHES, SearchConfig, run_search
    from .targets import TargetConfig

    SEARCHES.get(args.method)  # an unknown method fails before anything is loaded
    if args.criterion:
        from .criteria import CRITERIA
        from .sweep import parse_criterion

        CRITERIA.get(parse_criterion(args.criterion)[0])
    cfg = SearchConfig(args.method, args.criterion, TargetConfig(
        args.target, batch_size=args.batch_size, threads=args.threads), args.budget, args.seed,
        args.recal_batches, args.val_images, args.measure_front, dict(args.option or []))
    r = run_search(args.model, cfg, args.out, args.cache_dir, args.dataset, args.data_dir)

    def table(o):
        b, c = o["base"], o["chosen"]

        def row(name, p, extra=""):
            return [name, f"{100 * p['top1']:.2f}%", f"{p['macs'] / 1e6:.2f} M",
                    f"{p['params'] / 1e6:.3f} M", f"{p['latency_ms']:.3f}", extra]
        rows = [row("unpruned", b), row(f"chosen ({o['method']})", c,
                                        f"{c['measured_speedup']:.2f}x")]
        rows += [row(f"front {i + 1}", p, f"pred {p['predicted_ms']:.3f}")
                 for i, p in enumerate(o["pareto"])]
        met = "met" if c["budget_met"] else "NOT met"
        _table(f"{o['method']} + {o['criterion']} on {o['model']}, {o['target']}: budget "
               f"{o['budget']} {met}", ["model", "val top-1", "MACs", "params",
                                        "ms", "note"], rows,
               f"speed-up {c['measured_speedup']:.2f}x: {c['speedup_verdict']} "
               f"({o['target']}, batch {o['target_config']['batch_size']}, "
               f"{o['target_config']['threads']} thread(s), interleaved medians); "
               f"{o['evaluations']} evaluations in {o['search_seconds']:.0f} s (search) + "
               f"{o['seconds'] - o['search_seconds']:.0f} s (measure, save); val top-1 on the "
               f"whole validation split, front points on the search's subset; "
               f"saved to {c['path']}; plot {o.get('plot')}")
    _emit(args, r, table)


def register(sub) -> None:
    from .cli import factory_arg
    from .searches import SEARCHES

    methods = "; ".join(f"{e.name}: {e.description}" for e in SEARCHES.entries())
    s = sub.add_parser("search", help="per-layer allocation search under a budget on a target",
                       description="Search per-layer widths under a budget, measured on a "
                       f"target. Methods: {methods}. Rerun the same command to resume.")
    s.add_argument("model", help="shipped model name or model folder")
    factory_arg(s)
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
    s.add_argument("--batch-size", type=int, default=1, help="target batch size (default 1)")
    s.add_argument("--threads", type=int, default=1, help="target threads (default 1)")
    s.add_argument("--recal-batches", type=int, default=6,
                   help="BN re-estimation batches of 128 per candidate (default 6)")
    s.add_argument("--val-images", type=int, default=1000,
                   help="validation images per candidate (default 1000; 0 = all)")
    s.add_argument("--measure-front", type=int, default=12,
                   help="front points measured on the target at the end (default 12)")
    s.add_argument("--cache-dir", help="latency cache folder (default ~/.cache/prunelab)")
    s.add_argument("--dataset")
    s.add_argument("--data-dir")
    s.add_argument("--json", action="store_true", help="print the result as JSON")
    s.set_defaults(fn=cmd_search)
