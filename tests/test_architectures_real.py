"""Real architectures (torchvision and timm, random weights, 10 classes, small inputs) through
the library core: a search with l1 on ``macs=0.6`` and with deeplift on ``speedup=1.5`` (the
scripted target), each landed as the landing stage defines it, the ONNX file equal to the
module, save/load equal, the user's module unchanged (:func:`tests.real_models.run_steps`).

The default run (CI) takes one model per family (``Arch.ci``); the rest are marked ``models``
(``pytest -m models``: about an hour on 2 cores, a benchmark-style job, in neither CI run), and
``bench/architectures.py`` runs all of them into the coverage table of docs/architectures.md.
A model Torch-Pruning itself cannot trace is refused in one line naming the op and the layer.
torchvision/timm come from the ``test-models`` extra; without them the suite is skipped."""

from __future__ import annotations

import pytest

from tests.real_models import ARCHS, KNOWN, STEPS, TP_CANNOT, import_model_libs, run_steps

try:
    import_model_libs()
except ImportError as e:  # pragma: no cover - the extra is not installed
    pytest.skip(f"torchvision/timm not installed (pip install -e .[test-models]): {e}",
                allow_module_level=True)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _param(a):
    marks = [] if a.ci else [pytest.mark.models]
    if "l1" in KNOWN.get(a.name, {}):  # the search itself does not end in a test's time
        marks.append(pytest.mark.skip(reason=KNOWN[a.name]["l1"]))
    return pytest.param(a, id=a.name, marks=marks)


@pytest.mark.parametrize("arch", [_param(a) for a in ARCHS])
def test_real_architecture(arch, tmp_path):
    out = run_steps(arch, tmp_path)
    assert out["unchanged"]["ok"], out["unchanged"]
    if arch.name in TP_CANNOT:
        from tests.real_models import torch_pruning_fails

        assert torch_pruning_fails(arch)          # a refusal passes only where TP fails too
        line = out["l1"].get("refused", "")
        assert out["l1"]["lines"] == 1 and TP_CANNOT[arch.name] in line, out["l1"]
        assert "Torch-Pruning itself fails" in line and "forward()" not in line
        return
    bad = {s: {k: v for k, v in out[s].items() if k != "trace"} for s in STEPS
           if not out[s]["ok"]}
    known = KNOWN.get(arch.name, {})
    if bad and set(bad) <= set(known):  # exactly the known misses (tests/real_models.KNOWN)
        if "macs" in bad or "speedup" in bad:
            assert all(out[s]["landing"] == "unreachable" for s in ("l1", "xai")), out
        pytest.xfail("; ".join(f"{s}: {known[s]}" for s in bad))
    assert not bad, (bad, [out[s].get("trace", "") for s in bad][:1])


def test_every_family_runs_in_ci():
    """Every family the issue names has a model in the default run (ReXNet, whose grouping
    Torch-Pruning does not finish, runs in the benchmark only)."""
    fams = {a.family for a in ARCHS}
    assert fams - {a.family for a in ARCHS if a.ci} <= {"ReXNet"}
    assert len(ARCHS) >= 30 and len(fams) >= 16
