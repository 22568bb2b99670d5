"""Every command that opens a model takes the same model options (MODEL, --factory, --weights,
--dataset, --data-dir) and resolves them with one resolver (:func:`prunelab.cli.common.open_model`).
Tried as a new user would: a CIFAR architecture of their own (``wrapper.py:build``, 3-channel
32x32 input) on a tiny CIFAR-10 in its original python-batch layout."""

import argparse
import json
import pickle

import numpy as np
import pytest

from prunelab.cli import build_parser, main

MODEL_FLAGS = {"--factory", "--weights", "--dataset", "--data-dir"}

WRAPPER = '''
import torch.nn as nn


def build(num_classes=10):
    """A tiny CIFAR net: it refuses 1-channel input, so a probe with the wrong shape fails."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))
'''


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    d = root / "cifar-10-batches-py"
    d.mkdir()
    rng = np.random.default_rng(0)

    def batch(n):
        return {"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8),
                "labels": rng.integers(0, 10, n).tolist(), "batch_label": "tiny"}
    for i in range(1, 6):
        (d / f"data_batch_{i}").write_bytes(pickle.dumps(batch(40)))
    (d / "test_batch").write_bytes(pickle.dumps(batch(40)))
    return root


@pytest.fixture(scope="module")
def user(tmp_path_factory, cifar_dir):
    """The user's factory, the data options, and a folder pruned from it with ``prune``."""
    root = tmp_path_factory.mktemp("user")
    (root / "wrapper.py").write_text(WRAPPER)
    factory = f"{root / 'wrapper.py'}:build"
    data = ["--dataset", "cifar10", "--data-dir", str(cifar_dir)]
    pruned = root / "pruned"
    rc = main(["prune", factory, *data, "--ratio", "0.5", "--repeats", "1", "--recal-batches",
               "1", "--out", str(pruned), "--json"])
    assert rc == 0
    return {"factory": factory, "data": data, "pruned": str(pruned), "root": root,
            "opts": ["--factory", factory, *data]}


def _json(capsys, argv):
    capsys.readouterr()
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 0, err
    return json.loads(out)


def _commands():
    """Every (sub)command whose parser takes a model positional."""
    def walk(p, path):
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sp in a.choices.items():
                    yield from walk(sp, path + [name])
        if any(a.dest in ("model", "models") and not a.option_strings for a in p._actions):
            yield " ".join(path), p
    return dict(walk(build_parser(), []))


def test_every_command_that_opens_a_model_takes_the_model_options():
    cmds = _commands()
    assert {"eval", "prune", "finetune", "export", "search", "criteria evaluate",
            "latency build", "latency validate", "latency profile", "latency steps",
            "latency compare"} <= set(cmds)
    for name, p in cmds.items():
        flags = {s for a in p._actions for s in a.option_strings}
        assert MODEL_FLAGS <= flags, f"{name} lacks {sorted(MODEL_FLAGS - flags)}"


def test_prune_builds_the_factory_for_the_dataset(user):
    spec = json.loads((user["root"] / "pruned" / "model.json").read_text())
    assert spec["input_shape"] == [3, 32, 32] and spec["dataset"] == "cifar10"
    assert spec["arch"]["factory"] == user["factory"]


def test_eval_opens_the_pruned_folder(capsys, user):
    r = _json(capsys, ["eval", user["pruned"], *user["opts"], "--repeats", "1", "--json"])
    assert r["top1"] is not None and r["latency"]["batch_size"] == 1
    base = _json(capsys, ["eval", user["factory"], *user["data"], "--repeats", "1", "--json"])
    assert r["macs"] < base["macs"]


def test_export_opens_the_pruned_folder(capsys, user, tmp_path):
    r = _json(capsys, ["export", user["pruned"], *user["opts"], "--onnx",
                       str(tmp_path / "m.onnx"), "--json"])
    assert r["input_shape"] == [1, 3, 32, 32] and (tmp_path / "m.onnx").stat().st_size > 0


def test_criteria_evaluate_opens_the_pruned_folder(capsys, user):
    rows = _json(capsys, ["criteria", "evaluate", user["pruned"], *user["opts"], "--criteria",
                          "l1", "--ratios", "0.5", "--recal-batches", "1", "--json"])
    assert rows and rows[0]["criterion"] == "l1"


def test_finetune_opens_the_pruned_folder(capsys, user, tmp_path):
    r = _json(capsys, ["finetune", user["pruned"], *user["opts"], "--epochs", "1",
                       "--no-teacher", "--recal-batches", "0", "--batch-size", "64",
                       "--out", str(tmp_path / "ft"), "--json"])
    assert r["test_top1"] is not None
    assert json.loads((tmp_path / "ft" / "model.json").read_text())["input_shape"] == [3, 32, 32]


def test_latency_compare_takes_the_model_options(capsys, user):
    r = _json(capsys, ["latency", "compare", user["factory"], user["pruned"], *user["opts"],
                       "--repeats", "3", "--sessions", "1", "--json"])
    base, pruned = r["models"]
    assert pruned["macs"] < base["macs"]  # the folder opened, timed on 3x32x32 inputs


def test_latency_profile_takes_the_model_options(capsys, user, tmp_path):
    r = _json(capsys, ["latency", "profile", user["pruned"], *user["opts"], "--repeats", "3",
                       "--cache-dir", str(tmp_path / "cache"), "--json"])
    assert r["layers"] and r["layers"][0]["cin"] == 3


@pytest.mark.parametrize("cmd", ["build", "validate", "steps"])
def test_latency_table_commands_take_the_model_options(capsys, user, tmp_path, cmd, monkeypatch):
    """The lookup-table commands resolve the model with the same resolver; the table itself is
    the latency tests' business, so its measuring is cut short here."""
    from prunelab.commands import latency as api

    seen = {}

    def stop(model, spec, *a, **k):
        seen["shape"] = spec.input_shape
        raise KeyboardInterrupt
    monkeypatch.setattr(api, "build_predictor", stop)
    rc = main(["latency", cmd, user["pruned"], *user["opts"], "--cache-dir",
               str(tmp_path / "cache")])
    assert rc == 130 and seen["shape"] == [3, 32, 32]


def test_search_probes_a_factory_with_the_dataset_shape(capsys, user, tmp_path):
    r = _json(capsys, ["search", user["factory"], *user["data"], "--method", "uniform",
                       "--budget", "macs=0.6", "--recal-batches", "1", "--val-images", "0",
                       "--measure-front", "2", "--option", "front=1", "--cache-dir",
                       str(tmp_path / "cache"), "--out", str(tmp_path / "s"), "--json"])
    spec = json.loads((tmp_path / "s" / "model" / "model.json").read_text())
    assert spec["input_shape"] == [3, 32, 32] and r["chosen"]["macs"] < r["base"]["macs"]
    # and its pruned folder opens with --factory in a search too
    r = _json(capsys, ["search", user["pruned"], *user["opts"], "--method", "uniform",
                       "--budget", "macs=0.8", "--recal-batches", "1", "--val-images", "0",
                       "--measure-front", "2", "--option", "front=1", "--cache-dir",
                       str(tmp_path / "cache"), "--out", str(tmp_path / "s2"), "--json"])
    assert r["base"]["macs"] > 0
