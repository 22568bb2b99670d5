"""Real architectures: every torchvision / timm model of the suite (tests/real_models.py) through
every step of tests/test_architectures_real.py (search with l1 on macs=0.6 and with deeplift on
speedup=1.5 on the scripted target, ONNX equality, save/load, the module unchanged), one fresh
process per model, into the coverage table of docs/architectures.md.

    OMP_NUM_THREADS=1 taskset -c 0 python bench/architectures.py          # every model
    OMP_NUM_THREADS=1 taskset -c 0 python bench/architectures.py resnet18 mixnet_s
    python bench/architectures.py --table                                 # the table only
    OMP_NUM_THREADS=1 taskset -c 1 python bench/architectures.py --ort    # one per family

Resumable model by model: bench/results/architectures.json keeps every finished row (with the
commit it ran on); naming models runs those again.  Then ``python bench/to_docs.py``.

``--ort``: one model per family (its first *ci* model, else its first) searched with l1 on
``speedup=1.5`` on onnxruntime-cpu (batch 1, 1 thread; timing: run it on a quiet core), landed
by the landing stage, then re-measured by ``prunelab latency compare`` of the two ONNX files in
6 new processes; bench/results/architectures-ort.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from prunelab.io import atomic_write_text  # noqa: E402
from landing import GOAL  # noqa: E402
from pareto import cpu_label  # noqa: E402
from prunelab.searches.landing import BAND, FLOOR  # noqa: E402
from tests.real_models import ARCHS, KNOWN, MODELS, ORT_BUDGET, STEPS, TP_CANNOT  # noqa: E402

RESULTS = ROOT / "bench" / "results"
JSON = RESULTS / "architectures.json"
ORT_JSON = RESULTS / "architectures-ort.json"
# the measured latency tables of --ort, kept between runs (keyed by the CPU and runtime): VGG-11's
# took over 20 minutes to build
ORT_CACHE = ROOT / "runs" / "architectures-ort-cache"
CHILD = """
import json, sys, tempfile
sys.path.insert(0, {root!r})
from tests.real_models import MODELS, STEPS, run_steps
with tempfile.TemporaryDirectory() as d:
    out = run_steps(MODELS[{name!r}], d, {steps}, cache_dir={cache!r})
print("RESULT " + json.dumps({{k: {{kk: vv for kk, vv in v.items() if kk != "trace"}}
                              for k, v in out.items()}}))
"""


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def run_one(name: str, timeout: float, steps: str = "STEPS", cache: str | None = None) -> dict:
    """One model in a fresh interpreter (its own imports, memory and crash); ``cache``: a
    latency cache kept across runs (a measured table survives a run cut off by its timeout)."""
    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT), name=name,
                                                               steps=steps, cache=cache)],
                           text=True, capture_output=True, timeout=timeout, cwd=ROOT)
        line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
        steps = json.loads(line[7:]) if line else {
            "crash": {"ok": False, "error": (p.stderr.strip().splitlines() or ["?"])[-1][:300]}}
    except subprocess.TimeoutExpired:
        steps = {"crash": {"ok": False, "error": f"over {timeout:.0f} s"}}
    a = MODELS[name]
    return {"model": name, "family": a.family, "source": f"{a.lib}.{a.fn}",
            "input": f"3x{a.size}x{a.size}", "ci": a.ci, "steps": steps,
            "seconds": round(time.perf_counter() - t0, 1), "commit": _commit()}


def cell(row: dict, step: str) -> str:
    s = row["steps"].get(step) or row["steps"].get("crash") or {}
    if s.get("ok"):
        if step == "macs":
            return f"pass ({s['note'].replace('kept ', '')} kept)"
        if step == "speedup":
            return f"pass ({s['note']})"
        return "pass"
    if "refused" in s:
        return "refused"
    if any("refused" in (row["steps"].get(k) or {}) for k in ("l1", "xai")) and s.get("note"):
        return "-"  # not reached: the search refused the model
    return "FAIL" + (f": {s['error'][:60]}" if s.get("error") else
                     f" ({s['note']})" if s.get("note") else "")


def passed(row: dict) -> bool:
    return all((row["steps"].get(s) or {}).get("ok") for s in STEPS)


def table(rows: list[dict]) -> str:
    order = {a.name: i for i, a in enumerate(ARCHS)}
    rows = sorted(rows, key=lambda r: order.get(r["model"], 999))
    ok = [r for r in rows if passed(r)]
    refused = [r for r in rows if not passed(r) and r["model"] in TP_CANNOT and "refused" in
               (r["steps"].get("l1") or {})]
    fams = sorted({r["family"] for r in rows})
    fam_ok = [f for f in fams if any(passed(r) for r in rows if r["family"] == f)]
    counts = {s: sum(bool((r["steps"].get(s) or {}).get("ok")) for r in rows) for s in STEPS}
    out = [f"**`python bench/architectures.py`** ({len(rows)} models, random weights, 10 classes; "
           "search with `method=\"uniform\"` on the `scripted` target; `l1` lands `macs=0.6` "
           "(within 3% below), `deeplift` lands `speedup=1.5` (landing stage's rule); ONNX run "
           "by ONNX Runtime equals the module; `pl.save`/`pl.load(like=)` equal; the user's "
           "module unchanged). CI runs the models marked *ci*; all of them run here and with `pytest -m models`.",
           "",
           f"Every step: **{len(ok)}/{len(rows)}** models; refused in one line where Torch-Pruning "
           f"itself cannot trace the model: {len(refused)}; families with a model passing every "
           f"step: {len(fam_ok)}/{len(fams)}. Per step: " +
           ", ".join(f"{s} {counts[s]}/{len(rows)}" for s in STEPS) + ".",
           "",
           "| family | model | input | l1 | XAI (deeplift) | ONNX | save/load | macs=0.6 landed "
           "| speedup=1.5 landed | seconds | commit |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ci = MODELS[r['model']].ci if r['model'] in MODELS else r['ci']  # the suite's mark now
        name = f"{r['model']}{' (ci)' if ci else ''}"
        out.append(f"| {r['family']} | {name} | {r['input']} | {cell(r, 'l1')} | "
                   f"{cell(r, 'xai')} | {cell(r, 'onnx')} | {cell(r, 'save_load')} | "
                   f"{cell(r, 'macs')} | {cell(r, 'speedup')} | {r['seconds']:.0f} | "
                   f"{r['commit']} |")
    notes = [r for r in rows if not passed(r)]
    if notes:
        out += ["", "Refusals and misses, as the library says them (known misses: "
                "`KNOWN` in tests/real_models.py):", ""]
        for r in notes:
            s = next((r["steps"][k] for k in ("l1", "xai", "onnx", "save_load", "crash")
                      if k in r["steps"] and not r["steps"][k].get("ok")
                      and ("refused" in r["steps"][k] or "error" in r["steps"][k])), None)
            why = "; ".join(f"{k}: {v}" for k, v in KNOWN.get(r["model"], {}).items())
            said = (s.get("refused") or s.get("error")) if s is not None else \
                ", ".join(f"{k} {r['steps'][k].get('note', '')}" for k in STEPS
                          if not (r["steps"].get(k) or {}).get("ok"))
            said = (said.strip().splitlines() or ["?"])[0][:220]
            out.append(f"- {r['model']}: {said}" + (f" (known: {why})" if why else ""))
    return "\n".join(out) + "\n"


def family_models() -> list[str]:
    """One model per family: its first *ci* model, else its first."""
    pick: dict[str, str] = {}
    for a in ARCHS:
        if a.family not in pick or (a.ci and not MODELS[pick[a.family]].ci):
            pick[a.family] = a.name
    return list(pick.values())


def ort_table(rows: list[dict]) -> str:
    lo, hi = 1.0 * ORT_BUDGET, (1 + BAND) * ORT_BUDGET

    def on(v: float | None) -> bool:
        return v is not None and lo <= v <= hi

    done = [r for r in rows if (r["steps"].get("ort") or {}).get("ok")]
    landed = [r for r in done if r["steps"]["ort"]["landing"] == "landed"]
    stairs = [r for r in done if r["steps"]["ort"]["landing"] == "staircase"]
    goal = [r for r in done if GOAL[0] * ORT_BUDGET <= r["steps"]["ort"]["remeasure"]
            <= GOAL[1] * ORT_BUDGET]
    fams = {r["family"] for r in rows}
    fam_landed = {r["family"] for r in landed}
    fam_stairs = {r["family"] for r in stairs} - fam_landed
    cpus = sorted({r.get("cpu", "?") for r in rows})
    out = [f"**`python bench/architectures.py --ort`** (one model per family, a second where the "
           "first cannot land; random weights, "
           f"10 classes; `pl.search(..., target=\"onnxruntime-cpu\", threads=1, batch_size=1, "
           f"budget=\"speedup={ORT_BUDGET:g}\", method=\"uniform\", criterion=\"l1\")`, "
           "the landing stage deciding in fresh processes; then `prunelab latency compare` of the "
           "unpruned and the pruned ONNX file in 6 new processes; CPU: "
           f"{', '.join(cpus)}; {len(fams)} of the {len(family_models())} families run so "
           f"far, {len(rows)} models).", "",
           f"Landed ({lo:g}-{hi:g}x, interval's lower end >= {FLOOR * ORT_BUDGET:.3g}x): "
           f"**{len(fam_landed)}/{len(fams)}** families"
           + (f", {len(fam_stairs)} more on a staircase step that meets the budget (both "
              "neighbours shown)" if fam_stairs else "")
           + f"; {len(landed)}/{len(rows)} models. The independent re-measure within "
           f"[{GOAL[0]:g}, {GOAL[1]:g}] x the budget (the landing benchmark's goal): "
           f"{len(goal)}/{len(rows)}; "
           f"inside {lo:g}-{hi:g}x: {sum(on(r['steps']['ort']['remeasure']) for r in done)}/"
           f"{len(rows)}.", "",
           "| family | model | input | landing | in search [95%] | re-measured [95%] | "
           "in-search vs re-measure | seconds | commit |", "|---|---|---|---|---|---|---|---|---|"]
    order = {a.name: i for i, a in enumerate(ARCHS)}
    for r in sorted(rows, key=lambda r: order.get(r["model"], 999)):
        s = r["steps"].get("ort") or r["steps"].get("crash") or {}
        if not s.get("ok"):
            why = (s.get("refused") or s.get("error") or "?").splitlines()[0][:120]
            out.append(f"| {r['family']} | {r['model']} | {r['input']} | {why} | - | - | - | "
                       f"{r['seconds']:.0f} | {r['commit']} |")
            continue
        a, b = s["interval"], s["remeasure_interval"]
        nb = s.get("neighbours") or []
        sides = ", ".join(f"{n['side']} {n['value']:.3f}x" for n in nb)
        land = s["landing"] + (f" ({sides})" if nb else "")
        out.append(f"| {r['family']} | {r['model']} | {r['input']} | {land} | "
                   f"{s['speedup']:.3f}x [{a[0]:.3f}, {a[1]:.3f}] | {s['remeasure']:.3f}x "
                   f"[{b[0]:.3f}, {b[1]:.3f}] | {100 * (s['speedup'] / s['remeasure'] - 1):+.1f}% | "
                   f"{r['seconds']:.0f} | {r['commit']} |")
    return "\n".join(out) + "\n"


def run_ort(models: list[str], timeout: float) -> None:
    from prunelab.hardware import cpu_info

    rows = {r["model"]: r for r in json.loads(ORT_JSON.read_text())} if ORT_JSON.exists() \
        else {}
    for name in models or [m for m in family_models() if m not in rows]:
        r = run_one(name, timeout, steps='("ort",)', cache=str(ORT_CACHE))
        r["cpu"] = cpu_label(cpu_info())
        rows[name] = r
        s = r["steps"].get("ort") or r["steps"].get("crash") or {}
        print(f"{name}: {s.get('note') or s.get('refused') or s.get('error')} "
              f"({r['seconds']:.0f} s)", flush=True)
        atomic_write_text(ORT_JSON, json.dumps(list(rows.values()), indent=1))
        atomic_write_text(RESULTS / "architectures-ort.md", ort_table(list(rows.values())))
    if rows:
        atomic_write_text(RESULTS / "architectures-ort.md", ort_table(list(rows.values())))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="*", help="models to run again (default: those not done)")
    ap.add_argument("--table", action="store_true", help="only rewrite the table")
    ap.add_argument("--timeout", type=float, default=None,
                    help="seconds per model (default 1800; 3600 with --ort)")
    ap.add_argument("--ort", action="store_true",
                    help="one model per family landed on onnxruntime-cpu (timing)")
    args = ap.parse_args()
    rows = {r["model"]: r for r in json.loads(JSON.read_text())} if JSON.exists() else {}
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        raise SystemExit(f"unknown model {unknown[0]!r}; models: {', '.join(MODELS)}")
    if args.ort:
        if args.table:
            rows = json.loads(ORT_JSON.read_text()) if ORT_JSON.exists() else []
            atomic_write_text(RESULTS / "architectures-ort.md", ort_table(rows))
        else:
            run_ort(args.models, args.timeout or 3600)
        return
    todo = [] if args.table else (args.models or [a.name for a in ARCHS if a.name not in rows])
    for name in todo:
        rows[name] = run_one(name, args.timeout or 1800)
        r = rows[name]
        print(f"{name}: {'pass' if passed(r) else 'not every step'} ({r['seconds']:.0f} s)",
              flush=True)
        atomic_write_text(JSON, json.dumps(list(rows.values()), indent=1))
        atomic_write_text(RESULTS / "architectures.md", table(list(rows.values())))
    atomic_write_text(RESULTS / "architectures.md", table(list(rows.values())))


if __name__ == "__main__":
    main()
