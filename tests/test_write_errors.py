"""Writes the file system refuses (a read-only mount, a full disk) end in one line naming the
path and what to do, leave nothing torn, and a search stopped by a full disk completes when rerun
after space is freed.  Real tmpfs mounts (root only; skipped elsewhere)."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from prunelab.cli import main
from prunelab.errors import PrunelabError


@pytest.fixture
def tmpfs(tmp_path):
    """``tmpfs(name, options)``: a fresh tmpfs mounted under tmp_path, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = []

    def mount(name: str, options: str) -> Path:
        d = tmp_path / name
        d.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(d)],
                           capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
        mounted.append(d)
        return d

    yield mount
    for d in reversed(mounted):
        subprocess.run(["umount", "-l", str(d)], check=False)


def remount(d: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(d)], check=True)


def _cli(capsys, *args) -> tuple[int, str]:
    rc = main(list(args))
    return rc, capsys.readouterr().err


def _one_line(err: str, *words: str) -> None:
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err


def _fill(path: Path) -> None:
    """Write zeros to ``path`` until its file system is full."""
    try:
        with open(path, "wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
    except OSError:
        pass


def _leftovers(d: Path) -> list[str]:
    """Temp files/folders, old copies and lock files that a clean failure must not leave."""
    return [str(p.relative_to(d)) for p in d.rglob("*")
            if p.name.startswith(".") or p.name.endswith(".lock")]


PRUNE = ["--ratio", "0.5", "--dataset", "mnist-idx", "--repeats", "1", "--recal-batches", "0"]


def test_read_only_out_is_one_line(tmpfs, capsys, saved_tiny, idx_dir, tmp_path,
                                   pipeline_config, session_cache_dir):
    ro = tmpfs("ro", "ro")
    rc, err = _cli(capsys, "prune", str(saved_tiny), *PRUNE, "--data-dir", str(idx_dir),
                   "--out", str(ro / "p"))
    assert rc == 2
    _one_line(err, f"{ro / 'p'}", "read-only", "writable")
    rc, err = _cli(capsys, "search", str(saved_tiny), "--method", "uniform", "--budget",
                   "macs=0.5", "--target", "torch-cpu", "--dataset", "mnist-idx", "--data-dir",
                   str(idx_dir), "--out", str(ro / "s"))
    assert rc == 2
    _one_line(err, f"{ro / 's'}", "read-only", "writable")
    cfg = tmp_path / "run.toml"
    from prunelab.pipeline import to_toml

    cfg.write_text(to_toml(pipeline_config(saved_tiny, idx_dir, session_cache_dir)))
    rc, err = _cli(capsys, "run", str(cfg), "--out", str(ro / "r" / "deeper"))
    assert rc == 2
    _one_line(err, "read-only", "writable")
    assert not list(ro.iterdir())


def test_full_disk_while_saving_a_model(tmpfs, capsys, saved_tiny, idx_dir):
    full = tmpfs("full", "size=16k")  # the pruned model's safetensors do not fit
    out = full / "p"
    rc, err = _cli(capsys, "prune", str(saved_tiny), *PRUNE, "--data-dir", str(idx_dir),
                   "--out", str(out))
    assert rc == 2
    _one_line(err, str(out), "disk is full", "free space")
    assert not list(full.iterdir()), "a half-written model folder or temp file was left"
    remount(full, "4m")  # space freed: the same command succeeds
    rc, err = _cli(capsys, "prune", str(saved_tiny), *PRUNE, "--data-dir", str(idx_dir),
                   "--out", str(out))
    assert rc == 0, err
    from prunelab.io import load_model

    load_model(out)
    assert _leftovers(full) == []


def test_search_stopped_by_full_disk_completes_when_rerun(tmpfs, tiny_resnet_dir, idx_dir,
                                                         session_cache_dir):
    from prunelab.commands import data_for, load
    from prunelab.searches import SearchConfig
    from prunelab.searches.run import search_model
    from prunelab.targets import TargetConfig
    from prunelab.train import evaluate

    disk = tmpfs("disk", "size=4m")
    out = disk / "s"
    model, spec = load(str(tiny_resnet_dir))
    data = data_for(spec, "mnist-idx", str(idx_dir))
    cfg = SearchConfig(method="uniform", target=TargetConfig("torch-cpu"), budget="macs=0.6",
                       recal_batches=1, val_images=0, measure_front=2, decision_processes=0,
                       options={"front": 2})
    record = {"model": str(tiny_resnet_dir), "dataset": "mnist-idx"}
    calls = []

    def fill_after_three(net):  # the disk fills up during the search, for real
        calls.append(1)
        if len(calls) == 4:
            _fill(disk / "filler")
        return evaluate(net, data.batches("val", 500))

    with pytest.raises(PrunelabError) as e:
        search_model(model, spec, data, cfg, out, session_cache_dir, eval_fn=fill_after_three,
                     record=record)
    msg = str(e.value)
    assert "\n" not in msg and "disk is full" in msg and "run the same command again" in msg
    log = (out / "evaluations.jsonl").read_bytes()
    assert log.endswith(b"\n") and len(log.splitlines()) >= 3
    logged = [json.loads(x) for x in log.splitlines()]  # no torn line
    assert not (out / "result.json").exists()
    (disk / "filler").unlink()  # space freed: the rerun resumes and completes
    assert _leftovers(disk) == []
    r, _ = search_model(model, spec, data, cfg, out, session_cache_dir, record=record)
    assert json.loads((out / "result.json").read_text())["evaluations"] == r["evaluations"]
    rows = [json.loads(x) for x in (out / "evaluations.jsonl").read_text().splitlines()]
    assert rows[:len(logged)] == logged, "logged evaluations were rewritten"
    keys = [(x["context"], x["key"]) for x in rows]
    assert len(keys) == len(set(keys)), "an evaluation ran twice"
    assert r["replayed"] >= len(logged)
    assert _leftovers(disk) == []


def test_full_disk_while_taking_the_lock_leaves_no_lock(tmpfs):
    from prunelab.lock import FolderLock

    full = tmpfs("tiny", "size=4k")
    _fill(full / "filler")
    with pytest.raises(PrunelabError, match="disk is full"):
        FolderLock(full / "out").acquire()
    assert not (full / "out.lock").exists()
