"""Safe to open, safe to write, one writer at a time (issue 12's must-fix holes).

* a model folder never runs code it names (payloads would create a marker file);
* ``--out`` never replaces what prunelab did not write;
* a second writer of a run/search folder is refused; a lock left by a killed process is stale.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from prunelab.errors import PrunelabError
from prunelab.io import load_model, save_model, trust_factory

from .test_cli import ENV, assert_user_error, run
from .conftest import hang_guard

NET = textwrap.dedent("""
    import torch.nn as nn

    def make(num_classes=4):
        return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))
""")


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


def _payload_folder(tmp_path: Path, marker: Path, saved_tiny: Path) -> Path:
    """A model folder whose model.json names the standard library's os.system as its factory,
    with a command that would create ``marker``."""
    evil = tmp_path / "evil"
    shutil.copytree(saved_tiny, evil)
    mj = json.loads((evil / "model.json").read_text())
    mj["arch"] = {"kind": "factory", "factory": f"{os.__file__}:system",
                  "kwargs": {"command": f"touch {marker}"}}
    (evil / "model.json").write_text(json.dumps(mj))
    return evil


@pytest.mark.parametrize("argv", [
    ["eval", "{m}", "--repeats", "3", "--data-dir", "{d}"],
    ["prune", "{m}", "--ratio", "0.5", "--out", "{t}/p", "--data-dir", "{d}"],
    ["finetune", "{m}", "--epochs", "1", "--out", "{t}/f", "--data-dir", "{d}"],
    ["finetune", "{ok}", "--epochs", "1", "--out", "{t}/f2", "--teacher", "{m}", "--data-dir",
     "{d}"],
    ["search", "{m}", "--method", "uniform", "--budget", "macs=0.5", "--out", "{t}/s",
     "--data-dir", "{d}"],
    ["export", "{m}", "--onnx", "{t}/m.onnx"],
    ["latency", "validate", "{m}"],
    ["criteria", "evaluate", "{m}", "--criteria", "l1", "--data-dir", "{d}"],
])
def test_a_model_folder_never_runs_the_code_it_names(argv, tmp_path, saved_tiny, idx_dir):
    marker = tmp_path / "PWNED"
    evil = _payload_folder(tmp_path, marker, saved_tiny)
    args = [a.format(m=evil, t=tmp_path, ok=saved_tiny, d=idx_dir) for a in argv]
    before = _snapshot(saved_tiny)
    code, _, err = run(*args)
    assert_user_error(code, err, "never runs code a model folder names", "--factory")
    assert not marker.exists()
    assert _snapshot(saved_tiny) == before
    assert not any((tmp_path / n).exists() for n in ("p", "f", "f2", "s", "m.onnx"))


def test_library_and_config_refuse_the_payload_too(tmp_path, saved_tiny, idx_dir):
    from prunelab import commands
    from prunelab.pipeline import run_pipeline

    marker = tmp_path / "PWNED"
    evil = _payload_folder(tmp_path, marker, saved_tiny)
    with pytest.raises(PrunelabError, match="never runs code"):
        load_model(evil)
    with pytest.raises(PrunelabError, match="never runs code"):
        commands.finetune(str(saved_tiny), 1, str(tmp_path / "ft"), teacher=str(evil),
                     data_dir=str(idx_dir))
    cfg = {"model": {"ref": str(evil), "dataset": "mnist-idx", "data_dir": str(idx_dir)},
           "search": {"method": "uniform"}, "target": {"name": "scripted"}}
    with pytest.raises(PrunelabError, match="never runs code"):
        run_pipeline(cfg, tmp_path / "run")
    assert not marker.exists() and not (tmp_path / "run").exists()
    assert not (tmp_path / "ft").exists()


@pytest.fixture
def factory_folder(tmp_path, idx_dir):
    """A model folder built from the user's own code (tmp/net.py:make)."""
    from prunelab import commands

    (tmp_path / "net.py").write_text(NET)
    ref = f"{tmp_path / 'net.py'}:make"
    model, spec = commands.load(ref, dataset="mnist-idx", data_dir=str(idx_dir))
    save_model(model, spec, tmp_path / "mine")
    return tmp_path / "mine", ref


def test_named_code_opens_its_folder_and_a_changed_file_is_refused(factory_folder, idx_dir):
    folder, ref = factory_folder
    with pytest.raises(PrunelabError, match="--factory"):
        load_model(folder)
    net, _ = load_model(folder, factory=ref)                      # the library names it
    with trust_factory(ref):                                       # ... or a block trusts it
        net2, _ = load_model(folder)
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(net(x), net2(x))
    code, out, err = run("eval", folder, "--factory", ref, "--data-dir", idx_dir,
                         "--repeats", "3", "--json")
    assert code == 0, err and json.loads(out)["macs"] > 0
    code, _, err = run("eval", folder, "--factory", f"{Path(ref.split(':')[0]).parent}/x.py:make",
                       "--data-dir", idx_dir)
    assert_user_error(code, err, "never runs code")                 # other code: not trusted
    py = Path(ref.rpartition(":")[0])
    py.write_text(NET + "\n# edited\n")
    with pytest.raises(PrunelabError, match="changed since"):
        load_model(folder, factory=ref)


def test_a_factory_that_raises_is_one_line(tmp_path, idx_dir):
    (tmp_path / "bad.py").write_text("raise RuntimeError('no GPU here')\n")
    code, _, err = run("eval", f"{tmp_path / 'bad.py'}:make", "--data-dir", idx_dir)
    assert_user_error(code, err, "bad.py", "make", "RuntimeError", "no GPU here")
    (tmp_path / "boom.py").write_text("def make(**kw):\n    raise ValueError('bad width')\n")
    code, _, err = run("eval", f"{tmp_path / 'boom.py'}:make", "--data-dir", idx_dir)
    assert_user_error(code, err, "boom.py:make", "ValueError", "bad width")


# ----------------------------------------------------------------------------- --out

@pytest.mark.parametrize("cmd", ["prune", "finetune", "export"])
@pytest.mark.parametrize("existing", ["user-folder", "user-file", "other-kind"])
def test_out_never_replaces_what_prunelab_did_not_write(cmd, existing, tmp_path, saved_tiny,
                                                        idx_dir):
    out = tmp_path / "out"
    if existing == "user-folder":
        out.mkdir()
        (out / "thesis.tex").write_text("years of work")
    elif existing == "user-file":
        out.write_text("precious")
    else:  # a prunelab folder of another kind (a search folder)
        out.mkdir()
        (out / "config.json").write_text(json.dumps({"method": "uniform"}))
    before = _snapshot(tmp_path)
    argv = {"prune": ["prune", saved_tiny, "--ratio", "0.5", "--out", out],
            "finetune": ["finetune", saved_tiny, "--epochs", "1", "--out", out],
            "export": ["export", saved_tiny, "--onnx", out]}[cmd]
    code, _, err = run(*argv, "--overwrite", "--data-dir", idx_dir) if cmd != "export" else \
        run(*argv, "--overwrite")
    if cmd == "export" and existing == "user-file":
        assert code == 0, err  # --overwrite on a file the user named: replaced, as asked
        return
    assert_user_error(code, err, str(out))
    assert _snapshot(tmp_path) == before


def test_overwrite_replaces_only_a_prunelab_model_folder(tmp_path, saved_tiny, idx_dir):
    out = tmp_path / "p"
    assert run("prune", saved_tiny, "--ratio", "0.5", "--out", out, "--data-dir", idx_dir,
               "--repeats", "3")[0] == 0
    code, _, err = run("prune", saved_tiny, "--ratio", "0.25", "--out", out, "--data-dir",
                       idx_dir, "--repeats", "3")
    assert_user_error(code, err, "--overwrite")
    assert run("prune", saved_tiny, "--ratio", "0.25", "--out", out, "--data-dir", idx_dir,
               "--repeats", "3", "--overwrite")[0] == 0
    assert json.loads((out / "model.json").read_text())["provenance"]["pruned"]["ratio"] == 0.25


# ----------------------------------------------------------------------------- the lock

HOLD = textwrap.dedent("""
    import sys, time
    from prunelab.lock import FolderLock
    FolderLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(120)
""")


def test_second_writer_is_refused_and_a_killed_writers_lock_is_stale(tmp_path, tiny_resnet_dir,
                                                                      idx_dir):
    out = tmp_path / "s"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE,
                              text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "locked"
        argv = ["search", tiny_resnet_dir, "--method", "uniform", "--budget", "macs=0.6",
                "--out", out, "--target", "scripted", "--recal-batches", "1", "--val-images",
                "0", "--measure-front", "2", "--option", "front=1", "--dataset", "mnist-idx",
                "--data-dir", idx_dir]
        code, _, err = run(*argv)
        assert_user_error(code, err, "another prunelab process", f"pid {holder.pid}")
        assert not out.exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (tmp_path / "s.lock").exists()          # left behind by the killed holder
    code, out_json, err = run(*argv, "--json")
    assert code == 0, err                          # stale: taken over
    assert json.loads(out_json)["chosen"]["budget_met"]
    assert not (tmp_path / "s.lock").exists()      # released at the end


def test_two_concurrent_runs_one_wins(tmp_path, tiny_resnet_dir, idx_dir, pipeline_config,
                                      session_cache_dir):
    """Two `prunelab run` processes on one folder: exactly one runs, the other is refused."""
    cfg = pipeline_config(tiny_resnet_dir, idx_dir, session_cache_dir)
    cfg["target"] = {"name": "scripted"}
    path = tmp_path / "c.toml"
    from prunelab.pipeline import to_toml

    path.write_text(to_toml(cfg))
    cmd = [sys.executable, "-m", "prunelab.cli", "run", str(path), "--out", str(tmp_path / "r")]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=ENV) for _ in range(2)]
    results = [(p.wait(timeout=hang_guard(600)), p.stderr.read()) for p in procs]
    codes = sorted(c for c, _ in results)
    assert codes == [0, 2], results
    err = next(e for c, e in results if c == 2)
    assert "another prunelab process" in err and "Traceback" not in err
    assert (tmp_path / "r" / "summary.json").exists()
    assert not (tmp_path / "r.lock").exists()
