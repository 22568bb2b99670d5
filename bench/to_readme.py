"""Copy the benchmark tables from bench/results/ into README.md between their markers
(``<!-- latency-validate -->`` ... ``<!-- /latency-validate -->`` and the same for
``step-example``, ``criteria-tables``, ``search-tables``, ``examples-compare``, ``scaleout``,
``cluster-cost``, ``pareto-resnet20`` and ``pareto-resnet56``), so the
README quotes exactly what the bench scripts wrote.

    python bench/to_readme.py
"""

from __future__ import annotations

import re
from pathlib import Path

from prunelab.io import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def splice(text: str, marker: str, body: str) -> str:
    pat = re.compile(rf"(<!-- {marker} -->\n).*?(<!-- /{marker} -->)", re.S)
    if not pat.search(text):
        raise SystemExit(f"README.md has no <!-- {marker} --> ... <!-- /{marker} --> block")
    return pat.sub(lambda m: m.group(1) + body.rstrip() + "\n" + m.group(2), text)


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    val = RESULTS / "latency_validate.md"
    if val.exists():
        text = splice(text, "latency-validate", val.read_text())
    steps = sorted(RESULTS.glob("step_example_*.md"))
    if steps:
        text = splice(text, "step-example", "\n".join(p.read_text() for p in steps))
    crit = sorted(RESULTS.glob("criteria-*.md"))
    if crit:
        text = splice(text, "criteria-tables", "\n".join(p.read_text() for p in crit))
    searches = [RESULTS / f"search-{s}.md" for s in ("resnet20", "ort-speedup", "resnet56")]
    searches = [p for p in searches if p.exists()]
    if searches:
        text = splice(text, "search-tables", "\n".join(p.read_text() for p in searches))
    ex = RESULTS / "examples-compare.md"
    if ex.exists():
        text = splice(text, "examples-compare", ex.read_text())
    for name in ("scaleout", "cluster_cost"):
        res = RESULTS / f"{name}.md"
        if res.exists():
            text = splice(text, name.replace("_", "-"), res.read_text())
    for model in ("resnet20", "resnet56"):
        res = RESULTS / f"pareto-{model}.md"
        if res.exists() and f"<!-- pareto-{model} -->" in text:
            text = splice(text, f"pareto-{model}", pareto_body(res.read_text()))
    atomic_write_text(readme, text)


def pareto_body(md: str) -> str:
    """bench/pareto.py's table file without its title; its section heading in bold (the README
    section around it has its own heading)."""
    lines = md.splitlines()[1:]
    return "\n".join(f"**{ln[3:]}**" if ln.startswith("## ") else ln for ln in lines).strip()


if __name__ == "__main__":
    main()
