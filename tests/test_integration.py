"""Integration on the embedded default: the shipped models on real Fashion-MNIST."""

import json
import subprocess
import sys

import pytest
from prunelab import commands
from prunelab.io import list_pretrained, load_model

from .conftest import FMNIST, hang_guard
from .test_cli import ENV
from .test_io import _assert_no_pickle


pytestmark = pytest.mark.skipif(not FMNIST.is_dir(), reason="Fashion-MNIST Debian package "
                                "(dataset-fashion-mnist) not installed")

SHIPPED = ["resnet20.fmnist", "resnet56.fmnist", "vgg16.fmnist"]


def test_all_three_models_ship():
    assert set(SHIPPED) <= set(list_pretrained())


# resnet20 in the default run; the two larger nets (the whole test split through a VGG-16 or a
# ResNet-56 is minutes on 2 loaded cores) in the slow set
@pytest.mark.parametrize("name", [n if n == "resnet20.fmnist" else
                                  pytest.param(n, marks=pytest.mark.slow) for n in SHIPPED])
def test_shipped_model_meets_accuracy_floor(name):
    model, spec = commands.load(name)
    r = commands.measure(model, spec, commands.data_for(spec), repeats=5, warmup=2)
    assert r["top1"] >= 0.93, r
    # the figure recorded at training time is the one we measure now
    assert abs(spec.provenance["trained"]["test_top1"] - r["top1"]) < 1e-6


@pytest.mark.slow
def test_prune_resnet20_l1_half(tmp_path):
    """The shipped ResNet-20 (resnet56 checks the same at 3x the cost: 404 s under load)."""
    out = tmp_path / "r20"
    r = subprocess.run([sys.executable, "-m", "prunelab.cli", "prune", "resnet20.fmnist",
                        "--criterion", "l1", "--ratio", "0.5", "--out", str(out), "--json",
                        "--repeats", "10"], capture_output=True, text=True, env=ENV, timeout=hang_guard(900))
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert 1 - res["macs"] / res["base"]["macs"] >= 0.40
    assert res["base"]["top1"] >= 0.93 and 0 <= res["top1"] <= 1
    _assert_no_pickle(out)
    # the reloaded folder reproduces the pruned model's test accuracy exactly
    pruned, spec = load_model(out)
    again = commands.measure(pruned, spec, commands.data_for(spec), repeats=3, warmup=1)
    assert again["top1"] == res["top1"] and again["macs"] == res["macs"]
    assert spec.provenance["pruned"]["criterion"] == "l1"
