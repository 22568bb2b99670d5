import json

from prunelab.io import load_model
from prunelab.pruning import prunable_groups
from prunelab.sweep import SweepConfig, layer_sweep, parse_criterion, uniform_sweep

from .test_cli import run

CFG = SweepConfig(recal_batches=2, recal_batch_size=32)


def test_parse_criterion_options():
    assert parse_criterion("fp-omp:compensation=sandwich:ridge=0.5") == (
        "fp-omp", {"compensation": "sandwich", "ridge": 0.5})
    assert parse_criterion("l1") == ("l1", {})


def test_uniform_and_layer_sweeps(saved_tiny, tiny_data):
    model, spec = load_model(saved_tiny)
    rows = uniform_sweep(model, spec, tiny_data, ["l1", "random:seed=3"], [0.2, 0.5], CFG)
    assert [(r["criterion"], r["ratio"]) for r in rows] == [
        ("l1", 0.2), ("l1", 0.5), ("random:seed=3", 0.2), ("random:seed=3", 0.5)]
    for r in rows:
        assert 0 <= r["top1"] <= 1 and r["split"] == "val" and r["seconds"] >= 0
    assert rows[1]["macs"] < rows[0]["macs"]
    _, groups = prunable_groups(model, spec.input_shape, spec.num_classes)
    per = layer_sweep(model, spec, tiny_data, "l1", [0.5], CFG, layers=[groups[1].name])
    assert len(per) == 1 and per[0]["layer"] == groups[1].name
    assert per[0]["keep"] == round(groups[1].width * 0.5)
    assert per[0]["macs"] > rows[1]["macs"]  # one layer pruned costs fewer MACs than all


def test_criteria_evaluate_cli_json(saved_tiny, idx_dir):
    code, out, err = run("criteria", "evaluate", saved_tiny, "--criteria", "l1,fp-omp",
                         "--ratios", "0.3", "--no-compensation", "--recal-batches", "2",
                         "--json", "--data-dir", idx_dir)
    assert code == 0, err
    rows = json.loads(out)
    assert [r["criterion"] for r in rows] == ["l1", "fp-omp:compensation=none"]
    for r in rows:
        assert {"criterion", "ratio", "top1", "macs", "seconds"} <= set(r)
    code, _, err = run("criteria", "evaluate", saved_tiny, "--criteria", "l1", "--ratios",
                       "0.3,2", "--data-dir", idx_dir)
    assert code == 2 and "outside (0, 1)" in err
