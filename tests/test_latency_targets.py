"""Targets: config validation, availability, fingerprints, and that each runtime really runs the
model (its output matches eager PyTorch)."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from prunelab.errors import PrunelabError
from prunelab.targets import TARGETS, TargetConfig, make_target, target_table

CPU = [e.name for e in TARGETS.entries() if e.meta["device"] == "cpu"]
GPU = [e.name for e in TARGETS.entries() if e.meta["device"] == "cuda"]


def _out(res):
    if isinstance(res, torch.Tensor):
        return res.detach().cpu().numpy()
    if isinstance(res, (list, tuple)):
        return np.asarray(res[0])
    return np.asarray(res[0])  # OpenVINO's result maps output index -> array


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)

    def forward(self, x, r):
        return torch.relu(self.bn(self.conv(x)) + r)


def test_config_is_validated_and_serialisable():
    cfg = TargetConfig("onnxruntime-cpu", batch_size=4, threads=2)
    assert TargetConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(PrunelabError, match="threads"):
        TargetConfig("torch-cpu", threads=0)
    with pytest.raises(PrunelabError, match="unknown target"):
        TargetConfig("tflite")
    with pytest.raises(PrunelabError, match="fp16 yet"):
        TargetConfig("torch-cpu", precision="fp16")
    with pytest.raises(Exception):  # frozen
        cfg.threads = 3


def test_target_table_lists_every_target_with_availability():
    rows = {r["name"]: r for r in target_table()}
    assert set(rows) == set(TARGETS.names())
    assert rows["torch-cpu"]["available"] is True
    for r in rows.values():
        assert r["available"] or r["reason"]  # unavailable ones say why and how to fix


@pytest.mark.parametrize("name", CPU)
def test_cpu_target_runs_the_real_model(name):
    if TARGETS.get(name).fn.unavailable():
        pytest.skip(TARGETS.get(name).fn.unavailable())
    torch.manual_seed(0)
    m = Block().eval()
    m.bn.running_mean.uniform_(-0.2, 0.2)
    t = make_target(TargetConfig(name, batch_size=2))
    xs = t.inputs([(3, 6, 6), (8, 6, 6)])
    with t.scope():
        res = t.runner(m, xs)()
    with torch.no_grad():
        ref = m(*xs).numpy()
    assert _out(res).shape == (2, 8, 6, 6)
    np.testing.assert_allclose(_out(res), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", GPU)
def test_gpu_targets_explain_or_run(name):
    why = TARGETS.get(name).fn.unavailable()
    if why:
        with pytest.raises(PrunelabError, match="not available here"):
            make_target(TargetConfig(name))
        return
    m = Block().eval()
    t = make_target(TargetConfig(name))
    xs = t.inputs([(3, 6, 6), (8, 6, 6)])
    with torch.no_grad():
        ref = m(*xs).numpy()
    if name.startswith("torch"):
        np.testing.assert_allclose(_out(t.runner(m, xs)()), ref, rtol=1e-3, atol=1e-3)
    else:
        t.runner(m, xs)()  # IO-bound outputs stay on the GPU


def test_fingerprint_names_machine_runtime_and_settings():
    fp = make_target(TargetConfig("torch-cpu", threads=1)).fingerprint()
    assert fp["device"]["cpu"] and fp["device"]["logical_cores"] >= 1
    assert fp["versions"]["torch"] == torch.__version__
    assert (fp["threads"], fp["batch_size"], fp["precision"]) == (1, 1, "fp32")
    fp2 = make_target(TargetConfig("torch-cpu", threads=2)).fingerprint()
    assert fp != fp2
    if not TARGETS.get("onnxruntime-cpu").fn.unavailable():
        import onnxruntime

        fo = make_target(TargetConfig("onnxruntime-cpu")).fingerprint()
        assert fo["versions"]["onnxruntime"] == onnxruntime.__version__


def test_torch_scope_sets_and_restores_threads():
    before = torch.get_num_threads()        # the test run uses 1 (conftest): start from 2
    torch.set_num_threads(2)
    try:
        t = make_target(TargetConfig("torch-cpu", threads=1))
        with t.scope():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
