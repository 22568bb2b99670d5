"""Candidate evaluations on Ray workers: a local Ray instance with 1 and with 2 workers runs the
same tiny searches (an NSGA-II generation and CIE's sweep go out as batches) and logs the same
candidates, with the same figures, in the same order, and chooses the same widths; a parallel
search killed mid-way resumes like a serial one."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from prunelab.errors import PrunelabError
from prunelab.commands import run_search
from prunelab.searches import SearchConfig
from prunelab.targets import TargetConfig

from .conftest import hang_guard

pytest.importorskip("ray")

OPTS = {"nsga2": {"pop": 6, "gens": 2, "sens_ratios": [0.5], "max_options": 4},
        "cie": {"ratios": [0.3, 0.6], "front": 1}}


def _cfg(method, budget="macs=0.6"):
    return SearchConfig(method=method, criterion="l1", target=TargetConfig("scripted"), budget=budget,
                        recal_batches=1,
                        val_images=0, measure_front=3, options=OPTS[method])


def _rows(out):
    return [json.loads(x) for x in (Path(out) / "evaluations.jsonl").read_text().splitlines()]


def _same(rows):
    # predicted latency to 12 digits: a table built on a remote node (timed) and one built here
    # (the scripted target's formula) agree up to float rounding
    return [(r["key"], r["context"], r["phase"], r["top1"], r["macs"],
             float(f"{r['latency_ms']:.12g}")) for r in rows]


# Ray starts in each test (about a minute on 2 loaded cores): nsga2 on 1 and 2 workers in the
# default run, the rest in the slow set
@pytest.mark.parametrize("method", ["nsga2", pytest.param("cie", marks=pytest.mark.slow)])
def test_one_and_two_workers_search_alike(method, tiny_resnet_dir, idx_dir, tmp_path):
    cache = str(tmp_path / "cache")
    # a loose budget: several measured points meet it, so the rich score runs (on the workers)
    runs = {n: run_search(str(tiny_resnet_dir), _cfg(method, "macs=0.95"), tmp_path / f"w{n}",
                          cache, "mnist-idx", str(idx_dir), workers=n) for n in (0, 1, 2)}
    assert _same(_rows(tmp_path / "w0")) == _same(_rows(tmp_path / "w1")) == \
        _same(_rows(tmp_path / "w2"))
    assert runs[0]["chosen"]["keep"] == runs[1]["chosen"]["keep"] == runs[2]["chosen"]["keep"]
    assert runs[1]["evaluations"] == runs[2]["evaluations"] > 8
    # the rich score of the points that meet the budget (kd:20 by default) ran on the workers
    # with the same figures as in this process
    rich = {n: [(p["keep"], p["fidelity_top1"]) for p in r["fidelity"]["points"]]
            for n, r in runs.items()}
    assert len(rich[0]) >= 2 and rich[0] == rich[1] == rich[2]


@pytest.mark.slow
def test_killed_parallel_search_resumes(tiny_resnet_dir, idx_dir, tmp_path):
    cache = str(tmp_path / "cache")
    args = ["search", str(tiny_resnet_dir), "--method", "nsga2", "--criterion", "l1",
            "--target", "scripted", "--budget", "macs=0.6", "--dataset", "mnist-idx",
            "--data-dir", str(idx_dir), "--recal-batches", "1", "--val-images", "0",
            "--measure-front", "3", "--cache-dir", cache, "--workers", "2", "--json",
            *[a for k, v in OPTS["nsga2"].items() for a in ("--option", f"{k}={json.dumps(v)}")]]

    def cli(out, env=None):
        import os
        import signal

        e = {**os.environ, "PRUNELAB_QUIET": "1", **(env or {})}
        p = subprocess.Popen([sys.executable, "-m", "prunelab.cli", *args, "--out", str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e,
                             start_new_session=True)
        try:
            stdout, stderr = p.communicate(timeout=hang_guard(600))
        finally:
            try:  # a SIGKILLed driver leaves its local Ray processes behind: end them too
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        return subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr)

    whole = cli(tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    killed = cli(tmp_path / "killed", {"PRUNELAB_KILL_AFTER_EVALS": "7"})
    assert killed.returncode == -9
    assert len(_rows(tmp_path / "killed")) == 7
    resumed = cli(tmp_path / "killed")
    assert resumed.returncode == 0, resumed.stderr
    rows = _rows(tmp_path / "killed")
    keys = [(r["context"], r["key"]) for r in rows]
    assert len(keys) == len(set(keys)), "an evaluation ran twice"
    assert _same(rows) == _same(_rows(tmp_path / "whole"))
    assert json.loads(resumed.stdout)["chosen"]["keep"] == json.loads(whole.stdout)["chosen"]["keep"]


def test_bad_workers_fail_before_any_work(tiny_resnet_dir, idx_dir, tmp_path):
    with pytest.raises(PrunelabError, match="workers"):
        run_search(str(tiny_resnet_dir), _cfg("cie"), tmp_path / "x", str(tmp_path / "c"),
                   "mnist-idx", str(idx_dir), workers=-1)
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
@pytest.mark.parametrize("advertised", [True, False])
def test_latency_is_measured_on_the_node_with_the_target(advertised, tiny_resnet_dir, idx_dir,
                                                         tmp_path):
    """On a Ray cluster (here: a Ray this process started, as a user's script would) with a node
    that advertises ``target:scripted``, the lookup table, the front and the confirmation are
    timed by one actor holding that resource, not by the driver; without such a node the driver
    measures.  Either way the search logs and chooses as a serial one."""
    import os

    import ray

    ray.init(num_cpus=2, resources={"target:scripted": 1} if advertised else {},
             include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        r = run_search(str(tiny_resnet_dir), _cfg("nsga2"), tmp_path / "cluster",
                       str(tmp_path / "c1"), "mnist-idx", str(idx_dir), workers=2)
        assert ray.is_initialized()          # the caller's Ray is left running
    finally:
        ray.shutdown()
    serial = run_search(str(tiny_resnet_dir), _cfg("nsga2"), tmp_path / "serial",
                        str(tmp_path / "c2"), "mnist-idx", str(idx_dir))
    where = r["measured_on"]
    if advertised:
        assert where["resource"] == "target:scripted" and where["pid"] != os.getpid()
    else:
        assert where["resource"] is None and where["pid"] == os.getpid()
    assert serial["measured_on"]["pid"] == os.getpid()
    assert _same(_rows(tmp_path / "cluster")) == _same(_rows(tmp_path / "serial"))
    assert r["chosen"]["keep"] == serial["chosen"]["keep"]
    # the remote node times unpaired, here paired: the same formula up to float rounding
    assert r["chosen"]["latency_ms"] == pytest.approx(serial["chosen"]["latency_ms"], rel=1e-9)
