"""Fine-tuning under torchrun DDP (``prunelab finetune --nproc 2``, gloo on CPU): an untrained
tiny ResNet improves on validation, and a run killed after its first epoch resumes from the
checkpoint rank 0 wrote to the same figures as an uninterrupted one."""

import json
import os
from pathlib import Path

import pytest

from .cli_proc import cli
from .conftest import hang_guard


def _finetune(model, out, idx_dir, env=None):
    """``prunelab finetune --nproc 2``: the CLI process starts torchrun, which starts two ranks
    (three torch imports on a 2-core machine: a minute under load; the guard is for a hang)."""
    args = ["finetune", str(model), "--epochs", "2", "--out", str(out), "--nproc", "2",
            "--no-teacher", "--lr", "0.05", "--batch-size", "32", "--recal-batches", "2",
            "--precision", "fp32", "--data-dir", str(idx_dir), "--json"]
    e = {**os.environ, "PRUNELAB_QUIET": "1", **(env or {})}
    return cli(args, env=e, timeout=hang_guard(600))


@pytest.mark.timeout(hang_guard(1800))     # three torchrun launches
def test_two_process_finetune_improves_and_resumes(tiny_resnet_dir, idx_dir, tmp_path):
    whole = _finetune(tiny_resnet_dir, tmp_path / "whole", idx_dir)
    assert whole.returncode == 0, whole.stderr[-2000:]
    r = json.loads(whole.stdout)                      # one JSON object: rank 0's
    assert r["after_val_top1"] > r["before_val_top1"] and len(r["history"]) == 2
    assert sorted(p.name for p in (tmp_path / "whole").iterdir()) == ["model.json",
                                                                     "model.safetensors"]
    assert not Path(f"{tmp_path / 'whole'}.ckpt").exists()

    killed = _finetune(tiny_resnet_dir, tmp_path / "k", idx_dir,
                       {"PRUNELAB_KILL_AFTER_EPOCHS": "1"})
    assert killed.returncode != 0 and not (tmp_path / "k").exists()
    state = json.loads(Path(f"{tmp_path / 'k'}.ckpt", "state.json").read_text())
    assert state["epoch"] == 1
    resumed = _finetune(tiny_resnet_dir, tmp_path / "k", idx_dir)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    again = json.loads(resumed.stdout)
    assert [h["val_top1"] for h in again["history"]] == [h["val_top1"] for h in r["history"]]
    assert again["after_val_top1"] == r["after_val_top1"]


@pytest.mark.timeout(hang_guard(1800))     # three torchrun launches
def test_run_config_nproc_finetunes_under_torchrun(tiny_run, tiny_resnet_dir, idx_dir,
                                                   session_cache_dir, pipeline_config, tmp_path,
                                                   monkeypatch):
    """``[finetune] nproc = 2`` in a run config: the pipeline's fine-tune stage runs in two
    torchrun processes from the run folder, and a rank killed after epoch 1 leaves a checkpoint
    the rerun resumes from, to the same figures as an uncut two-process stage."""
    import shutil

    import pytest

    from prunelab.errors import PrunelabError
    from prunelab.pipeline import run_pipeline

    cfg = pipeline_config(tiny_resnet_dir, idx_dir, session_cache_dir,
                          finetune={"epochs": 2, "nproc": 2, "lr": 0.05})
    runs = {}
    for name in ("whole", "cut"):            # the searched run, before its fine-tune
        runs[name] = tmp_path / name
        shutil.copytree(tiny_run, runs[name])
        for f in ("summary.json", "verify.json", "finetune.json", "timing.json"):
            (runs[name] / f).unlink()
        shutil.rmtree(runs[name] / "finetuned")
    monkeypatch.setenv("PRUNELAB_QUIET", "1")
    whole = run_pipeline(cfg, runs["whole"])
    ft = json.loads((runs["whole"] / "finetune.json").read_text())
    assert ft["nproc"] == 2 and ft["epochs"] == 2 and len(ft["history"]) == 2
    assert whole["finetune_epochs"] == 2 and (runs["whole"] / "finetuned" / "model.json").exists()
    assert whole["rows"]["final"]["test_top1"] == ft["test_top1"]

    monkeypatch.setenv("PRUNELAB_KILL_AFTER_EPOCHS", "1")
    with pytest.raises(PrunelabError, match="under torchrun stopped .* resume"):
        run_pipeline(cfg, runs["cut"])
    assert not (runs["cut"] / "finetune.json").exists()
    assert json.loads((runs["cut"] / "finetuned.ckpt" / "state.json").read_text())["epoch"] == 1
    monkeypatch.delenv("PRUNELAB_KILL_AFTER_EPOCHS")
    cut = run_pipeline(cfg, runs["cut"])
    again = json.loads((runs["cut"] / "finetune.json").read_text())
    assert [h["val_top1"] for h in again["history"]] == [h["val_top1"] for h in ft["history"]]
    assert cut["rows"]["final"]["test_top1"] == whole["rows"]["final"]["test_top1"]
