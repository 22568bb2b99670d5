import json
import pytest
import torch

from prunelab.errors import PrunelabError
from prunelab.io import atomic_dir, load_model, save_model, ModelSpec
from prunelab.models import build
from prunelab.pruning import prune


def _assert_no_pickle(folder):
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "model.safetensors"]
    raw = (folder / "model.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])  # safetensors = 8-byte length + JSON header + raw tensors
    assert all("dtype" in v for k, v in header.items() if k != "__metadata__")
    assert not raw.startswith(b"\x80")  # pickle protocol marker
    json.loads((folder / "model.json").read_text())


def test_pruned_model_reloads_identically(tmp_path):
    torch.manual_seed(0)
    net = build("mobilenetv2", in_channels=1, width=0.25).eval()
    res = prune(net, "l1", ratio=0.5, input_shape=(1, 32, 32), num_classes=10)
    spec = ModelSpec.for_zoo("mobilenetv2", 1, 10, 0.25)
    save_model(res.model, spec, tmp_path / "m")
    _assert_no_pickle(tmp_path / "m")
    again, spec2 = load_model(tmp_path / "m")
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(res.model(x), again(x))
    assert spec2.layers["classifier"]["in"] == res.model.classifier.in_features


def test_corrupt_and_mismatched_files(tmp_path, saved_tiny):
    folder = saved_tiny
    st = folder / "model.safetensors"
    good = st.read_bytes()
    st.write_bytes(good[:100])
    with pytest.raises(PrunelabError, match="not a valid safetensors file"):
        load_model(folder)
    st.write_bytes(good)
    spec = json.loads((folder / "model.json").read_text())
    spec["arch"]["kwargs"]["width"] = 1.0  # weights are for width 0.5
    spec["layers"] = {}
    (folder / "model.json").write_text(json.dumps(spec))
    with pytest.raises(PrunelabError, match="do not match the architecture"):
        load_model(folder)
    (folder / "model.json").write_text("{not json")
    with pytest.raises(PrunelabError, match="corrupt"):
        load_model(folder)


def test_atomic_dir_leaves_nothing_when_interrupted(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "half").write_text("x")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_existing(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old").write_text("x")
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "new").write_text("y")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["new"]


def test_torch_load_refuses_pickled_objects(tmp_path, tiny_data):
    from prunelab.io import load_user_model

    f = tmp_path / "net.py"
    f.write_text("import torch.nn as nn\n"
                 "def make(**kw):\n    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), "
                 "nn.LazyLinear(4))\n")
    evil = tmp_path / "w.pt"
    torch.save({"model": torch.nn.Conv2d(1, 1, 1)}, evil)  # a pickled module, not a state dict
    with pytest.raises(PrunelabError, match="weights_only=True"):
        load_user_model(f"{f}:make", str(evil), [1, 32, 32], 4, [0.5], [0.5])
