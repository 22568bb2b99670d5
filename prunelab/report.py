"""Run reports and the comparison of runs.

:func:`report` reads a run folder written by :func:`prunelab.pipeline.run_pipeline` (or a bare
search folder written by :func:`prunelab.commands.run_search`) and writes ``report.md`` (charts as
PNG files in ``report_files/``) and ``report.html`` (self-contained: the same charts embedded as
``data:`` URIs).  It shows what the folder holds: the before/after table, the Pareto front, the
per-layer widths before and after, the per-layer latency before and after *as predicted* by the
search's lookup table on the target, the search's progress and the fine-tuning curve.

:func:`compare` puts several runs side by side in one table and one accuracy-vs-speed-up plot.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path

from .errors import PrunelabError
from .io import atomic_dir, atomic_write_bytes, atomic_write_text, read_json
from .pipeline import row_labels, verdict


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PrunelabError("reports need matplotlib; pip install 'prunelab[report]'") from None
    return plt


def _png(fig) -> bytes:
    plt = _plt()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _m(v, unit="M", d=2) -> str:
    return "-" if v is None else f"{v / 1e6:.{d}f} {unit}"


# ----------------------------------------------------------------------------- reading a run


class Run:
    """What a run (or bare search) folder holds; absent parts are ``None``."""

    def __init__(self, folder: str | os.PathLike):
        self.dir = Path(folder)
        if not self.dir.is_dir():
            raise PrunelabError(f"{folder} is not a folder; pass a run folder written by "
                                "prunelab run (or a search folder)")
        if (self.dir / "search" / "config.json").exists():
            self.search_dir = self.dir / "search"
        elif (self.dir / "evaluations.jsonl").exists() and (self.dir / "config.json").exists():
            self.search_dir = self.dir
        else:
            raise PrunelabError(f"{folder} holds no prunelab run or search (no search/ or "
                                "evaluations.jsonl); pass the folder given to --out")
        s = self.search_dir
        self.config = read_json(self.dir / "config.json")
        self.summary = read_json(self.dir / "summary.json")
        self.verify = read_json(self.dir / "verify.json")
        self.finetune = read_json(self.dir / "finetune.json") if s != self.dir else None
        self.environment = read_json(self.dir / "environment.json")
        self.result = read_json(s / "result.json")
        self.search_config = read_json(s / "config.json")
        self.state = read_json(s / "state.json")
        self.predictor = read_json(s / "predictor.json")
        self.evaluations = []
        if (s / "evaluations.jsonl").exists():
            for line in (s / "evaluations.jsonl").read_text().splitlines():
                try:
                    self.evaluations.append(json.loads(line))
                except json.JSONDecodeError:
                    break

    @property
    def name(self) -> str:
        return self.dir.resolve().name

    @property
    def method(self) -> str:
        return (self.result or self.search_config or {}).get("method", "?")

    @property
    def criterion(self) -> str:
        return (self.result or self.search_config or {}).get("criterion", "?")

    @property
    def target(self) -> str:
        r = self.result or {}
        if "target" in r:
            return r["target"]
        return ((self.search_config or {}).get("target") or {}).get("target", "?")

    def title(self) -> str:
        model = (self.summary or {}).get("model") or (self.search_config or {}).get("model", "?")
        budget = (self.result or self.search_config or {}).get("budget", "?")
        return f"{self.name}: {self.method} + {self.criterion} on {model}, {self.target}, " \
               f"budget {budget}"


# ----------------------------------------------------------------------------- charts


def _chart_pareto(run: Run) -> bytes | None:
    r = run.result
    if not r:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.6), dpi=110)
    ev = [e for e in run.evaluations if e.get("phase") != "base"]
    if ev:
        ax.scatter([e["latency_ms"] for e in ev], [100 * e["top1"] for e in ev], s=9,
                   c="#bbbbbb", label="evaluated (predicted latency, val subset)")
    ms = r.get("measured", [])
    ax.scatter([p["latency_ms"] for p in ms], [100 * p["top1"] for p in ms], s=22, c="#4c72b0",
               label="front points, measured")
    fr = r.get("pareto", [])
    ax.plot([p["latency_ms"] for p in fr], [100 * p["top1"] for p in fr], c="#4c72b0", lw=1.2,
            label="Pareto front (measured)")
    b, c = r["base"], r["chosen"]
    ax.scatter([b["latency_ms"]], [100 * b.get("val_top1_subset", b["top1"])], marker="*",
               s=160, c="#dd8452", label="unpruned", zorder=5)
    ax.scatter([c["latency_ms"]], [100 * c.get("val_top1_subset", c["top1"])], marker="D", s=70,
               facecolors="none", edgecolors="#c44e52", linewidths=2, label="chosen", zorder=6)
    ax.set_xlabel(f"latency on {r['target']} (ms per batch)")
    ax.set_ylabel("validation top-1 (%), BN recalibrated")
    ax.set_title("Pareto front of the search", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return _png(fig)


def _widths(run: Run) -> tuple[dict, dict] | None:
    r = run.result
    if not r:
        return None
    before = (run.predictor or {}).get("widths")
    mj = read_json(Path(r["chosen"]["path"]) / "model.json") if r["chosen"].get("path") else None
    pruned = ((mj or {}).get("provenance") or {}).get("pruned") or {}
    before = pruned.get("widths_before") or before
    if not before:
        return None
    return before, {**before, **r["chosen"]["keep"]}


def _chart_widths(run: Run) -> bytes | None:
    w = _widths(run)
    if not w:
        return None
    before, after = w
    plt = _plt()
    names = list(before)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.32 * len(names) + 2), 4.0), dpi=110)
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], [before[n] for n in names], 0.4, label="before",
           color="#bbbbbb")
    ax.bar([i + 0.2 for i in x], [after[n] for n in names], 0.4, label="after",
           color="#4c72b0")
    ax.set_xticks(list(x), names, rotation=70, fontsize=7)
    ax.set_ylabel("filters (pruning group width)")
    ax.set_title("per-layer widths before vs after", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def layer_latency(run: Run) -> list[dict] | None:
    """Per-layer latency before vs after, *predicted* from the search's lookup table (each unit
    = a conv/linear with its fused BN/activation/add, timed alone on the target)."""
    w = _widths(run)
    if not w or not run.predictor:
        return None
    from .latency.predictor import Predictor

    pred = Predictor.from_json(run.predictor)
    before, after = pred.unit_ms(None), pred.unit_ms(w[1])
    rows = [{"layer": u.name, "before_ms": a, "after_ms": b}
            for u, a, b in zip(pred.units, before, after)]
    if pred.reorder_ms:  # the layout credit is the network's, not a layer's: its own bar
        rows.append({"layer": "layout credit (elided reorders, ms saved)",
                     "before_ms": pred.reorder_ms * pred.elided(None),
                     "after_ms": pred.reorder_ms * pred.elided(w[1]), "credit": True})
    return rows


def _chart_layer_latency(run: Run, rows: list[dict] | None) -> bytes | None:
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.32 * len(rows) + 2), 4.0), dpi=110)
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["before_ms"] for r in rows], 0.4, label="before",
           color="#bbbbbb")
    ax.bar([i + 0.2 for i in x], [r["after_ms"] for r in rows], 0.4, label="after",
           color=["#55a868" if r.get("credit") else "#dd8452" for r in rows])
    ax.set_xticks(list(x), [r["layer"] for r in rows], rotation=70, fontsize=7)
    ax.set_ylabel("ms (predicted, lookup table)")
    ax.set_title(f"per-layer latency on {run.target}, predicted from the measured lookup table",
                 fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def _chart_progress(run: Run) -> bytes | None:
    ev = [e for e in run.evaluations if e.get("phase") != "base"]
    if not ev:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 3.8), dpi=110)
    t = [e.get("elapsed_s", i) for i, e in enumerate(ev)]
    feas = [e.get("feasible", False) for e in ev]
    ax.scatter([a for a, f in zip(t, feas) if f], [100 * e["top1"] for e, f in zip(ev, feas) if f],
               s=10, c="#4c72b0", label="under the budget")
    ax.scatter([a for a, f in zip(t, feas) if not f],
               [100 * e["top1"] for e, f in zip(ev, feas) if not f], s=10, c="#bbbbbb",
               label="over the budget")
    best, xs, ys = None, [], []
    for a, e, f in zip(t, ev, feas):
        if f and (best is None or e["top1"] > best):
            best = e["top1"]
        if best is not None:
            xs.append(a)
            ys.append(100 * best)
    if xs:
        ax.step(xs, ys, where="post", c="#c44e52", label="best under the budget")
    ax.set_xlabel("search time (s)" if "elapsed_s" in ev[0] else "evaluation")
    ax.set_ylabel("validation top-1 (%), search subset")
    ax.set_title(f"search progress ({len(ev)} evaluations)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _png(fig)


def _chart_finetune(run: Run) -> bytes | None:
    hist = (run.finetune or {}).get("history")
    if not hist:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.0, 3.5), dpi=110)
    e0 = run.finetune.get("recal_val_top1") or run.finetune.get("before_val_top1")
    xs = [0] + [h["epoch"] for h in hist]
    ys = [100 * (e0 or 0)] + [100 * h["val_top1"] for h in hist]
    ax.plot(xs, ys, marker="o", c="#4c72b0", label="validation top-1")
    be = run.finetune.get("best_epoch")
    if be is not None and be < len(ys):
        ax.scatter([be], [ys[be]], marker="D", s=60, facecolors="none", edgecolors="#c44e52",
                   linewidths=2, zorder=5, label="kept (best)")
    ax.set_xlabel("epoch (0 = searched model, BN re-estimated)")
    ax.set_ylabel("validation top-1 (%)")
    ax.set_title("fine-tuning", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _png(fig)


# ----------------------------------------------------------------------------- tables


def before_after(run: Run) -> tuple[list[str], list[list[str]], str]:
    """The before/after table: verified (test split) when the run has one, else the search's
    own figures (validation split)."""
    if run.verify:
        v = run.verify
        cols = ["model", "test top-1", "val top-1", "MACs", "params", "latency ms (± IQR/2)",
                "speed-up"]
        base = v["rows"]["unpruned"]["latency_ms"]
        labels = row_labels(v)
        rows = []
        for k in v["order"]:
            r = v["rows"][k]
            rows.append([labels[k], _pct(r["test_top1"]), _pct(r["val_top1"]), _m(r["macs"]),
                         _m(r["params"], d=3),
                         f"{r['latency_ms']:.3f} ± {r['latency_iqr_ms'] / 2:.3f}",
                         f"{base / r['latency_ms']:.2f}x"])
        tc = v["target_config"]
        note = ("int8 top-1s computed by the runtime on the int8 files; " if
                v.get("precision") == "int8" else "")
        note += (f"verified: test split ({v['dataset']}); latency on {v['target']} (batch "
                f"{tc['batch_size']}, {tc['threads']} thread(s)), median of "
                f"{v['protocol']['repeats']} interleaved runs after {v['protocol']['warmup']} "
                f"warm-up; final vs unpruned {_speedup(v['speedup'], v.get('speedup_interval'))} "
                f"({v['speedup_verdict']})")
        return cols, rows, note
    r = run.result
    if not r:
        return [], [], "the search has not finished: no result yet"
    cols = ["model", "val top-1", "MACs", "params", "latency ms", "speed-up"]
    b, c = r["base"], r["chosen"]
    rows = [["unpruned", _pct(b["top1"]), _m(b["macs"]), _m(b["params"], d=3),
             f"{b['latency_ms']:.3f}", "1.00x"],
            [f"chosen ({r['method']})", _pct(c["top1"]), _m(c["macs"]), _m(c["params"], d=3),
             f"{c['latency_ms']:.3f}",
             _speedup(c["measured_speedup"], c.get("speedup_interval"))]]
    land = c.get("landing") or {}
    note = (f"search result only (no fine-tuning or verification in this folder): validation "
            f"split, BN recalibrated; latency measured on {r['target']}, paired with the "
            f"unpruned model; {verdict(c['speedup_verdict'])}"
            + (f"; landing: {land['status']}" + (f" ({land['message']})" if land.get("message")
                                                 else "") if land else ""))
    return cols, rows, note


def _speedup(x: float, interval) -> str:
    """A speed-up with its 95% interval where there is one."""
    return f"{x:.2f}x" + (f" [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else "")


def _md_table(cols, rows) -> str:
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _html_table(cols, rows) -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    b = "".join("<tr>" + "".join(f"<td>{html.escape(str(x))}</td>" for x in r) + "</tr>"
                for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{b}</tbody></table>"


def _facts(run: Run) -> list[tuple[str, str]]:
    f = []
    s, r = run.summary, run.result
    if r:
        f.append(("search", f"{r['method']} + {r['criterion']}, {r['evaluations']} evaluations, "
                  f"{r['search_seconds']:.0f} s (+ {r['seconds'] - r['search_seconds']:.0f} s "
                  "measuring the front and saving)"))
        f.append(("budget", f"{r['budget']} ({'met' if r['chosen']['budget_met'] else 'NOT met'}"
                  " by the chosen model)"))
    elif run.state:
        f.append(("search", f"status {run.state.get('status')}, "
                  f"{run.state.get('evaluations', len(run.evaluations))} evaluations so far"))
    if run.finetune:
        ft = run.finetune
        t = (ft.get("teacher") or {}).get("model") or "none"
        f.append(("fine-tune", f"{ft['epochs']} epoch(s), lr {ft['lr']}, teacher {t} (KD weight "
                  f"{ft['kd_weight']}, T {ft['kd_temperature']}), best epoch {ft['best_epoch']}, "
                  f"{ft['seconds']:.0f} s"))
    if s:
        f.append(("wall time", f"{s['wall_seconds']:.0f} s over all sessions"))
    env = run.environment
    if env:
        dev = env["target_fingerprint"].get("device", {})
        f.append(("device", f"{dev.get('cpu', '?')} ({dev.get('usable_cores', '?')} usable "
                  f"cores); {env['target_fingerprint'].get('target')} "
                  + ", ".join(f"{k} {v}" for k, v in
                              env["target_fingerprint"].get("versions", {}).items())))
        f.append(("seeds", ", ".join(f"{k} {v}" for k, v in env["seeds"].items())))
        f.append(("versions", f"prunelab {env['prunelab']}, python {env['python']}, " +
                  ", ".join(f"{k} {v}" for k, v in env["libraries"].items() if v)))
    return f


# ----------------------------------------------------------------------------- the report

_CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;"
        "padding:3px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
        "img{max-width:100%;border:1px solid #eee}.note{color:#555;font-size:0.9em}")


def report(run_dir: str | os.PathLike) -> dict:
    """Write ``report.md`` and a self-contained ``report.html`` for a run (or search) folder;
    returns their paths and the sections written."""
    run = Run(run_dir)
    charts = {}
    lat_rows = layer_latency(run)
    for key, title, fn in [
            ("pareto", "Pareto front", lambda: _chart_pareto(run)),
            ("widths", "Per-layer widths before vs after", lambda: _chart_widths(run)),
            ("layer_latency", "Per-layer latency before vs after (predicted)",
             lambda: _chart_layer_latency(run, lat_rows)),
            ("progress", "Search progress", lambda: _chart_progress(run)),
            ("finetune", "Fine-tuning", lambda: _chart_finetune(run))]:
        png = fn()
        if png:
            charts[key] = (title, png)
    cols, rows, note = before_after(run)
    notes = {
        "pareto": "Grey: every evaluated candidate at its predicted latency (validation subset). "
                  "Blue: front points measured on the target.",
        "layer_latency": "Each layer with its fused BN/activation/add, timed alone on the target "
                         "when the lookup table was built, at the widths before and after; "
                         "predicted (table lookup, not a new measurement; whole-model latency "
                         "in the table above is measured).",
        "progress": "Every evaluation's validation top-1 (the search's subset) against the "
                    "search time; the line is the best under the budget so far.",
        "finetune": "Validation top-1 per epoch; the kept epoch is marked (test top-1 is taken "
                    "once, at the end).",
        "widths": "Filters kept per pruning group (a group is named by its root layer).",
    }
    facts = _facts(run)
    out = run.dir
    files = out / "report_files"
    with atomic_dir(files) as tmp:
        for k, (_, png) in charts.items():
            (tmp / f"{k}.png").write_bytes(png)
    md = [f"# {run.title()}", "", "## Before / after", "", _md_table(cols, rows) if rows else "",
          "", f"_{note}_", ""]
    md += [f"- **{k}**: {v}" for k, v in facts] + [""]
    if lat_rows:
        md += ["## Per-layer latency (predicted)", "",
               _md_table(["layer", "before ms", "after ms"],
                         [[r["layer"], f"{r['before_ms']:.4f}", f"{r['after_ms']:.4f}"]
                          for r in lat_rows]), ""]
    for k, (title, _) in charts.items():
        md += [f"## {title}", "", f"![{title}](report_files/{k}.png)", "", f"_{notes[k]}_", ""]
    atomic_write_text(out / "report.md", "\n".join(md))
    h = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(run.title())}"
         f"</title><style>{_CSS}</style></head><body>", f"<h1>{html.escape(run.title())}</h1>",
         "<h2>Before / after</h2>", _html_table(cols, rows) if rows else "",
         f"<p class='note'>{html.escape(note)}</p><ul>"]
    h += [f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in facts] + ["</ul>"]
    for k, (title, png) in charts.items():
        uri = "data:image/png;base64," + base64.b64encode(png).decode()
        h += [f"<h2>{html.escape(title)}</h2>", f"<img id='{k}' alt='{html.escape(title)}' "
              f"src='{uri}'>", f"<p class='note'>{html.escape(notes[k])}</p>"]
    if lat_rows:
        h += ["<h3>Per-layer latency table (predicted)</h3>",
              _html_table(["layer", "before ms", "after ms"],
                          [[r["layer"], f"{r['before_ms']:.4f}", f"{r['after_ms']:.4f}"]
                           for r in lat_rows])]
    h.append("</body></html>")
    atomic_write_text(out / "report.html", "\n".join(h))
    return {"run": str(out.resolve()), "html": str((out / "report.html").resolve()),
            "md": str((out / "report.md").resolve()), "charts": list(charts),
            "images": [str((files / f"{k}.png").resolve()) for k in charts]}


# ----------------------------------------------------------------------------- comparison


def _row(run: Run) -> dict:
    r, s = run.result or {}, run.summary
    if s:
        f, b = s["rows"]["final"], s["rows"]["unpruned"]
        return {"run": run.name, "dir": str(run.dir.resolve()), "method": s["method"],
                "criterion": s["criterion"], "target": s["target"], "budget": s["budget"],
                "verified": True, "split": "test", "top1": f["test_top1"],
                "base_top1": b["test_top1"], "searched_top1": s["rows"]["searched"]["test_top1"],
                "macs": f["macs"], "params": f["params"], "latency_ms": f["latency_ms"],
                "base_latency_ms": b["latency_ms"], "speedup": s["speedup"],
                "speedup_interval": s.get("speedup_interval"),
                "speedup_verdict": s["speedup_verdict"], "search_seconds": s["search_seconds"],
                "finetune_seconds": s["finetune_seconds"], "evaluations": s["evaluations"],
                "precision": s.get("precision", "fp32")}
    if not r:
        raise PrunelabError(f"{run.dir} has no finished search or run to compare; finish it "
                            "first (rerun the same command to resume)")
    c, b = r["chosen"], r["base"]
    return {"run": run.name, "dir": str(run.dir.resolve()), "method": r["method"],
            "criterion": r["criterion"], "target": r["target"], "budget": r["budget"],
            "verified": False, "split": "val", "top1": c["top1"], "base_top1": b["top1"],
            "searched_top1": c["top1"], "macs": c["macs"], "params": c["params"],
            "latency_ms": c["latency_ms"], "base_latency_ms": b["latency_ms"],
            "speedup": c["measured_speedup"], "speedup_interval": c.get("speedup_interval"),
            "speedup_verdict": verdict(c["speedup_verdict"]),
            "search_seconds": r["search_seconds"], "finetune_seconds": 0.0,
            "evaluations": r["evaluations"]}


def compare(run_dirs: list[str | os.PathLike], plot: str | os.PathLike | None = None) -> dict:
    """Several runs side by side: method, criterion, top-1, MACs, params, measured latency and
    speed-up on each run's target, search and fine-tune time; with ``plot``, one chart of
    accuracy vs measured speed-up of them all (PNG)."""
    if not run_dirs:
        raise PrunelabError("compare needs at least one run folder")
    rows = [_row(Run(d)) for d in run_dirs]
    res = {"runs": rows, "plot": None}
    if plot:
        plt = _plt()
        fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
        targets = sorted({r["target"] for r in rows})
        marks = dict(zip(targets, "os^vDP*X"))
        bases = {}
        for r in rows:
            bases.setdefault((r["target"], r["split"]), (r["base_latency_ms"], r["base_top1"]))
            ax.scatter([r["speedup"]], [100 * r["top1"]], marker=marks[r["target"]], s=50,
                       zorder=4, label=f"{r['method']} + {r['criterion']} ({r['run']})")
            ax.annotate(r["method"], (r["speedup"], 100 * r["top1"]), fontsize=7,
                        xytext=(4, 4), textcoords="offset points")
        for (t, split), (_, top) in bases.items():
            ax.scatter([1.0], [100 * top], marker="*", s=160, c="#dd8452", zorder=5,
                       label=f"unpruned ({t}, {split} split)")
        # runs are timed at different moments on a machine whose speed drifts: each run's
        # speed-up, measured interleaved with the unpruned model, is what compares across runs
        ax.set_xlabel("speed-up over the unpruned model, measured interleaved on the target")
        splits = {r["split"] for r in rows}
        ax.set_ylabel("top-1 (%), " + (" / ".join(sorted(splits))) + " split")
        ax.set_title("accuracy vs measured speed-up: " + ", ".join(targets), fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        atomic_write_bytes(Path(plot), _png(fig))
        res["plot"] = str(Path(plot).resolve())
    return res
