"""The CLI in real processes: bad input gives one line, exit code 2 and no traceback; good input
gives the JSON contract."""

import json
import os

import pytest

from .cli_proc import cli

ENV = {**os.environ, "PRUNELAB_QUIET": "1"}


def run(*args, cwd=None):
    """``python -m prunelab.cli ARGS`` in a process of its own (see tests/cli_proc.py)."""
    r = cli(args, env=ENV, cwd=cwd)
    return r.returncode, r.stdout, r.stderr


def assert_user_error(code, err, *fragments):
    assert code == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    for f in fragments:
        assert f in lines[0], lines[0]


def test_unknown_model():
    assert_user_error(*run("eval", "resnet57.fmnist")[::2], "resnet57.fmnist",
                      "neither a model folder nor a shipped model")


def test_unknown_criterion(saved_tiny):
    assert_user_error(*run("prune", saved_tiny, "--criterion", "l3", "--ratio", "0.5")[::2],
                      "l3", "l1")


def test_unknown_dataset(saved_tiny):
    assert_user_error(*run("eval", saved_tiny, "--dataset", "mnsit")[::2],
                      "unknown dataset 'mnsit'", "choose one of")


@pytest.mark.parametrize("ratio", ["0", "1", "1.5", "-0.2", "abc"])
def test_ratio_outside_unit_interval(saved_tiny, ratio):
    assert_user_error(*run("prune", saved_tiny, "--ratio", ratio)[::2], "ratio")


def test_keep_above_width(saved_tiny, idx_dir):
    code, _, err = run("prune", saved_tiny, "--keep", "conv1=999", "--dataset", "mnist-idx",
                       "--data-dir", idx_dir)
    assert_user_error(code, err, "keep count 999", "conv1", "width 8")


def test_weights_do_not_match_architecture(tmp_path, idx_dir):
    from safetensors.torch import save_file
    import torch

    f = tmp_path / "net.py"
    f.write_text("import torch.nn as nn\n"
                 "def make(**kw):\n    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), "
                 "nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), "
                 "nn.Linear(8, 4))\n")
    save_file({"0.weight": torch.zeros(3, 1, 3, 3)}, str(tmp_path / "w.safetensors"))
    code, _, err = run("eval", f"{f}:make", "--weights", tmp_path / "w.safetensors",
                       "--dataset", "mnist-idx", "--data-dir", idx_dir)
    assert_user_error(code, err, "do not match the architecture")


def test_corrupt_model_file(saved_tiny):
    (saved_tiny / "model.safetensors").write_bytes(b"\x00" * 50)
    assert_user_error(*run("eval", saved_tiny)[::2], "not a valid safetensors file")


def test_untraceable_user_model(tmp_path, idx_dir):
    f = tmp_path / "odd.py"
    f.write_text("import torch.nn as nn\nclass Odd(nn.Module):\n"
                 "    def __init__(self):\n        super().__init__(); self.c = nn.Conv2d(1, 4, 3)\n"
                 "    def forward(self, x, mask):\n        return self.c(x * mask)\n"
                 "def make(**kw):\n    return Odd()\n")
    code, _, err = run("prune", f"{f}:make", "--ratio", "0.5", "--dataset", "mnist-idx",
                       "--data-dir", idx_dir)
    assert_user_error(code, err, "does not run on 1x32x32 inputs", "forward()", "mask")


def test_missing_dataset_names_the_package(saved_tiny, tmp_path):
    code, _, err = run("eval", saved_tiny, "--dataset", "fmnist", "--data-dir", tmp_path / "none")
    assert_user_error(code, err, "dataset-fashion-mnist", "--data-dir")


def test_debug_shows_traceback():
    code, _, err = run("--debug", "eval", "resnet57.fmnist")
    assert code != 0 and "Traceback" in err


def test_prune_json_contract_and_saved_folder(saved_tiny, idx_dir, tmp_path):
    out = tmp_path / "pruned"
    code, stdout, err = run("prune", saved_tiny, "--ratio", "0.5", "--out", out, "--json",
                            "--data-dir", idx_dir, "--repeats", "5")
    assert code == 0, err
    r = json.loads(stdout)
    for k in ("model", "top1", "macs", "params", "latency_ms", "latency", "base", "out"):
        assert k in r
    for k in ("runtime", "batch_size", "threads", "repeats"):
        assert k in r["latency"]
    assert r["macs"] < 0.5 * r["base"]["macs"] and 0 <= r["top1"] <= 1
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.safetensors"]
    code, stdout, err = run("eval", out, "--json", "--data-dir", idx_dir, "--repeats", "5")
    assert code == 0, err
    again = json.loads(stdout)
    assert again["top1"] == r["top1"] and again["macs"] == r["macs"]


def test_list_commands_come_from_registries():
    from prunelab.criteria import CRITERIA
    code, stdout, _ = run("criteria", "list", "--json")
    assert code == 0 and [c["name"] for c in json.loads(stdout)] == CRITERIA.names()
    code, stdout, _ = run("models", "--json")
    names = [a["name"] for a in json.loads(stdout)["architectures"]]
    assert {"vgg16", "resnet56", "resnet50", "mobilenetv2"} <= set(names)
