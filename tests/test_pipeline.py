"""The pipeline (``prunelab run``): a validated config, search -> fine-tune -> verify on a tiny
model and tiny data, resume, one-line config errors, and every shipped example config."""

import json
import os
import shutil
from pathlib import Path

import pytest

from prunelab.errors import PrunelabError
from prunelab.pipeline import SECTIONS, load_config, run_pipeline, to_toml

from .cli_proc import cli

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.toml"))


def _cli(args, cwd=None):
    e = {**os.environ, "PRUNELAB_QUIET": "1",
         "PYTHONPATH": str(Path(__file__).parent.parent)}
    return cli(args, env=e, cwd=cwd)


# ----------------------------------------------------------------------------- configs


def test_examples_ship_and_validate():
    names = {p.stem for p in EXAMPLES}
    assert {"quick", "nsga2-deeplift", "cie-l1", "omp-search-fp-omp", "abc-l1", "uniform-l1",
            "global-l1"} <= names
    cfgs = {p.stem: load_config(p) for p in EXAMPLES}
    methods = {n: (c.search.method, c.search.criterion) for n, c in cfgs.items()}
    assert methods["nsga2-deeplift"] == ("nsga2", "deeplift")
    assert methods["cie-l1"] == ("cie", "l1")
    assert methods["omp-search-fp-omp"] == ("omp-search", "fp-omp")
    # the comparison examples differ only in the search: same model, target, budget, fine-tune
    same = [c for n, c in cfgs.items() if n != "quick"]
    for c in same:
        assert c.model == same[0].model and c.target == same[0].target
        assert c.search.budget == same[0].search.budget and c.finetune == same[0].finetune
        assert c.run.out == f"runs/{c.name}"
    assert cfgs["quick"].model.ref == "resnet20.fmnist" and cfgs["quick"].finetune.epochs >= 1


def test_config_round_trips_through_toml(tmp_path):
    c = load_config(EXAMPLES[0])
    p = tmp_path / "again.toml"
    p.write_text(to_toml(c.to_json()))
    assert load_config(p).to_json() == c.to_json()


@pytest.mark.parametrize("bad, words", [
    ({"search": {"method": "uniform", "bugdet": "macs=0.5"}}, ["[search]", "'bugdet'"]),
    ({"search": {"method": "uniform"}, "finetun": {}}, ["[finetun]"]),
    ({"search": {"method": "uniform", "budget": "macs=2"}}, ["budget"]),
    ({"search": {"method": "uniform", "budget": "fast"}}, ["budget"]),
    ({"search": {"method": "nope"}}, ["nope"]),
    ({"search": {"method": "uniform", "options": {"pop": 3}}}, ["pop", "uniform"]),
    ({"search": {"method": "uniform"}, "target": {"name": "tpu-9000"}}, ["tpu-9000"]),
    ({"search": {"method": "uniform"}, "finetune": {"epochs": "two"}}, ["epochs"]),
    ({"search": {"method": "uniform"}, "finetune": {"kd_weight": 3}}, ["kd_weight"]),
    ({"search": {"method": "uniform"}, "verify": {"repeats": 1}}, ["repeats"]),
    ({"search": {}}, ["method"]),
])
def test_config_errors_name_the_problem(bad, words):
    raw = {"model": {"ref": "resnet20.fmnist"}, **bad}
    with pytest.raises(PrunelabError) as e:
        load_config(raw)
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, (w, msg)


def test_sections_documented_in_help():
    r = _cli(["run", "--help"])
    assert r.returncode == 0
    for s, cls in SECTIONS.items():
        assert f"[{s}]" in r.stdout.replace("\n", " ")


@pytest.mark.parametrize("body, words", [
    ('[model]\nref = "resnet20.fmnist"\n[search]\nmethod = "uniform"\nbudjet = "macs=0.5"\n',
     ["'budjet'", "[search]"]),
    ('[model]\nref = "resnet20.fmnist"\n[search]\nmethod = "uniform"\nbudget = "macs=1.5"\n',
     ["budget"]),
    ('[model]\nref = "no/such/model"\n[search]\nmethod = "uniform"\n', ["no/such/model"]),
    ('[model\nref = 1\n', ["TOML"]),
])
def test_cli_config_errors_exit_2_leave_nothing(body, words, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(body)
    out = tmp_path / "run"
    r = _cli(["run", str(cfg), "--out", str(out)])
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prunelab: error:"), r.stderr
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in lines[0]
    assert not out.exists()


def test_cli_missing_config_file(tmp_path):
    r = _cli(["run", str(tmp_path / "none.toml")])
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "not found" in r.stderr


# ----------------------------------------------------------------------------- the run


def test_pipeline_end_to_end(tiny_run, tiny_resnet_dir):
    s = json.loads((tiny_run / "summary.json").read_text())
    for k in ("method", "criterion", "budget", "target", "rows", "speedup", "speedup_verdict",
              "search_seconds", "finetune_seconds", "wall_seconds", "final_model"):
        assert k in s, k
    assert s["method"] == "uniform" and s["criterion"] == "l1" and s["finetune_epochs"] == 1
    rows = s["rows"]
    assert set(rows) == {"unpruned", "searched", "final"}
    for r in rows.values():
        assert 0 <= r["test_top1"] <= 1 and r["latency_ms"] > 0 and r["macs"] > 0
    assert rows["final"]["macs"] == rows["searched"]["macs"] < rows["unpruned"]["macs"]
    assert rows["final"]["macs"] <= 0.6 * rows["unpruned"]["macs"]  # macs budgets are exact
    # the speed-up is the paired estimate (final vs unpruned, ABBA sessions), with its interval
    lo, hi = s["speedup_interval"]
    assert lo <= s["speedup"] <= hi and s["speedup"] > 0
    assert s["speedup_verdict"] in ("final faster", "unpruned faster", "within noise")
    # the run folder records what ran, where and with which seeds
    for f in ("config.toml", "config.json", "environment.json", "search/result.json",
              "search/model/model.json", "finetuned/model.json", "finetune.json",
              "verify.json", "summary.json"):
        assert (tiny_run / f).exists(), f
    assert not list(tiny_run.parent.glob("*.ckpt")) and not (tiny_run / "finetuned.ckpt").exists()
    env = json.loads((tiny_run / "environment.json").read_text())
    assert env["libraries"]["torch"] and env["target_fingerprint"]["target"] == "torch-cpu"
    assert env["seeds"]["search"] == 0 and "cpu" in env["target_fingerprint"]["device"]
    cfg = json.loads((tiny_run / "config.json").read_text())
    assert cfg["search"]["method"] == "uniform" and cfg["verify"]["repeats"] == 5
    assert load_config(tiny_run / "config.toml").to_json() == cfg
    v = json.loads((tiny_run / "verify.json").read_text())
    assert v["protocol"]["interleaved"] and v["protocol"]["sessions"] == 2
    final = v["rows"]["final"]["latency"]  # 5 runs in each of 2 fresh sessions
    assert final["repeats"] == 10 and len(final["sessions_ms"]) == 2
    assert final["median_ms"] == min(final["sessions_ms"])
    assert v["protocol"]["min_seconds"] == 0
    # the final model is the fine-tuned one, distilled from the unpruned parent
    from prunelab.io import load_model

    _, spec = load_model(tiny_run / "finetuned")
    assert spec.provenance["finetuned"]["teacher"]["ref"] == str(Path(tiny_resnet_dir).resolve())
    assert spec.provenance["pruned"]["method"] == "uniform"


def test_finished_run_is_not_redone(tiny_run, tiny_resnet_dir, idx_dir, session_cache_dir,
                                    pipeline_config):
    before = (tiny_run / "summary.json").stat().st_mtime_ns
    r = run_pipeline(pipeline_config(tiny_resnet_dir, idx_dir, session_cache_dir), tiny_run)
    assert r["resumed"] and (tiny_run / "summary.json").stat().st_mtime_ns == before


def test_other_settings_refuse_the_folder(tiny_run, tiny_resnet_dir, idx_dir, session_cache_dir,
                                          pipeline_config):
    cfg = pipeline_config(tiny_resnet_dir, idx_dir, session_cache_dir, finetune={"epochs": 2})
    with pytest.raises(PrunelabError, match=r"other settings \(\[finetune\] epochs\)"):
        run_pipeline(cfg, tiny_run)


def test_interrupted_run_resumes(tiny_run, tiny_resnet_dir, idx_dir, session_cache_dir,
                                 tmp_path, pipeline_config):
    """A run stopped in the middle of its search (log cut short, no result) finishes on the
    rerun without repeating a logged evaluation, then runs the later stages."""
    run = tmp_path / "cut"
    shutil.copytree(tiny_run, run)
    for f in ("summary.json", "verify.json", "finetune.json", "timing.json",
              "search/result.json", "search/pareto.json"):
        (run / f).unlink(missing_ok=True)
    shutil.rmtree(run / "finetuned")
    shutil.rmtree(run / "search" / "model")
    log = run / "search" / "evaluations.jsonl"
    rows = log.read_text().splitlines()
    n = len(rows)
    log.write_text("\n".join(rows[:-1]) + "\n")
    state = json.loads((run / "search" / "state.json").read_text())
    (run / "search" / "state.json").write_text(json.dumps({**state, "status": "interrupted",
                                                           "evaluations": n - 1}))
    r = run_pipeline(pipeline_config(tiny_resnet_dir, idx_dir, session_cache_dir), run)
    assert "resumed" not in r
    again = [json.loads(x) for x in log.read_text().splitlines()]
    assert len(again) == n
    assert [x["key"] for x in again] == [json.loads(x)["key"] for x in rows]
    assert (run / "finetuned" / "model.json").exists() and (run / "summary.json").exists()
    env = json.loads((run / "environment.json").read_text())
    assert env["sessions"] and env["sessions"][-1]["same_fingerprint"]


def test_no_finetune_stage(tiny_resnet_dir, idx_dir, session_cache_dir, tmp_path,
                           pipeline_config):
    cfg = pipeline_config(tiny_resnet_dir, idx_dir, session_cache_dir, method="global",
                        finetune={"epochs": 0})
    r = run_pipeline(cfg, tmp_path / "g")
    assert r["finetune_epochs"] == 0 and r["final_model"] == r["searched_model"]
    assert r["rows"]["final"]["test_top1"] == r["rows"]["searched"]["test_top1"]
    assert not (tmp_path / "g" / "finetuned").exists()


def test_failure_on_a_fresh_run_leaves_nothing(tiny_resnet_dir, idx_dir, session_cache_dir,
                                               tmp_path, pipeline_config):
    # a criterion that does not exist is caught up front
    cfg = pipeline_config(tiny_resnet_dir, idx_dir, session_cache_dir,
                        search={"criterion": "no-such-criterion"})
    with pytest.raises(PrunelabError, match="no-such-criterion"):
        run_pipeline(cfg, tmp_path / "x")
    # a data set that is not there fails in the search stage: the fresh folder goes again
    cfg = pipeline_config(tiny_resnet_dir, tmp_path / "no-data", session_cache_dir)
    with pytest.raises(PrunelabError):
        run_pipeline(cfg, tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_cli_run_prints_the_table_and_json(tiny_run, tmp_path):
    # a finished run answers at once (no work), through the same code path as a fresh one
    r = _cli(["run", str(tiny_run / "config.toml"), "--out", str(tiny_run)])
    assert r.returncode == 0, r.stderr
    for w in ("unpruned", "searched", "final", "test top-1", "speed-up"):
        assert w in r.stdout
    j = _cli(["run", str(tiny_run / "config.toml"), "--out", str(tiny_run), "--json"])
    assert j.returncode == 0, j.stderr
    o = json.loads(j.stdout)
    assert o["resumed"] and o["rows"]["final"]["macs"] > 0
