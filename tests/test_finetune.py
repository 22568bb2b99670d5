"""`prunelab finetune` / api.finetune / train.fit: best epoch kept (also across a resume), BN
recalibration, distillation from the unpruned parent, resume, safe folders, one-line errors."""

import json

import pytest
import torch

import prunelab.train as T
from prunelab import commands
from prunelab.errors import PrunelabError
from prunelab.io import load_model
from prunelab.train import TrainConfig, fit

from .test_cli import assert_user_error, run

NET = """import torch.nn as nn
def make(in_channels=1, num_classes=4, **kw):
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8),
        nn.ReLU(), nn.Conv2d(8, 12, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(12),
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, num_classes))
"""
FAST = dict(batch_size=32, precision="fp32", recal_batches=4)


@pytest.fixture(scope="module")
def base(tmp_path_factory, idx_dir):
    """A tiny conv net trained for a few seconds on the tiny IDX set: the unpruned parent."""
    d = tmp_path_factory.mktemp("ft")
    (d / "net.py").write_text(NET)
    commands.train(f"{d / 'net.py'}:make", str(d / "base"), "mnist-idx", str(idx_dir),
              cfg=TrainConfig(epochs=6, lr=0.1, batch_size=16, precision="fp32"))
    return d / "base"


@pytest.fixture(scope="module", autouse=True)
def trusted_code(base):
    """The tests name the code of their own architecture (a folder never runs code by itself)."""
    from prunelab.io import trust_factory

    with trust_factory(f"{base.parent / 'net.py'}:make"):
        yield


@pytest.fixture(scope="module")
def pruned(base, idx_dir):
    commands.prune(str(base), "l1", ratio=0.5, out=str(base.parent / "pruned"),
              data_dir=str(idx_dir), repeats=2, evaluate=False)
    return base.parent / "pruned"


def _factory(folder) -> str:
    return f"{folder.parent / 'net.py'}:make"


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_finetune_distils_from_parent_and_saves_a_safe_folder(pruned, base, idx_dir, tmp_path):
    out = tmp_path / "ft"
    r = commands.finetune(str(pruned), 3, str(out), data_dir=str(idx_dir), lr=0.05, **FAST)
    assert r["teacher"]["ref"] == str(base.resolve())  # default: the recorded parent
    assert r["kd_weight"] == 0.5 and r["epochs"] == 3 and 0 <= r["best_epoch"] <= 3
    assert len(r["history"]) == 3 and r["seconds"] > 0
    assert r["after_val_top1"] >= r["recal_val_top1"]  # the start competes as epoch 0
    assert r["after_val_top1"] >= max(h["val_top1"] for h in r["history"])
    assert 0 <= r["test_top1"] <= 1
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.safetensors"]
    assert not (tmp_path / "ft.ckpt").exists()
    model, spec = load_model(out)
    prov = spec.provenance
    assert prov["name"] == "ft" and prov["parent"] == "base" and "pruned" in prov
    ft = prov["finetuned"]
    assert ft["teacher"]["model"] == "base" and ft["best_epoch"] == r["best_epoch"]
    assert [h["epoch"] for h in ft["history"]] == [1, 2, 3] and ft["config"]["lr"] == 0.05
    data = commands.data_for(spec, data_dir=str(idx_dir))
    assert T.evaluate(model, data.batches("val", 500)) == r["after_val_top1"]
    assert T.evaluate(model, data.batches("test", 500)) == r["test_top1"]


def test_finetune_can_improve_an_untrained_prune(saved_tiny, idx_dir, tmp_path):
    """A net pruned before it learnt anything: fine-tuning (no parent worth distilling) learns."""
    p = commands.prune(str(saved_tiny), "l1", ratio=0.5, out=str(tmp_path / "p"),
                  data_dir=str(idx_dir), repeats=2, evaluate=False)
    r = commands.finetune(p["out"], 2, str(tmp_path / "ft"), teacher=None, data_dir=str(idx_dir),
                     lr=0.1, **FAST)
    assert r["teacher"] is None and r["kd_weight"] == 0.0
    assert r["after_val_top1"] > r["before_val_top1"]


def test_best_epoch_is_restored_and_survives_a_resume(pruned, idx_dir, tmp_path, monkeypatch):
    """Validation top-1 is scripted (start 0.4, then 0.5, 0.9, 0.3): the model must end with
    epoch 2's weights, also when the run is interrupted after epoch 2 and resumed for epoch 3."""
    cfg = TrainConfig(epochs=3, lr=0.05, batch_size=32, precision="fp32")
    model, spec = load_model(pruned)
    data = commands.data_for(spec, data_dir=str(idx_dir))
    script = iter([0.4, 0.5, 0.9, 0.3])
    monkeypatch.setattr(T, "evaluate", lambda *a, **k: next(script))
    states = {}
    res = fit(model, data, cfg, checkpoint=tmp_path / "a.ckpt", keep_best=True,
              on_epoch=lambda e, m, row: states.update({e: T._state_copy(m)}))
    assert res.best_epoch == 2 and res.best_val_top1 == 0.9
    assert [h["val_top1"] for h in res.history] == [0.5, 0.9, 0.3]
    assert _same_weights(T._state_copy(model), states[2])
    assert not _same_weights(states[2], states[3])

    class Stop(Exception):
        pass

    def stop_after_2(epoch, m, row):
        if epoch == 2:
            raise Stop

    script = iter([0.4, 0.5, 0.9])
    model2, _ = load_model(pruned)
    with pytest.raises(Stop):
        fit(model2, data, cfg, checkpoint=tmp_path / "b.ckpt", keep_best=True,
            on_epoch=stop_after_2)
    assert (tmp_path / "b.ckpt" / "best.safetensors").exists()
    script = iter([0.3])
    model3, _ = load_model(pruned)
    res3 = fit(model3, data, cfg, checkpoint=tmp_path / "b.ckpt", keep_best=True)
    assert res3.best_epoch == 2 and [h["epoch"] for h in res3.history] == [1, 2, 3]
    assert _same_weights(T._state_copy(model3), states[2])


def test_starting_weights_win_when_no_epoch_beats_them(pruned, idx_dir, monkeypatch):
    cfg = TrainConfig(epochs=2, lr=0.05, batch_size=32, precision="fp32")
    model, spec = load_model(pruned)
    start = T._state_copy(model)
    script = iter([0.8, 0.7, 0.8])  # a tie with the start goes to the trained epoch
    monkeypatch.setattr(T, "evaluate", lambda *a, **k: next(script))
    states = {}
    res = fit(model, commands.data_for(spec, data_dir=str(idx_dir)), cfg, keep_best=True,
              on_epoch=lambda e, m, row: states.update({e: T._state_copy(m)}))
    assert res.best_epoch == 2 and _same_weights(T._state_copy(model), states[2])
    script = iter([0.8, 0.7, 0.6])
    model, _ = load_model(pruned)
    res = fit(model, commands.data_for(spec, data_dir=str(idx_dir)), cfg, keep_best=True)
    assert res.best_epoch == 0 and res.best_val_top1 == 0.8
    assert _same_weights(T._state_copy(model), start)


def test_interrupted_finetune_resumes_to_the_same_model(pruned, idx_dir, tmp_path, monkeypatch):
    kw = dict(data_dir=str(idx_dir), lr=0.05, **FAST)
    straight = commands.finetune(str(pruned), 3, str(tmp_path / "a"), **kw)

    class Stop(Exception):
        pass

    orig = T._save_ckpt

    def save_then_stop(*a, **k):
        orig(*a, **k)
        if a[3] == 2:  # epoch
            raise Stop

    monkeypatch.setattr(T, "_save_ckpt", save_then_stop)
    with pytest.raises(Stop):
        commands.finetune(str(pruned), 3, str(tmp_path / "b"), **kw)
    monkeypatch.setattr(T, "_save_ckpt", orig)
    assert not (tmp_path / "b").exists() and (tmp_path / "b.ckpt" / "state.json").exists()
    # other settings must not silently continue from this checkpoint
    with pytest.raises(PrunelabError, match="other settings"):
        commands.finetune(str(pruned), 3, str(tmp_path / "b"), **{**kw, "lr": 0.02})
    resumed = commands.finetune(str(pruned), 3, str(tmp_path / "b"), **kw)
    assert not (tmp_path / "b.ckpt").exists()
    for k in ("before_val_top1", "recal_val_top1", "after_val_top1", "best_epoch", "test_top1"):
        assert resumed[k] == straight[k], k
    drop = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert drop(resumed["history"]) == drop(straight["history"])
    a, _ = load_model(tmp_path / "a")
    b, _ = load_model(tmp_path / "b")
    assert _same_weights(a.state_dict(), b.state_dict())


def test_sandwich_model_finetunes_and_round_trips(base, idx_dir, tmp_path):
    from prunelab.models._common import Sandwich

    p = commands.prune(str(base), "fp-omp", ratio=0.5, out=str(tmp_path / "sw"),
                  criterion_options={"compensation": "sandwich"}, data_dir=str(idx_dir),
                  repeats=2, evaluate=False)
    r = commands.finetune(p["out"], 1, str(tmp_path / "ft"), teacher=str(base),
                     data_dir=str(idx_dir), **FAST)
    assert r["teacher"]["model"] == "base"
    model, spec = load_model(tmp_path / "ft")
    assert any(isinstance(m, Sandwich) for m in model.modules())
    assert spec.provenance["pruned"]["criterion"] == "fp-omp"
    data = commands.data_for(spec, data_dir=str(idx_dir))
    assert T.evaluate(model, data.batches("val", 500)) == r["after_val_top1"]


# --------------------------------------------------------------------------- CLI

def test_cli_json_and_table(pruned, idx_dir, tmp_path):
    out = tmp_path / "cli-ft"
    code, stdout, err = run("finetune", pruned, "--epochs", "1", "--out", out, "--json",
                            "--data-dir", idx_dir, "--batch-size", "32", "--recal-batches", "2",
                            "--precision", "fp32", "--factory", _factory(pruned))
    assert code == 0, err
    r = json.loads(stdout)
    for k in ("model", "out", "epochs", "seconds", "before_val_top1", "after_val_top1",
              "test_top1", "best_epoch", "teacher", "kd_weight", "kd_temperature", "history"):
        assert k in r, k
    assert r["teacher"]["model"] == "base" and r["epochs"] == 1
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.safetensors"]
    code, stdout, err = run("finetune", out, "--epochs", "1", "--out", tmp_path / "again",
                            "--no-teacher", "--data-dir", idx_dir, "--batch-size", "32",
                            "--recal-batches", "0", "--precision", "fp32",
                            "--factory", _factory(pruned))
    assert code == 0, err
    assert "before / after fine-tuning" in stdout and "no distillation" in stdout


def test_cli_missing_model(tmp_path):
    code, _, err = run("finetune", tmp_path / "nope", "--epochs", "1", "--out", tmp_path / "o")
    assert_user_error(code, err, "neither a model folder nor a shipped model")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("epochs", ["0", "-1"])
def test_cli_epochs_must_be_positive(pruned, tmp_path, epochs):
    code, _, err = run("finetune", pruned, "--epochs", epochs, "--out", tmp_path / "o")
    assert_user_error(code, err, "--epochs", "1")  # 0: the library's check; -1: the flag's


def test_cli_bad_teacher(pruned, idx_dir, tmp_path):
    code, _, err = run("finetune", pruned, "--epochs", "1", "--out", tmp_path / "o",
                       "--teacher", tmp_path / "nope", "--data-dir", idx_dir,
                       "--factory", _factory(pruned))
    assert_user_error(code, err, "neither a model folder nor a shipped model")
    # a teacher for another task (10 classes, 3 channels) is refused before any training
    code, _, err = run("finetune", pruned, "--epochs", "1", "--out", tmp_path / "o",
                       "--teacher", "resnet20.fmnist", "--data-dir", idx_dir,
                       "--factory", _factory(pruned))
    assert_user_error(code, err, "does not match", "--no-teacher")
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.ckpt").exists()


def test_cli_bad_options(pruned, tmp_path):
    code, _, err = run("finetune", pruned, "--epochs", "1", "--out", tmp_path / "o",
                       "--kd-weight", "1.5")
    assert_user_error(code, err, "--kd-weight 1.5", "less than or equal to 1")
    code, _, err = run("finetune", pruned, "--epochs", "1", "--out", tmp_path / "o",
                       "--teacher", "x", "--no-teacher")
    assert_user_error(code, err, "not allowed with")
    code, _, err = run("finetune", pruned, "--epochs", "1")
    assert_user_error(code, err, "--out")


def test_parent_that_cannot_be_found_means_no_distillation(pruned, idx_dir, tmp_path):
    import shutil

    moved = tmp_path / "elsewhere" / "pruned"
    shutil.copytree(pruned, moved)
    mj = moved / "model.json"
    d = json.loads(mj.read_text())
    d["provenance"].update(parent="gone", parent_ref=str(tmp_path / "gone"))
    mj.write_text(json.dumps(d))
    r = commands.finetune(str(moved), 1, str(tmp_path / "ft"), data_dir=str(idx_dir), **FAST)
    assert r["teacher"] is None and r["kd_weight"] == 0.0
