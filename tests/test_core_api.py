"""The object core on a user's own model and plain DataLoaders (nothing from the zoo, no
registered data set): search on a latency budget (the scripted target: nothing is timed),
fine-tune, save/load, ONNX export; the user's module is never modified."""

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import prunelab as pl
from prunelab.errors import PrunelabError


class BranchyNet(nn.Module):
    """A stem, a two-branch block (3x3 and depthwise-separable) joined by a sum, a head."""

    def __init__(self, classes=4):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        self.a = nn.Sequential(nn.Conv2d(16, 24, 3, padding=1, bias=False), nn.BatchNorm2d(24))
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False),
                                nn.BatchNorm2d(16), nn.Conv2d(16, 24, 1, bias=False),
                                nn.BatchNorm2d(24))
        self.head = nn.Conv2d(24, 32, 3, stride=2, padding=1)
        self.fc = nn.Linear(32, classes)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = F.relu(self.a(x) + self.dw(x))
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.head(x)), 1).flatten(1))


def _loaders(n=192, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.randn(n, 1, 16, 16, generator=g) * 0.3
    for i, k in enumerate(y.tolist()):  # class k: a bright band at row block k
        x[i, 0, 4 * k:4 * k + 4, :] += 1.5
    train = DataLoader(TensorDataset(x[:128], y[:128]), batch_size=32, shuffle=True,
                       generator=torch.Generator().manual_seed(1))
    val = DataLoader(TensorDataset(x[128:], y[128:]), batch_size=32)
    return train, val


def _state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    net = BranchyNet()
    train, val = _loaders()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    for _ in range(3):
        for x, y in train:
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
    return net.eval(), train, val


def test_search_finetune_save_load_export_on_a_users_module(trained, tmp_path):
    net, train, val = trained
    before = _state(net)
    example = torch.randn(1, 1, 16, 16)
    res = pl.search(net, example, train=train, val=val, target="scripted", budget="speedup=1.5",
                    method="uniform", criterion="l1", out=tmp_path / "search", recal_batches=2,
                    val_images=0, measure_front=3, cache_dir=str(tmp_path / "cache"))
    assert isinstance(res, pl.SearchResult) and isinstance(res.model, nn.Module)
    assert res.chosen["budget_met"] and res.speedup >= 1.5
    assert res.model is not net and res.model.fc.out_features == 4     # the output stays
    assert sum(res.keep.values()) < sum(res.widths_before.values())
    assert res.to_json()["method"] == "uniform" and "model" not in res.to_json()
    assert res.model(example).shape == (1, 4)

    tuned = pl.finetune(res.model, teacher=net, train=train, val=val, epochs=1, lr=0.02,
                        recal_batches=2, precision="fp32")
    assert isinstance(tuned, pl.FinetuneResult) and tuned.model is not res.model
    assert tuned.score >= tuned.before_score            # best epoch kept (epoch 0 competes)
    assert tuned.teacher_score is not None and len(tuned.history) == 1

    folder = pl.save(tuned.model, tmp_path / "final", example)
    with pytest.raises(PrunelabError, match="like="):
        pl.load(folder)                                  # never imports the user's code
    again = pl.load(folder, like=net)
    x = torch.randn(3, 1, 16, 16)
    torch.testing.assert_close(again(x), tuned.model.eval()(x))

    ort = pytest.importorskip("onnxruntime")
    info = pl.export_onnx(tuned.model, tmp_path / "m.onnx", example)
    sess = ort.InferenceSession(info["onnx"], providers=["CPUExecutionProvider"])
    got = sess.run(["logits"], {"input": example.numpy()})[0]
    np.testing.assert_allclose(got, tuned.model(example).detach().numpy(), rtol=1e-4, atol=1e-5)
    assert info["differs_from_measured"] == []

    after = _state(net)                                   # the user's module is untouched
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.device.type == "cpu" for p in net.parameters()) and not net.training


def test_eval_fn_and_ignored_layers(trained):
    """eval_fn replaces top-1 (no val loader needed); ignored layers keep their width."""
    net, train, _ = trained
    calls = []

    def eval_fn(m):
        calls.append(1)
        return -float(sum(p.detach().abs().sum() for p in m.parameters()))  # higher is better

    res = pl.search(net, (1, 16, 16), train=train, eval_fn=eval_fn, target="scripted",
                    budget="macs=0.6", method="uniform", criterion="l1", recal_batches=1,
                    measure_front=2, ignored_layers=["a.0", net.head])
    assert calls and res.out is None                     # a temporary folder, removed
    assert res.model.a[0].out_channels == 24 and res.model.head.out_channels == 32
    assert res.model.stem[0].out_channels < 16


@pytest.mark.parametrize("kwargs, match", [
    ({"val": None}, "val= .* or eval_fn="),
    ({"train": None}, "pass train="),
    ({"budget": "speedup=0.5"}, "speedup"),
    ({"method": "nsga3"}, "unknown search method"),
    ({"target": "tpu"}, "unknown target"),
    ({"ignored_layers": ["nope"]}, "not a module"),
])
def test_bad_arguments_fail_before_any_work(trained, kwargs, match):
    net, train, val = trained
    args = dict(train=train, val=val, target="scripted", budget="macs=0.5", method="uniform")
    args.update(kwargs)
    with pytest.raises(PrunelabError, match=match):
        pl.search(net, (1, 16, 16), **args)


def test_non_classifier_output_is_refused_in_one_line(trained):
    net, train, val = trained

    class Spatial(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = copy.deepcopy(net)

        def forward(self, x):
            return self.net(x)[:, :, None, None]       # (N, 4, 1, 1): not (batch, classes)

    with pytest.raises(PrunelabError, match=r"\(batch, classes\)"):
        pl.search(Spatial(), (1, 16, 16), train=train, val=val, target="scripted",
                  method="uniform")


def _scripted_base_ms(net):
    from prunelab.targets.scripted import scripted_ms

    return scripted_ms(copy.deepcopy(net), [(1, 16, 16)], 1)


def test_latency_budget_with_nsga2_slack(trained, tmp_path):
    """An absolute latency budget: nsga2 explores points up to 10% over the limit (its
    constraint slack keeps them in the population), but the chosen model meets the limit on the
    (scripted) target."""
    import json

    net, train, val = trained
    limit = round(0.6 * _scripted_base_ms(net), 4)
    res = pl.search(net, (1, 16, 16), train=train, val=val, target="scripted",
                    budget=f"latency={limit}ms", method="nsga2", criterion="l1",
                    options={"pop": 10, "gens": 4}, out=tmp_path / "s", recal_batches=1,
                    val_images=0, measure_front=6, cache_dir=str(tmp_path / "cache"))
    assert res.chosen["budget_met"] and res.chosen["latency_ms"] <= limit
    rows = [json.loads(x) for x in (tmp_path / "s" / "evaluations.jsonl").open()]
    in_slack = [r for r in rows if limit < r["latency_ms"] <= 1.1 * limit]
    assert in_slack, "no candidate in nsga2's slack band: the constraint slack is not exercised"
    assert all(not r["feasible"] for r in in_slack)       # the slack never makes them feasible




def test_nsga2_anchors_its_budget_on_measured_latency(trained, tmp_path, monkeypatch):
    """A predictor that reads pruned models 30% fast (as the real one does on narrow shapes)
    puts nsga2's whole front over the budget measured, unless the search measures its error
    near the budget (``anchor``): then the ratio is found (before the space, and every quarter
    of the generations on the population's own points), kept in ``anchors.json``, and the method's own choice already
    meets the budget on the (scripted) target before the landing."""
    import json

    from prunelab.searches import run as run_mod

    real = run_mod._predictor

    def optimistic(*a, **kw):
        p = real(*a, **kw)
        p.anchor = {**p.anchor, "scale": 0.7 * p.anchor["scale"],
                    "offset_ms": 0.7 * p.anchor["offset_ms"]}
        return p

    monkeypatch.setattr(run_mod, "_predictor", optimistic)
    net, train, val = trained

    def search(name, anchor):
        return pl.search(net, (1, 16, 16), train=train, val=val, target="scripted",
                         budget="speedup=1.6", method="nsga2", criterion="l1",
                         options={"pop": 8, "gens": 4, "anchor": anchor}, out=tmp_path / name,
                         recal_batches=1, val_images=0, measure_front=6,
                         cache_dir=str(tmp_path / "cache"))

    blind, seen = search("blind", 0), search("anchored", 2)
    assert not (tmp_path / "blind" / "anchors.json").exists()
    anchors = json.loads((tmp_path / "anchored" / "anchors.json").read_text())
    # before the space, then every quarter of the 4 generations (at 1, 2, 3 and 4)
    assert set(anchors) == {"space", *(f"generation {g}" for g in (1, 2, 3, 4))}
    for a in anchors.values():  # measured / predicted: about 1 / 0.7
        assert 1.25 < a["ratio"] < 1.65, a
    last = anchors["generation 4"]
    assert seen.raw["method_info"]["anchors"]["generation 4"]["ratio"] == last["ratio"]
    # blind, some of the front's points the predictor calls within the budget measure over it;
    # anchored, every point the anchored limit calls within it measures within it, and the
    # method's own choice (before the landing) meets the budget measured
    limit = blind.raw["budget_limit"]
    assert any(p["predicted_ms"] <= limit < p["latency_ms"] for p in blind.raw["measured"])
    ratio = last["ratio"]
    judged = [p for p in seen.raw["measured"] if ratio * p["predicted_ms"] <= limit]
    assert judged and all(p["latency_ms"] <= 1.03 * limit for p in judged)
    assert seen.chosen["method_choice"]["measured_speedup"] >= 0.97 * 1.6
    assert seen.chosen["budget_met"] and blind.chosen["budget_met"]  # the landing lands both
    # a resume replays the anchors from the folder (nothing timed again, same choice)
    again = search("anchored", 2)
    assert again.keep == seen.keep
