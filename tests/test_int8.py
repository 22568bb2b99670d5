"""int8 on the ONNX-based targets (issue 26): the types chosen per CPU, the refusals, the int8
graph that is timed being the file that is exported, top-1 computed by the runtime itself, and
the CLI around them.  No test asserts a time."""

import json

import numpy as np
import onnx
import pytest
import torch

from prunelab.errors import PrunelabError
from prunelab.quant import choose_types, read_graph, runtime_top1
from prunelab.targets import TargetConfig, make_target
from prunelab.targets._onnx import Graph

from .test_cli import assert_user_error, run

VNNI = {"isa": ["avx2", "avx512f", "avx512_vnni"]}
AVX2 = {"isa": ["avx2", "fma"]}


def test_types_follow_the_cpu():
    act, wt, reduce, why = choose_types("auto", VNNI)
    assert (act, wt, reduce) == ("uint8", "int8", False) and "VNNI" in why
    act, wt, reduce, why = choose_types("auto", AVX2)
    assert (act, wt, reduce) == ("uint8", "int8", True) and "no VNNI" in why
    assert choose_types("s8s8", AVX2)[:3] == ("int8", "int8", False)
    assert choose_types("u8u8", VNNI)[:3] == ("uint8", "uint8", False)
    with pytest.raises(PrunelabError, match="unknown int8 types"):
        choose_types("s4s4")


def test_int8_refused_where_it_cannot_run():
    for t in ("torch-cpu", "scripted"):
        with pytest.raises(PrunelabError, match="int8 runs on onnxruntime-cpu, openvino-cpu"):
            TargetConfig(t, precision="int8")
    with pytest.raises(PrunelabError, match="at least 8 images"):
        TargetConfig("onnxruntime-cpu", precision="int8", calib_images=0)
    with pytest.raises(PrunelabError, match="calibration method"):
        TargetConfig("onnxruntime-cpu", precision="int8", calibration="median")
    # the quantization settings exist only for int8: fp32 configs (and their caches) unchanged
    assert TargetConfig("onnxruntime-cpu").to_json() == {
        "target": "onnxruntime-cpu", "batch_size": 1, "threads": 1, "precision": "fp32"}
    cfg = TargetConfig("onnxruntime-cpu", precision="int8", calib_images=64)
    assert TargetConfig.from_json(cfg.to_json()) == cfg


def _ops(data: bytes) -> list[str]:
    return [n.op_type for n in onnx.load_from_string(data).graph.node]


def _calibration(data, n=64):
    from prunelab.quant import calibration_images

    return calibration_images(data, n)


def test_the_exported_int8_file_is_the_timed_graph(tmp_path, tiny_resnet_dir, tiny_data):
    from prunelab import commands
    from prunelab.core import export_onnx

    model, spec = commands.load(str(tiny_resnet_dir))
    images = _calibration(tiny_data)
    r = export_onnx(model, tmp_path / "m.onnx", torch.zeros(1, *spec.input_shape),
                    precision="int8", calibration_images=images,
                    metadata={"model": spec.name, "dataset": "mnist-idx"})
    assert r["precision"] == "int8" and r["quantization"]["images"] == 64
    assert r["quantization"]["data"] == "user" and r["quantization"]["cpu"]["isa"] is not None
    g = read_graph(tmp_path / "m.onnx")
    assert g.meta["precision"] == "int8" and g.meta["input_shape"] == [1, *spec.input_shape]
    assert g.meta["quantization"]["activations"] == r["quantization"]["activations"]
    assert "QuantizeLinear" in _ops(g.data) and "DequantizeLinear" in _ops(g.data)
    # what an int8 target times for the module, calibrated the same way, is the file's graph
    t = make_target(TargetConfig("onnxruntime-cpu", precision="int8", calib_images=64))
    t.calibrate_on(images)
    timed = onnx.load_from_string(t.onnx_graph(model.eval(), [torch.zeros(1, *spec.input_shape)]))
    written = onnx.load_from_string(g.data)
    assert timed.graph.SerializeToString() == written.graph.SerializeToString()
    # and a file handed to a target is run as it is: its own bytes, not re-exported
    assert t.onnx_graph(g, [torch.zeros(1, *spec.input_shape)]) is g.data
    fp32 = make_target(TargetConfig("onnxruntime-cpu"))
    assert fp32.onnx_graph(g, [torch.zeros(1, *spec.input_shape)]) is g.data
    assert "QuantizeLinear" not in _ops(fp32.onnx_graph(model, [torch.zeros(1, 1, 32, 32)]))


def test_runtime_top1_of_int8_close_to_fp32_and_same_on_openvino(tiny_resnet_dir, tiny_data):
    """Top-1 computed by the runtimes themselves: the int8 graph agrees with the fp32 one on
    almost every test image, and OpenVINO runs the same int8 file."""
    from prunelab import commands
    from prunelab.core import int8_graph
    from prunelab.targets._onnx import to_onnx

    model, spec = commands.load(str(tiny_resnet_dir))
    x = torch.zeros(1, *spec.input_shape)
    data8, quant = int8_graph(model, x, _calibration(tiny_data))
    ort = make_target(TargetConfig("onnxruntime-cpu"))
    fp32 = to_onnx(model.eval(), [x])
    batches = list(tiny_data.batches("test", 20))
    f32, f8 = ort.infer(fp32), ort.infer(data8)
    agree = total = 0
    for xb, _ in batches:
        for img in xb.numpy():
            a, b = f32(img[None]), f8(img[None])
            agree += int(a.argmax() == b.argmax())
            total += 1
    assert agree / total >= 0.9, (agree, total)
    top_ort = runtime_top1(ort, data8, batches)
    with torch.no_grad():
        torch_top1 = np.mean([float((model(xb).argmax(1) == yb).float().mean())
                              for xb, yb in batches])
    assert abs(runtime_top1(ort, fp32, batches) - torch_top1) < 1e-6 + 1 / total
    ov = make_target(TargetConfig("openvino-cpu"))
    assert abs(runtime_top1(ov, data8, batches) - top_ort) <= 0.1
    # the runtime's logits, not torch's: a 2-image graph batch pads the odd last image
    ort2 = make_target(TargetConfig("onnxruntime-cpu", batch_size=2))
    two = to_onnx(model.eval(), [torch.zeros(2, *spec.input_shape)])
    odd = [(xb[:3], yb[:3]) for xb, yb in batches[:1]]
    assert runtime_top1(ort2, two, odd) == runtime_top1(ort, fp32, odd)


def test_a_file_on_a_torch_target_is_one_line(tmp_path):
    t = make_target(TargetConfig("torch-cpu"))
    with pytest.raises(PrunelabError, match="is an ONNX file: it runs on onnxruntime-cpu"):
        t.runner(Graph(b"", name="m.onnx"), [torch.zeros(1, 1, 8, 8)])
    bad = tmp_path / "not.onnx"
    bad.write_bytes(b"\x80\x04 not onnx")
    with pytest.raises(PrunelabError, match="is not an ONNX file"):
        read_graph(bad)


def test_cli_int8_refusals(tmp_path, tiny_resnet_dir, idx_dir):
    m = str(tiny_resnet_dir)
    assert_user_error(*run("eval", m, "--precision", "int8")[::2], "add --target onnxruntime-cpu")
    assert_user_error(*run("eval", m, "--target", "torch-cpu", "--precision", "int8")[::2],
                      "cannot run int8", "onnxruntime-cpu, openvino-cpu")
    out = tmp_path / "x.onnx"
    assert_user_error(*run("export", m, "--onnx", str(out), "--precision", "int8",
                           "--calib-images", "3")[::2], "at least 8 images")
    assert_user_error(*run("export", m, "--onnx", str(out), "--precision", "int8",
                           "--dynamic-batch")[::2], "drop --dynamic-batch")
    assert_user_error(*run("export", m, "--onnx", str(out), "--precision", "int8",
                           "--data-dir", str(idx_dir), "--calib-images", "100000")[::2],
                      "more than the", "training images")
    assert not out.exists()


def test_cli_export_eval_compare_an_int8_file(tmp_path, tiny_resnet_dir, idx_dir):
    m, f = str(tiny_resnet_dir), str(tmp_path / "m.int8.onnx")
    code, out, err = run("export", m, "--onnx", f, "--precision", "int8", "--data-dir",
                         str(idx_dir), "--calib-images", "32", "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["precision"] == "int8" and r["quantization"]["images"] == 32
    assert_user_error(*run("eval", f)[::2], "is an ONNX file", "--target onnxruntime-cpu")
    code, out, err = run("eval", f, "--target", "onnxruntime-cpu", "--data-dir", str(idx_dir),
                         "--json")
    assert code == 0, err
    e = json.loads(out)
    assert e["precision"] == "int8" and 0 <= e["top1"] <= 1 and e["latency_ms"] > 0
    code, out, err = run("eval", m, "--target", "onnxruntime-cpu", "--precision", "int8",
                         "--calib-images", "32", "--data-dir", str(idx_dir), "--json")
    assert code == 0, err
    e8 = json.loads(out)
    assert e8["quantization"]["images"] == 32 and abs(e8["top1"] - e["top1"]) < 1e-9
    lo, hi = e8["speedup_interval"]
    assert lo <= e8["speedup"] <= hi and e8["speedup_verdict"]
    code, out, err = run("latency", "compare", m, f, "--target", "onnxruntime-cpu",
                         "--processes", "0", "--sessions", "2", "--repeats", "5", "--json")
    assert code == 0, err
    rows = json.loads(out)["models"]
    assert rows[1]["model"] == "m.int8.onnx" and rows[1]["macs"] is None
    assert rows[1]["vs_first"]["low"] <= rows[1]["vs_first"]["estimate"]


def test_unpruned_meets_with_the_int8_gain():
    from prunelab.searches.budget import Budget
    from prunelab.searches.landing import unpruned_meets

    b = Budget.parse("speedup=2")
    assert unpruned_meets(b, 1.0, gain=2.2) and not unpruned_meets(b, 1.0, gain=1.9)
    assert not unpruned_meets(b, 1.0)  # fp32: the unpruned model is 1x itself
    assert unpruned_meets(Budget.parse("latency=1.5ms"), 1.0)
    assert not unpruned_meets(Budget.parse("macs=0.5"), 1.0, gain=9.0)


@pytest.mark.slow  # ~2 min on 2 cores: the int8 latency table quantizes every layer piece
@pytest.mark.parametrize("layers", ["all", "fast"])
def test_int8_run_budget_relative_to_fp32_and_the_artefacts(tmp_path, tiny_resnet_dir, idx_dir,
                                                            session_cache_dir, pipeline_config,
                                                            layers):
    """An int8 pipeline run on onnxruntime-cpu.  The search: the budget's reference is the
    unpruned fp32 graph (its measured gain kept for a resume), the answer comes with its int8
    file (QDQ, calibrated on training images) and a validation top-1 computed by ONNX Runtime.
    Then fine-tune in fp32, quantize, and verify: the files verify times and judges are the
    deploy artefacts, every int8 top-1 computed by the runtime, the speed-up over the fp32
    graph."""
    from prunelab.pipeline import run_pipeline

    cfg = pipeline_config(tiny_resnet_dir, idx_dir, session_cache_dir, options={},
                          search={"budget": "speedup=1.1"},
                          target={"name": "onnxruntime-cpu", "precision": "int8",
                                  "calib_images": 16, "int8_layers": layers})
    out = tmp_path / "run"
    s = run_pipeline(cfg, out)
    r = json.loads((out / "search" / "result.json").read_text())
    gain = json.loads((out / "search" / "int8_reference.json").read_text())["gain"]
    assert gain > 0
    c = r["chosen"]
    assert r["target_config"]["precision"] == "int8"
    assert c["landing"]["status"] in ("landed", "staircase", "unreachable", "unpruned", "missed")
    # a relative budget is judged against the fp32 reference the landing paired with
    assert r["budget_limit"] == pytest.approx(r["base"]["latency_ms"] / 1.1)
    g = read_graph(c["int8"]["onnx"])
    assert g.meta["precision"] == "int8" and _quantized_or_kept(g, layers)
    assert c["int8"]["quantization"]["images"] == 16
    assert c["int8"]["quantization"]["layers"] == layers
    assert 0.0 <= c["int8"]["val_top1_runtime"] <= 1.0
    # the run: the final int8 file is what verify timed and judged, and what the summary names
    v = json.loads((out / "verify.json").read_text())
    assert v["precision"] == "int8" and s["precision"] == "int8"
    assert v["order"] == ["unpruned", "unpruned_int8", "searched", "final_fp32", "final"]
    assert s["final_int8"] == str((out / "final.int8.onnx").resolve())
    assert v["rows"]["final"]["ref"] == str(out / "final.int8.onnx")
    assert v["rows"]["searched"]["ref"] == str(out / "search" / "model.int8.onnx")
    final = read_graph(out / "final.int8.onnx")
    assert final.meta["precision"] == "int8" and _quantized_or_kept(final, layers)
    # fast: the fine-tuned file keeps the searched file's choice (same widths, same process)
    assert final.meta["quantization"]["fp32_nodes"] == \
        read_graph(c["int8"]["onnx"]).meta["quantization"]["fp32_nodes"]
    from prunelab.commands import data_for, load

    model, spec = load(str(tiny_resnet_dir), dataset="mnist-idx", data_dir=str(idx_dir))
    data = data_for(spec, "mnist-idx", str(idx_dir))
    target = make_target(TargetConfig("onnxruntime-cpu", precision="int8"))
    assert v["rows"]["final"]["test_top1"] == runtime_top1(target, final.data,
                                                           data.batches("test", 500))
    assert v["rows"]["final"]["judged_by"] == "onnxruntime-cpu"
    assert v["rows"]["final_fp32"]["precision"] == "fp32"
    assert v["speedup"] > 0 and v["speedup_interval"][0] <= v["speedup"]
    # the int8 alone baseline: the unpruned model's int8 file
    assert read_graph(out / "unpruned.int8.onnx").meta["model"] == spec.name


def _quantized_or_kept(g, layers: str) -> bool:
    """An int8 file has quantize nodes, unless ``fast`` measured every stage faster in fp32 (a
    timing, so either can happen on a given machine: the file's metadata then names every
    node it kept)."""
    if "QuantizeLinear" in _ops(g.data):
        return True
    nodes = [n.name for n in onnx.load_from_string(g.data).graph.node if n.name]
    return layers == "fast" and set(nodes) <= set(g.meta["quantization"]["fp32_nodes"])


def _weights_dequantized(data: bytes) -> dict[str, bool]:
    """Conv node name -> whether its weight comes through a DequantizeLinear (int8)."""
    g = onnx.load_from_string(data).graph
    made_by = {o: n.op_type for n in g.node for o in n.output}
    return {n.name: made_by.get(n.input[1]) == "DequantizeLinear"
            for n in g.node if n.op_type == "Conv"}


def test_resolution_groups_are_the_stages(tiny_resnet_dir):
    from prunelab import commands
    from prunelab.quant import resolution_groups
    from prunelab.targets._onnx import to_onnx

    model, spec = commands.load(str(tiny_resnet_dir))
    fp32 = to_onnx(model.eval(), [torch.zeros(1, *spec.input_shape)])
    groups = resolution_groups(fp32)
    named = [n.name for n in onnx.load_from_string(fp32).graph.node if n.name]
    assert sorted(sum(groups, [])) == sorted(named)  # every node in exactly one group
    # resnet20: three stages (32x32, 16x16 from layer2's strided conv, 8x8), then the head
    assert len(groups) == 4
    assert groups[0][0] == "/conv1/Conv" and all("layer2" not in n for n in groups[0])
    assert groups[1][0].startswith("/layer2/layer2.0/conv1")
    assert groups[2][0].startswith("/layer3/layer3.0/conv1")
    assert any(n.endswith("fc/Gemm") for n in groups[3])


def test_fast_keeps_in_fp32_the_stages_that_measure_faster(tiny_resnet_dir):
    """The greedy choice with a given clock: the stage whose fp32 graph is faster stays fp32 and
    its convolutions keep float weights; a stage whose fp32 graph is not faster by the margin is
    quantized; the trail says what was measured."""
    from prunelab import commands
    from prunelab.quant import (FAST_MARGIN, fast_fp32_nodes, quantize_onnx, resolution_groups,
                                synthetic_batches)
    from prunelab.targets._onnx import to_onnx

    model, spec = commands.load(str(tiny_resnet_dir))
    fp32 = to_onnx(model.eval(), [torch.zeros(1, *spec.input_shape)])
    groups = resolution_groups(fp32)
    batches = synthetic_batches([(1, *spec.input_shape)], 16)

    def quantize(nodes):
        return quantize_onnx(fp32, batches, fp32_nodes=nodes)[0]

    def clock(graph):  # the first stage in fp32 saves 10%, the second 0.5% (inside the margin)
        fp = {k for k, v in _weights_dequantized(graph).items() if not v}
        return 1.0 - 0.1 * bool(fp & set(groups[0])) - 0.005 * bool(fp & set(groups[1]))

    def compare(a, b):
        return clock(a), clock(b)

    keep, trail = fast_fp32_nodes(fp32, quantize, compare)
    assert keep == groups[0] and 0.01 < FAST_MARGIN < 0.1
    assert [t["fp32"] for t in trail][:2] == [True, False] and trail[0]["first"] == "/conv1/Conv"
    data, choice = quantize_onnx(fp32, batches, fp32_nodes=keep, layers="fast")
    deq = _weights_dequantized(data)
    assert all(not deq[n] for n in groups[0] if n in deq)
    assert all(deq[n] for n in groups[1] + groups[2] if n in deq)
    assert choice.to_json()["fp32_nodes"] == keep and choice.layers == "fast"


def test_fast_is_decided_once_per_structure_and_exported_as_timed(tmp_path, tiny_resnet_dir,
                                                                  tiny_data):
    """int8_layers="fast" on the real runtime: the graph a target times and the file export
    writes are the same (one decision per graph structure, kept when the weights change), and
    the choice is in the file; the option is validated and part of the target's cache key."""
    from prunelab import commands
    from prunelab.core import export_onnx
    from prunelab.quant import structure_key
    from prunelab.targets._onnx import _FAST, to_onnx

    model, spec = commands.load(str(tiny_resnet_dir))
    x = torch.zeros(1, *spec.input_shape)
    images = _calibration(tiny_data)
    cfg = TargetConfig("onnxruntime-cpu", precision="int8", calib_images=64, int8_layers="fast")
    assert cfg.to_json()["int8_layers"] == "fast" and TargetConfig.from_json(cfg.to_json()) == cfg
    assert "int8_layers" not in TargetConfig("onnxruntime-cpu", precision="int8").to_json()
    with pytest.raises(PrunelabError, match="unknown int8 layers 'some'"):
        TargetConfig("onnxruntime-cpu", precision="int8", int8_layers="some")
    t = make_target(cfg)
    t.calibrate_on(images)
    timed = t.onnx_graph(model.eval(), [x])
    assert t.quant_choice.layers == "fast" and len(_FAST) >= 1
    r = export_onnx(model, tmp_path / "m.onnx", x, precision="int8", calibration_images=images,
                    int8_layers="fast")
    g = read_graph(tmp_path / "m.onnx")
    assert onnx.load_from_string(timed).graph.SerializeToString() == \
        onnx.load_from_string(g.data).graph.SerializeToString()
    assert g.meta["quantization"]["fp32_nodes"] == r["quantization"]["fp32_nodes"] == \
        list(t.quant_choice.fp32_nodes)
    measured = g.meta["quantization"]["measured"]  # every stage tried, with its two times
    assert measured and all(m["int8_ms"] > 0 and m["fp32_ms"] > 0 for m in measured)
    assert any(m["fp32"] for m in measured) == bool(r["quantization"]["fp32_nodes"])
    # a timing graph (seeded noise) of a structure not decided yet: the graph the decision
    # built and timed is the one returned, the same as building it again
    from prunelab.models import build
    from prunelab.quant import quantize_onnx, synthetic_batches
    from prunelab.targets._onnx import TIMING_CALIB_IMAGES

    wider = build("resnet20", in_channels=1, num_classes=10, width=0.375).eval()
    n = len(_FAST)
    other = make_target(TargetConfig("onnxruntime-cpu", precision="int8", int8_layers="fast"))
    g2 = other.onnx_graph(wider, [x])
    assert len(_FAST) == n + 1 and other.quant_choice.data == "synthetic"
    assert g2 == quantize_onnx(to_onnx(wider, [x]), synthetic_batches([tuple(x.shape)],
                                                                      TIMING_CALIB_IMAGES),
                               fp32_nodes=other.quant_choice.fp32_nodes)[0]
    # fine-tuned weights keep the structure (and the choice); other widths do not
    tuned = commands.load(str(tiny_resnet_dir))[0].eval()
    with torch.no_grad():
        for p in tuned.parameters():
            p.mul_(1.5)
    assert structure_key(to_onnx(tuned, [x])) == structure_key(to_onnx(model.eval(), [x]))
    other = build("resnet20", in_channels=1, num_classes=10, width=0.5).eval()
    assert structure_key(to_onnx(other, [x])) != structure_key(to_onnx(model.eval(), [x]))


@pytest.mark.slow
def test_fast_predicts_each_stage_in_the_precision_the_runtime_picks(tmp_path, tiny_resnet_dir):
    """With int8_layers="fast" the predictor is staged: the all-int8 and the fp32 predictors of
    the same target (each under its own cache fingerprint, the fp32 one the fp32 target's), a
    stage switch fitted per resolution stage on what the runtime's own decisions measured, and
    the stages are the graph's (ONNX shape inference)."""
    from prunelab import commands
    from prunelab.latency.cache import Cache
    from prunelab.latency.predictor import Predictor, StagedPredictor, build_predictor
    from prunelab.quant import resolution_stages
    from prunelab.targets._onnx import to_onnx

    model, spec = commands.load(str(tiny_resnet_dir))
    cfg = TargetConfig("onnxruntime-cpu", precision="int8", int8_layers="fast")
    t = make_target(cfg)
    cache = Cache(t.fingerprint(), tmp_path)
    pred, info = build_predictor(model, spec, t, cache, calibrate=6)
    assert isinstance(pred, StagedPredictor) and set(info["staged"]) == {"int8", "fp32"}
    x = torch.zeros(1, *spec.input_shape)
    hws = [tuple(hw) for hw, _ in resolution_stages(to_onnx(model.eval(), [x]))]
    assert pred.stage_hw == hws and len(pred.switch) == len(hws)
    assert pred.fit_info["switch_points"][0] == 7            # the unpruned model and 6 pruned
    assert len(pred.calibration) == 7 and all(r["measured_ms"] > 0 for r in pred.calibration)
    fp32 = Cache(make_target(TargetConfig("onnxruntime-cpu")).fingerprint(), tmp_path)
    assert len(fp32._table("predictors")) == 1 and len(fp32) > 0   # the fp32 target's own
    narrow = {g: 1 for g in pred.widths}
    assert pred.unanchored(narrow) < pred.unanchored({})
    assert set(pred.precisions(narrow)) <= {"int8", "fp32"}
    # cached: a second build reads it back, as a search's resume reads predictor.json
    again, _ = build_predictor(model, spec, t, cache, calibrate=6)
    assert again.to_json() == pred.to_json()
    assert Predictor.from_json(pred.to_json()).unanchored(narrow) == \
        pytest.approx(pred.unanchored(narrow))
