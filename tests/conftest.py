"""Shared fixtures: tiny models and a tiny MNIST-format IDX data set written to disk."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from prunelab.io import ModelSpec, save_model

FMNIST = Path("/usr/share/datasets/fashion-mnist")

# Hang guards (subprocess timeouts, per-test timeouts) are for hangs, not for speed: a loaded
# machine (CI shares its cores; a run beside other jobs is 2-3x slower) must not trip them.
# PRUNELAB_TEST_TIMEOUT_SCALE=3 scales them, for a slower machine still (PYTEST_TIMEOUT=1800 the
# per-test one).
TIMEOUT_SCALE = float(os.environ.get("PRUNELAB_TEST_TIMEOUT_SCALE", "1"))


def hang_guard(seconds: float) -> float:
    """``seconds`` times ``PRUNELAB_TEST_TIMEOUT_SCALE``."""
    return seconds * TIMEOUT_SCALE


def pytest_configure(config):
    """The test run's own timing gate (:mod:`prunelab.gate`), unless one is set: the prunelab
    processes of this run (subprocesses and xdist workers inherit it) still keep quiet while one of
    them times, but another job's prunelab processes on the machine (a second test run, a CI job
    beside this one) neither wait for this run's batches nor hold its timings up; with the
    machine-wide default a timing here waited out another suite's work (past the 300 s guard)."""
    import tempfile

    from prunelab import gate

    # one torch/OpenMP thread per process (subprocesses, the CLI zygote and Ray workers inherit
    # it): on 2 cores with another job on one of them, two threads spin in OpenMP barriers for the
    # busy core and the suite ran 1.7x slower (16 min beside a 1-core busy loop)
    if not os.environ.get("OMP_NUM_THREADS"):
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)

    if not os.environ.get(gate.ENV):
        d = tempfile.mkdtemp(prefix="prunelab-test-gate-")
        os.environ[gate.ENV] = os.path.join(d, "gate")
        config._prunelab_gate_dir = d


def pytest_unconfigure(config):
    import shutil

    d = getattr(config, "_prunelab_gate_dir", None)
    if d:
        shutil.rmtree(d, ignore_errors=True)



def write_idx(path: Path, arr: np.ndarray, gz: bool = True) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def make_idx_dataset(root: Path, n_train: int = 240, n_test: int = 60, classes: int = 4,
                     seed: int = 0) -> Path:
    """A learnable toy set, invariant to flips and small shifts: class k is a bright shape
    (0 horizontal bar, 1 vertical bar, 2 square, 3 two bars) at a jittered place, plus noise."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)

    def make(n):
        y = rng.integers(0, classes, n)
        x = rng.integers(0, 40, (n, 28, 28))
        for i, k in enumerate(y):
            r, c = rng.integers(6, 10, 2)
            if k == 0:
                x[i, r + 5:r + 8, c:c + 14] = 220
            elif k == 1:
                x[i, r:r + 14, c + 5:c + 8] = 220
            elif k == 2:
                x[i, r + 3:r + 11, c + 3:c + 11] = 220
            else:
                x[i, r + 2:r + 4, c:c + 14] = 220
                x[i, r + 10:r + 12, c:c + 14] = 220
        return x.astype(np.uint8), y.astype(np.uint8)

    tx, ty = make(n_train)
    sx, sy = make(n_test)
    write_idx(root / "train-images-idx3-ubyte", tx)
    write_idx(root / "train-labels-idx1-ubyte", ty)
    write_idx(root / "t10k-images-idx3-ubyte", sx)
    write_idx(root / "t10k-labels-idx1-ubyte", sy)
    return root


@pytest.fixture(scope="session")
def idx_dir(tmp_path_factory) -> Path:
    return make_idx_dataset(tmp_path_factory.mktemp("idx"))


@pytest.fixture(scope="session")
def tiny_data(idx_dir):
    from prunelab.data import load_dataset

    return load_dataset("mnist-idx", str(idx_dir), val_size=40)


# --- tiny models covering the three structural families ------------------------------------

class TinyVGG(nn.Module):
    def __init__(self, in_channels=1, num_classes=4):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 24, 3, padding=1, bias=False), nn.BatchNorm2d(24), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(24, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


def tiny_resnet(in_channels=1, num_classes=4):
    """ResNet-8 at half width: three residual blocks, a downsampling 1x1 shortcut per stage."""
    from prunelab.models.resnet_cifar import CifarResNet

    return CifarResNet(8, in_channels, num_classes, width=0.5)


class TinyMobileNet(nn.Module):
    """MobileNetV2-like: inverted residuals with depthwise convs, ReLU6, a linear bottleneck and a
    residual add."""

    def __init__(self, in_channels=1, num_classes=4):
        super().__init__()
        from prunelab.models.mobilenetv2 import InvertedResidual, conv_bn

        self.features = nn.Sequential(conv_bn(in_channels, 8, 3, 2), InvertedResidual(8, 8, 1, 2),
                                      InvertedResidual(8, 16, 2, 2), conv_bn(16, 32, 1, 1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


def tiny_mobilenet(in_channels=1, num_classes=4):
    return TinyMobileNet(in_channels, num_classes)


TINY_MODELS = {"vgg": TinyVGG, "resnet": tiny_resnet, "mobilenet": tiny_mobilenet}


@pytest.fixture(params=sorted(TINY_MODELS))
def tiny_model(request):
    torch.manual_seed(0)
    m = TINY_MODELS[request.param]()
    # non-trivial BN statistics, so that pruning changes the outputs
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.weight.data.uniform_(0.5, 1.5)
            mod.running_mean.uniform_(-0.1, 0.1)
    return m.eval()


@pytest.fixture
def saved_tiny(tmp_path, tiny_data):
    """A zoo ResNet-20 (width 0.5) saved as a model folder, trained on nothing."""
    from prunelab.models import build

    torch.manual_seed(0)
    m = build("resnet20", in_channels=1, num_classes=tiny_data.num_classes, width=0.5).eval()
    spec = ModelSpec.for_zoo("resnet20", 1, tiny_data.num_classes, 0.5, 32, tiny_data.mean,
                             tiny_data.std, "mnist-idx")
    return save_model(m, spec, tmp_path / "tiny")


# --- a tiny model folder, a shared latency cache and a finished tiny pipeline run -------------

@pytest.fixture(scope="session")
def tiny_resnet_dir(tmp_path_factory, tiny_data):
    """A zoo ResNet-20 at width 0.25 saved as a model folder (untrained)."""
    from prunelab.models import build

    torch.manual_seed(0)
    m = build("resnet20", in_channels=1, num_classes=tiny_data.num_classes, width=0.25).eval()
    spec = ModelSpec.for_zoo("resnet20", 1, tiny_data.num_classes, 0.25, 32, tiny_data.mean,
                             tiny_data.std, "mnist-idx")
    return save_model(m, spec, tmp_path_factory.mktemp("m") / "tiny")


@pytest.fixture(scope="session")
def session_cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("latcache-session"))


def tiny_pipeline(model_dir, idx_dir, cache_dir, method="uniform", options=None, **over):
    """A pipeline config (dict) small enough for a test: a few evaluations, one short epoch."""
    cfg = {
        "run": {"seed": 0},
        "model": {"ref": str(model_dir), "dataset": "mnist-idx", "data_dir": str(idx_dir)},
        "search": {"method": method, "budget": "macs=0.6", "recal_batches": 1, "val_images": 0,
                   "measure_front": 2, "decision_processes": 0,
                   "options": options if options is not None else {"front": 1}},
        "target": {"name": "torch-cpu", "cache_dir": str(cache_dir)},
        "finetune": {"epochs": 1, "batch_size": 64, "recal_batches": 1},
        "verify": {"warmup": 1, "repeats": 5, "min_seconds": 0, "sessions": 2, "processes": 0},
    }
    for k, v in over.items():
        cfg[k] = {**cfg.get(k, {}), **v}
    return cfg


@pytest.fixture(scope="session")
def pipeline_config():
    """:func:`tiny_pipeline`, for test modules (they cannot import conftest)."""
    return tiny_pipeline


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_resnet_dir, idx_dir, session_cache_dir):
    """A finished tiny pipeline run folder (uniform + l1, one fine-tune epoch)."""
    from prunelab.pipeline import run_pipeline

    out = tmp_path_factory.mktemp("runs") / "uniform"
    run_pipeline(tiny_pipeline(tiny_resnet_dir, idx_dir, session_cache_dir), out)
    return out
