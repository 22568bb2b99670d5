"""Copy the benchmark tables from bench/results/ into the docs pages between their markers, so
the documentation quotes exactly what the bench scripts wrote:

========================  =======================================================
marker                    page
========================  =======================================================
``latency-validate``      docs/latency.md   (bench/latency_validate.py)
``step-example``          docs/latency.md   (bench/step_example.py)
``int8-proxy``            docs/latency.md   (bench/int8_proxy.py)
``int8-grid``             docs/latency.md   (bench/int8_grid.py)
``int8-layers``           docs/latency.md   (bench/int8_layers.py)
``criteria-tables``       docs/criteria.md  (bench/criteria.py)
``search-tables``         docs/searches.md  (bench/search.py)
``landing``               docs/searches.md  (bench/landing.py)
``landing-drift``         docs/searches.md  (bench/landing.py drift)
``fidelity``              docs/searches.md  (bench/fidelity.py table)
``architectures``         docs/architectures.md (bench/architectures.py)
``architectures-ort``     docs/architectures.md (bench/architectures.py --ort)
``examples-compare``      docs/pipeline.md  (bench/examples.py)
``scaleout``              docs/scaleout.md  (bench/scaleout.py)
``cluster-cost``          docs/scaleout.md  (bench/cluster_cost.py)
``pareto-resnet20``       docs/proof.md     (bench/pareto.py resnet20)
``pareto-resnet56``       docs/proof.md     (bench/pareto.py resnet56)
========================  =======================================================

A block is ``<!-- marker -->`` ... ``<!-- /marker -->``; a page without its block is an error.

    python bench/to_docs.py
"""

from __future__ import annotations

import re
from pathlib import Path

from prunelab.io import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs"


def splice(text: str, marker: str, body: str, page: str = "the page") -> str:
    pat = re.compile(rf"(<!-- {marker} -->\n).*?(<!-- /{marker} -->)", re.S)
    if not pat.search(text):
        raise SystemExit(f"{page} has no <!-- {marker} --> ... <!-- /{marker} --> block")
    return pat.sub(lambda m: m.group(1) + body.rstrip() + "\n" + m.group(2), text)


def blocks() -> list[tuple[str, str, str]]:
    """(page, marker, body) for every result file that exists."""
    out = []
    val = RESULTS / "latency_validate.md"
    if val.exists():
        out.append(("latency.md", "latency-validate", val.read_text()))
    steps = sorted(RESULTS.glob("step_example_*.md"))
    if steps:
        out.append(("latency.md", "step-example", "\n".join(p.read_text() for p in steps)))
    proxy = RESULTS / "int8_proxy.md"
    if proxy.exists():
        out.append(("latency.md", "int8-proxy", proxy.read_text()))
    layers = RESULTS / "int8_layers.md"
    if layers.exists():
        out.append(("latency.md", "int8-layers", layers.read_text()))
    grid = RESULTS / "int8.md"
    if grid.exists():
        out.append(("latency.md", "int8-grid", grid.read_text()))
    crit = sorted(RESULTS.glob("criteria-*.md"))
    if crit:
        out.append(("criteria.md", "criteria-tables", "\n".join(p.read_text() for p in crit)))
    searches = [RESULTS / f"search-{s}.md" for s in ("resnet20", "ort-speedup", "resnet56")]
    searches = [p for p in searches if p.exists()]
    if searches:
        out.append(("searches.md", "search-tables", "\n".join(p.read_text() for p in searches)))
    land = RESULTS / "landing.md"
    if land.exists():
        out.append(("searches.md", "landing", land.read_text()))
    fid = RESULTS / "fidelity.md"
    if fid.exists():
        out.append(("searches.md", "fidelity", fid.read_text()))
    drift = RESULTS / "landing-drift.md"
    if drift.exists():  # the calibration, without its per-cell table
        out.append(("searches.md", "landing-drift",
                    drift.read_text().split("\n| cell |")[0].rstrip() + "\n"))
    arch = RESULTS / "architectures.md"
    if arch.exists():
        out.append(("architectures.md", "architectures", arch.read_text()))
    arch_ort = RESULTS / "architectures-ort.md"
    if arch_ort.exists():
        out.append(("architectures.md", "architectures-ort", arch_ort.read_text()))
    ex = RESULTS / "examples-compare.md"
    if ex.exists():
        out.append(("pipeline.md", "examples-compare", ex.read_text()))
    for name in ("scaleout", "cluster_cost"):
        res = RESULTS / f"{name}.md"
        if res.exists():
            out.append(("scaleout.md", name.replace("_", "-"), res.read_text()))
    for model in ("resnet20", "resnet56"):
        res = RESULTS / f"pareto-{model}.md"
        if res.exists():
            out.append(("proof.md", f"pareto-{model}", pareto_body(res.read_text())))
    return out


def main() -> None:
    pages: dict[str, str] = {}
    for page, marker, body in blocks():
        text = pages.get(page)
        if text is None:
            text = (DOCS / page).read_text()
        pages[page] = splice(text, marker, body, f"docs/{page}")
    for page, text in pages.items():
        if (DOCS / page).read_text() != text:
            atomic_write_text(DOCS / page, text)


def pareto_body(md: str) -> str:
    """bench/pareto.py's table file without its title; its section heading in bold (the page
    around it has its own heading)."""
    lines = md.splitlines()[1:]
    return "\n".join(f"**{ln[3:]}**" if ln.startswith("## ") else ln for ln in lines).strip()


if __name__ == "__main__":
    main()
