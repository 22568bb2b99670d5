"""Reports and comparisons of runs: the files, the embedded images, a bare search folder, the
comparison table and plot, and the HTML rendered in headless Chromium."""

import base64
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from prunelab.errors import PrunelabError
from prunelab.report import compare, report

from .cli_proc import cli
from .conftest import hang_guard

PNG = b"\x89PNG\r\n\x1a\n"


def _cli(args):
    e = {**os.environ, "PRUNELAB_QUIET": "1", "PYTHONPATH": str(Path(__file__).parent.parent),
         "COLUMNS": "200"}
    return cli(args, env=e)


@pytest.fixture(scope="module")
def reported(tiny_run):
    return report(tiny_run)


def _imgs(html: str) -> list[str]:
    return re.findall(r"<img[^>]*src='([^']*)'", html)


def test_report_files_and_embedded_images(reported, tiny_run):
    assert set(reported["charts"]) == {"pareto", "widths", "layer_latency", "progress",
                                       "finetune"}
    html = Path(reported["html"]).read_text()
    srcs = _imgs(html)
    assert len(srcs) == len(reported["charts"])
    for s in srcs:  # self-contained: every image is a data URI holding a PNG
        assert s.startswith("data:image/png;base64,")
        assert base64.b64decode(s.split(",", 1)[1])[:8] == PNG
    assert not re.search(r"(src|href)=['\"](?!data:)", html), "the report links a file"
    for w in ("unpruned", "searched (before fine-tune)", "final (fine-tuned)", "predicted"):
        assert w in html
    md = Path(reported["md"]).read_text()
    for k in reported["charts"]:
        assert f"report_files/{k}.png" in md
        assert (tiny_run / "report_files" / f"{k}.png").read_bytes()[:8] == PNG
    assert "| unpruned |" in md and "test top-1" in md
    # the before/after figures are the verified ones
    s = json.loads((tiny_run / "summary.json").read_text())
    assert f"{100 * s['rows']['final']['test_top1']:.2f}%" in md


def test_report_on_a_bare_search_folder(tiny_run, tmp_path):
    search = tmp_path / "search"
    shutil.copytree(tiny_run / "search", search)
    r = report(search)
    assert "finetune" not in r["charts"] and {"pareto", "widths", "progress"} <= set(r["charts"])
    md = Path(r["md"]).read_text()
    assert "val top-1" in md and "search result only" in md


def test_report_refuses_other_folders(tmp_path):
    with pytest.raises(PrunelabError, match="no prunelab run"):
        report(tmp_path)
    r = _cli(["report", str(tmp_path / "missing")])
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


def test_compare_runs(tiny_run, tiny_resnet_dir, idx_dir, session_cache_dir, pipeline_config,
                      tmp_path):
    from prunelab.pipeline import run_pipeline

    other = tmp_path / "global"
    run_pipeline(pipeline_config(tiny_resnet_dir, idx_dir, session_cache_dir, method="global",
                                 options={"front": 1}, finetune={"epochs": 0}), other)
    plot = tmp_path / "cmp.png"
    c = compare([tiny_run, other], plot)
    assert [r["method"] for r in c["runs"]] == ["uniform", "global"]
    for r in c["runs"]:
        for k in ("criterion", "top1", "macs", "params", "latency_ms", "speedup", "target",
                  "search_seconds", "finetune_seconds"):
            assert k in r, k
        assert r["verified"] and r["split"] == "test"
    assert c["runs"][1]["finetune_seconds"] == 0.0 and c["runs"][0]["finetune_seconds"] > 0
    assert plot.read_bytes()[:8] == PNG
    j = _cli(["compare", str(tiny_run), str(other), "--json"])
    assert j.returncode == 0, j.stderr
    assert [r["run"] for r in json.loads(j.stdout)["runs"]] == ["uniform", "global"]
    t = _cli(["compare", str(tiny_run), str(other)])
    assert t.returncode == 0 and "uniform" in t.stdout and "global" in t.stdout


def test_compare_needs_finished_runs(tmp_path):
    with pytest.raises(PrunelabError):
        compare([tmp_path])


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        p = shutil.which(name)
        if p:
            return p
    return None


@pytest.mark.skipif(_chromium() is None, reason="no chromium binary (scripts/setup.sh installs "
                    "the Debian package chromium when apt-get is there)")
def test_report_renders_in_chromium(reported, tmp_path):
    """Open the report in headless Chromium: every <img> must decode (naturalWidth > 0, read
    back through the DOM after load), and a screenshot must show more than a blank page."""
    from PIL import Image

    exe = _chromium()
    html = Path(reported["html"]).read_text()
    probe = ("<script>window.addEventListener('load', () => { document.title = 'IMGS:' + "
             "Array.from(document.images).map(i => i.complete ? i.naturalWidth + 'x' + "
             "i.naturalHeight : 'pending').join(','); });</script></body>")
    page = tmp_path / "probe.html"
    page.write_text(html.replace("</body>", probe))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([exe, *flags, "--virtual-time-budget=5000", "--dump-dom",
                          page.as_uri()], capture_output=True, text=True, timeout=hang_guard(300))
    m = re.search(r"<title>IMGS:([^<]*)</title>", dom.stdout)
    assert m, f"the page did not load in chromium: {dom.stderr[-500:]}"
    sizes = m.group(1).split(",")
    assert len(sizes) == len(reported["charts"])
    for s in sizes:
        w, h = (int(x) for x in s.split("x"))  # 'pending' or '0x0' means a broken image
        assert w > 100 and h > 100, sizes
    shot = tmp_path / "shot.png"
    subprocess.run([exe, *flags, f"--screenshot={shot}", "--window-size=1200,3000",
                    "--hide-scrollbars", Path(reported["html"]).as_uri()], capture_output=True,
                   timeout=hang_guard(300))
    assert shot.exists(), "chromium wrote no screenshot"
    im = Image.open(io.BytesIO(shot.read_bytes())).convert("L")
    lo, hi = im.getextrema()
    assert hi - lo > 100, "the screenshot is blank"
    # more than text on white: a good share of non-white pixels (the charts)
    hist = im.histogram()
    assert sum(hist[:250]) > 0.05 * im.width * im.height
