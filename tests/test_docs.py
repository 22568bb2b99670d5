"""The documentation: README.md stays short, every relative link in it and in docs/ resolves, the
MkDocs site builds with ``--strict`` (broken links, anchors and API references fail it), and the
docs pages quote exactly the benchmark tables in bench/results/."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import hang_guard

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "docs").glob("*.md"))
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def outside_fences(path: Path) -> list[str]:
    """The lines of a Markdown file outside fenced code blocks."""
    out, fence = [], False
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fence = not fence
        elif not fence:
            out.append(line)
    return out


def prose(path: Path) -> list[str]:
    """Where a Markdown link can be: outside fenced code, inline code removed."""
    return [re.sub(r"`[^`]*`", "", line) for line in outside_fences(path)]


def anchors(path: Path) -> set[str]:
    """The heading ids MkDocs gives a page (the toc extension's slugify)."""
    from markdown.extensions.toc import slugify

    return {slugify(m.group(1), "-") for line in outside_fences(path)
            if (m := re.match(r"#{1,6}\s+(.*)", line))}


def test_readme_is_short():
    n = len((ROOT / "README.md").read_text().splitlines())
    assert n <= 200, f"README.md has {n} lines; move detail into a docs/ page (at most 200)"


@pytest.mark.parametrize("page", [ROOT / "README.md", *PAGES], ids=lambda p: p.name)
def test_relative_links_resolve(page):
    assert PAGES, "no docs/*.md pages"
    broken = []
    for line in prose(page):
        for target in LINK.findall(line):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            path, _, frag = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{target}: no file {dest}")
            elif frag and dest.suffix == ".md" and frag not in anchors(dest):
                broken.append(f"{target}: {dest.name} has no heading #{frag}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs build needs the dev extra: "
                                         "pip install -e '.[dev]'")
    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f",
                        str(ROOT / "mkdocs.yml"), "-d", str(site)], cwd=ROOT, capture_output=True,
                       text=True, timeout=hang_guard(300), env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert r.returncode == 0, f"mkdocs build --strict failed:\n{r.stdout}\n{r.stderr}"
    api = (site / "api" / "index.html").read_text()
    for name in ("prunelab.core.search", "prunelab.commands.load", "prunelab.commands.latency.validate",
                 "prunelab.targets.TargetConfig"):
        assert f'id="{name}"' in api, f"the API reference lacks {name}"
    raw = sorted(set(re.findall(r":(?:func|class|mod|meth):", api)))
    assert not raw, f"reST roles shown raw in the API reference: {raw} (docs/griffe_rest.py)"
    assert (site / "results" / "pareto-resnet20.png").is_file()  # charts from bench/results


def test_docs_quote_the_bench_results():
    """bench/to_docs.py would change nothing: every table block in docs/ is what bench/results
    holds (run ``python bench/to_docs.py`` after a benchmark)."""
    spec = importlib.util.spec_from_file_location("to_docs", ROOT / "bench" / "to_docs.py")
    to_docs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(to_docs)
    blocks = to_docs.blocks()
    assert {m for _, m, _ in blocks} >= {"latency-validate", "criteria-tables", "pareto-resnet20"}
    for page, marker, body in blocks:
        text = (ROOT / "docs" / page).read_text()
        assert to_docs.splice(text, marker, body, page) == text, \
            f"docs/{page}'s {marker} block differs from bench/results; run bench/to_docs.py"
