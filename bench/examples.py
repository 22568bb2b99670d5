"""The shipped example configs side by side: after

    for c in examples/*.toml; do .venv/bin/prunelab run "$c"; done

this writes ``bench/results/examples-compare.{md,json,png}`` (``prunelab compare`` of every
finished example run, plus each run's wall time) and copies each run's ``report.md`` with its
charts to ``bench/results/examples/<run>/``, so docs/pipeline.md can quote them
(``bench/to_docs.py``).

    .venv/bin/python bench/examples.py [--runs runs]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from prunelab.io import atomic_write_text
from prunelab.report import compare

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results"
ORDER = ["nsga2-deeplift", "cie-l1", "omp-search-fp-omp", "abc-l1", "uniform-l1", "global-l1"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default=str(ROOT / "runs"))
    args = ap.parse_args()
    runs = Path(args.runs)
    done = [runs / n for n in ORDER if (runs / n / "summary.json").exists()]
    missing = [n for n in ORDER if runs / n not in done]
    if not done:
        raise SystemExit(f"no finished example run under {runs}; run examples/*.toml first")
    res = compare([str(d) for d in done], plot=OUT / "examples-compare.png")
    lines = ["| run | method + criterion | test top-1: unpruned / searched / final | MACs | "
             "params | latency ms: final vs unpruned | speed-up | evaluations | search s | "
             "fine-tune s | wall s |", "|" + "---|" * 11]
    for r, d in zip(res["runs"], done):
        wall = sum(json.loads((d / "timing.json").read_text()).get("sessions", []))
        r["wall_seconds"] = wall
        noise = " (within noise)" if r["speedup_verdict"] == "within noise" else ""
        lines.append(
            f"| {r['run']} | {r['method']} + {r['criterion']} | {100 * r['base_top1']:.2f}% / "
            f"{100 * r['searched_top1']:.2f}% / **{100 * r['top1']:.2f}%** | "
            f"{r['macs'] / 1e6:.2f} M | {r['params'] / 1e6:.3f} M | {r['latency_ms']:.3f} vs "
            f"{r['base_latency_ms']:.3f} | **{r['speedup']:.2f}x**{noise} | {r['evaluations']} | "
            f"{r['search_seconds']:.0f} | {r['finetune_seconds']:.0f} | {wall:.0f} |")
        dst = OUT / "examples" / r["run"]
        shutil.rmtree(dst, ignore_errors=True)
        if (d / "report.md").exists():
            dst.mkdir(parents=True)
            shutil.copy(d / "report.md", dst / "report.md")
            shutil.copytree(d / "report_files", dst / "report_files")
    lines += ["", "Every run: resnet20.fmnist on onnxruntime-cpu (batch 1, 1 thread), budget "
              "`speedup=1.5`, 8 fine-tune epochs distilled from the unpruned model; top-1 on the "
              "test split; latency measured interleaved with the unpruned model in the run's own "
              "verify stage (300 runs after 20 warm-up), so compare speed-ups rather than "
              "milliseconds across rows. Reports: `bench/results/examples/<run>/report.md`. "
              "Plot: `bench/results/examples-compare.png`. Command: `.venv/bin/python "
              "bench/examples.py` after `for c in examples/*.toml; do .venv/bin/prunelab run "
              "\"$c\"; done`." + (f" Not run: {', '.join(missing)}." if missing else "")]
    atomic_write_text(OUT / "examples-compare.md", "\n".join(lines) + "\n")
    atomic_write_text(OUT / "examples-compare.json", json.dumps(res, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
