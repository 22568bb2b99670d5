"""The real-architecture zoo of the tests and of ``bench/architectures.py``: torchvision and timm
classification models, built from the libraries' own definitions (never copies), random weights,
10 classes, small inputs.

torchvision and timm are test dependencies only (the ``test-models`` extra; ``scripts/setup.sh``
installs it).  The local registry's torchvision wheel is a CUDA build: its compiled ops
(``torchvision::nms``, ...) do not load beside the CPU torch, and ``torchvision/
_meta_registrations.py`` then registers fake kernels for ``nms``/``qnms`` unconditionally, which
raises "operator torchvision::nms does not exist", so ``import torchvision`` (and ``import timm``,
which imports it) fails.  The model definitions need none of those ops (detection post-processing
only), so :func:`import_model_libs` imports both with a fake-kernel registration for a
``torchvision::`` op that was never defined made a no-op, for the duration of the import only;
every other registration goes through unchanged, and where the ops do load (a matching wheel)
nothing is skipped at all.

    >>> tv, timm = import_model_libs()          # doctest: +SKIP
    >>> build(MODELS["mobilenet_v3_small"])(torch.zeros(1, 3, 64, 64)).shape  # doctest: +SKIP
    torch.Size([1, 10])
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch
import torch.library


@contextlib.contextmanager
def _missing_torchvision_ops_skipped():
    """``torch.library.register_fake`` made a no-op for ``torchvision::`` ops that do not exist
    (the compiled extension did not load), restored on exit."""
    real = torch.library.register_fake

    def register_fake(op, *args, **kwargs):
        if isinstance(op, str) and op.startswith("torchvision::") and \
                not hasattr(torch.ops.torchvision, op.split("::", 1)[1].split(".")[0]):
            return args[0] if args else (lambda fn: fn)
        return real(op, *args, **kwargs)

    torch.library.register_fake = register_fake
    try:
        yield
    finally:
        torch.library.register_fake = real


@functools.cache
def import_model_libs():
    """``(torchvision, timm)``, importable beside a CPU torch (see the module docstring); raises
    ImportError when either is not installed (``pip install -e .[test-models]``)."""
    with _missing_torchvision_ops_skipped():
        import torchvision
        import timm
    return torchvision, timm


@dataclass(frozen=True)
class Arch:
    """One architecture of the suite: its family, where it comes from and how big an input."""

    name: str
    family: str
    lib: str                 # "torchvision" | "timm"
    fn: str                  # torchvision.models.<fn> / timm.create_model(<fn>)
    size: int = 64           # square input side (3 x size x size)
    ci: bool = False         # in the default (CI) run; the others are marked models
    kwargs: tuple = ()       # extra constructor keywords, as (key, value) pairs


def build(a: Arch, num_classes: int = 10, seed: int = 0) -> torch.nn.Module:
    """A fresh model of ``a`` with seeded random weights, in eval mode."""
    tv, timm = import_model_libs()
    torch.manual_seed(seed)
    kw = dict(a.kwargs)
    if a.lib == "torchvision":
        fn = getattr(tv.models, a.fn)
        if not isinstance(fn, type):  # a builder takes weights=; a class (DenseNet) does not
            kw["weights"] = None
        m = fn(num_classes=num_classes, **kw)
    else:
        m = timm.create_model(a.fn, pretrained=False, num_classes=num_classes, **kw)
    return m.eval()


_A = Arch
ARCHS: tuple[Arch, ...] = (
    _A("resnet18", "ResNet/ResNeXt", "torchvision", "resnet18", ci=True),
    _A("resnet18d", "ResNet/ResNeXt", "timm", "resnet18d"),
    _A("resnext50_32x4d", "ResNet/ResNeXt", "torchvision", "resnext50_32x4d"),
    _A("regnet_x_400mf", "RegNet", "torchvision", "regnet_x_400mf"),
    _A("regnetx_002", "RegNet", "timm", "regnetx_002", ci=True),
    _A("regnety_002", "RegNet", "timm", "regnety_002"),
    _A("densenet121", "DenseNet", "torchvision", "densenet121"),
    _A("densenet_tiny", "DenseNet", "torchvision", "DenseNet", ci=True,
       kwargs=(("growth_rate", 8), ("block_config", (2, 2, 2, 2)), ("num_init_features", 16))),
    _A("googlenet", "GoogLeNet/Inception", "torchvision", "googlenet", ci=True,
       kwargs=(("aux_logits", False), ("init_weights", True))),
    _A("inception_v3", "GoogLeNet/Inception", "torchvision", "inception_v3", size=80,
       kwargs=(("aux_logits", False), ("init_weights", True))),
    _A("mobilenet_v2", "MobileNetV2/V3", "torchvision", "mobilenet_v2"),
    _A("mobilenet_v3_small", "MobileNetV2/V3", "torchvision", "mobilenet_v3_small", ci=True),
    _A("mobilenet_v3_large", "MobileNetV2/V3", "torchvision", "mobilenet_v3_large"),
    _A("mobilenetv3_small_050", "MobileNetV2/V3", "timm", "mobilenetv3_small_050"),
    _A("efficientnet_b0", "EfficientNet", "torchvision", "efficientnet_b0"),
    _A("efficientnet_lite0", "EfficientNet", "timm", "efficientnet_lite0"),
    _A("tinynet_e", "EfficientNet", "timm", "tinynet_e", ci=True),
    _A("mnasnet0_5", "MNASNet", "torchvision", "mnasnet0_5", ci=True),
    _A("ghostnet_050", "GhostNet", "timm", "ghostnet_050", ci=True),
    _A("ghostnet_100", "GhostNet", "timm", "ghostnet_100"),
    _A("shufflenet_v2_x0_5", "ShuffleNetV2", "torchvision", "shufflenet_v2_x0_5", ci=True),
    _A("shufflenet_v2_x1_0", "ShuffleNetV2", "torchvision", "shufflenet_v2_x1_0"),
    _A("convnext_atto", "ConvNeXt", "timm", "convnext_atto", ci=True),
    _A("convnext_tiny", "ConvNeXt", "torchvision", "convnext_tiny"),
    _A("repvgg_a0", "RepVGG", "timm", "repvgg_a0", ci=True),
    _A("dla34", "DLA", "timm", "dla34"),
    _A("dla46_c", "DLA", "timm", "dla46_c", ci=True),
    _A("cspresnet50", "CSPNet", "timm", "cspresnet50", size=32, ci=True),
    _A("cspdarknet53", "CSPNet", "timm", "cspdarknet53", size=32),
    _A("cs3darknet_s", "CSPNet", "timm", "cs3darknet_s"),
    _A("mixnet_s", "MixNet", "timm", "mixnet_s", ci=True),
    _A("mixnet_m", "MixNet", "timm", "mixnet_m"),
    _A("vgg11_bn", "VGG", "torchvision", "vgg11_bn", size=32, ci=True),
    _A("squeezenet1_1", "SqueezeNet", "torchvision", "squeezenet1_1", ci=True),
    _A("rexnet_100", "ReXNet", "timm", "rexnet_100", ci=True),
    _A("ese_vovnet19b_slim_dw", "VoVNet", "timm", "ese_vovnet19b_slim_dw", ci=True),
)
MODELS = {a.name: a for a in ARCHS}

# Where Torch-Pruning itself cannot build the channel dependencies (its graph fails on the
# model), prunelab refuses in one line naming the op and the layer; the suite checks both.
TP_CANNOT: dict[str, str] = {}  # none left: ShuffleNetV2 and CSPNet-v3 prune now


# Known misses, step by step (every other step passes; the test asserts exactly these):
KNOWN: dict[str, dict[str, str]] = {}  # none left: ReXNet prunes now


def torch_pruning_fails(a: Arch) -> bool:
    """Whether Torch-Pruning's own DependencyGraph fails on ``a`` (a refusal is then a pass)."""
    import torch_pruning as tp

    try:
        tp.DependencyGraph().build_dependency(build(a), example_inputs=torch.zeros(
            1, 3, a.size, a.size))
    except Exception:  # noqa: BLE001 - any failure of its tracing
        return True
    return False


# ----------------------------------------------------------------------------- the steps

STEPS = ("l1", "xai", "onnx", "save_load", "macs", "speedup", "unchanged")
ORT_BUDGET = 1.5  # the onnxruntime-cpu landing (bench/architectures.py --ort), one model a family

MACS_BUDGET, SPEEDUP_BUDGET = 0.6, 1.5


def _loaders(size: int, n: int = 16, batch: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 3, size, size, generator=g), torch.randint(0, 10, (n,), generator=g)
    batches = [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]
    return batches, batches


def _search(model, size: int, criterion: str, budget: str, cache: str):
    import prunelab as pl

    train, val = _loaders(size)
    return pl.search(model, torch.zeros(1, 3, size, size), train=train, val=val,
                     target="scripted", budget=budget, method="uniform", criterion=criterion,
                     recal_batches=1, val_images=0, measure_front=2, decision_processes=0,
                     cache_dir=cache, options={"front": 0})


def run_steps(a: Arch, folder, steps=STEPS, cache_dir: str | None = None) -> dict[str, dict]:
    """Every step of the suite on ``a``: ``{step: {"ok": bool, "note": str, ...}}``.  A step
    that raises a :class:`~prunelab.errors.PrunelabError` is a refusal (``ok`` False, its one
    line in ``refused``); anything else raised is a failure (``error``).

    * ``l1``: ``pl.search`` with criterion l1 on ``macs=0.6`` (scripted target, uniform),
      landed within 3% below the budget (``macs`` records that landing);
    * ``xai``: the same with deeplift on ``speedup=1.5`` (``speedup`` records that landing);
    * ``onnx``: the l1 result exported, run by ONNX Runtime, equal to the module;
    * ``save_load``: ``pl.save`` / ``pl.load(like=model)`` gives the same outputs;
    * ``unchanged``: the user's module has the same state and outputs afterwards;
    * ``ort`` (only when asked for): l1 on ``speedup=1.5`` on onnxruntime-cpu (batch 1, 1
      thread), landed by the landing stage, then re-measured by ``prunelab latency compare``
      in 6 new processes.

    ``cache_dir``: the latency cache (default: inside ``folder``)."""
    import copy
    from pathlib import Path

    import numpy as np

    import prunelab as pl
    from prunelab.errors import PrunelabError
    from prunelab.metrics import macs_params

    folder = Path(folder)
    cache = cache_dir or str(folder / "cache")
    model = build(a)
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(2, 3, a.size, a.size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y0 = model(x)
    out: dict[str, dict] = {}
    results = {}

    def attempt(step, fn):
        if step not in steps:
            return None
        import time

        t0 = time.perf_counter()
        try:
            r = fn()
            out[step] = {"ok": True, "note": "", **(r if isinstance(r, dict) else {})}
        except PrunelabError as e:
            out[step] = {"ok": False, "refused": str(e).splitlines()[0] if str(e) else "",
                         "lines": len(str(e).splitlines())}
        except Exception as e:  # noqa: BLE001 - recorded, the test asserts on it
            import traceback

            out[step] = {"ok": False, "error": f"{type(e).__name__}: {str(e)[:300]}",
                         "trace": traceback.format_exc()[-3000:]}
        out[step]["seconds"] = round(time.perf_counter() - t0, 2)
        return out[step]

    base_macs = macs_params(model, (3, a.size, a.size))[0]

    def l1():
        r = results["l1"] = _search(model, a.size, "l1", f"macs={MACS_BUDGET}", cache)
        kept = macs_params(r.model, (3, a.size, a.size))[0] / base_macs
        land = r.chosen.get("landing") or {}
        return {"kept_macs": round(kept, 4), "landing": land.get("status")}

    def xai():
        r = results["xai"] = _search(model, a.size, "deeplift", f"speedup={SPEEDUP_BUDGET}",
                                     cache)
        land = r.chosen.get("landing") or {}
        return {"speedup": round(r.speedup, 4), "landing": land.get("status"),
                "budget_met": bool(r.chosen.get("budget_met"))}

    attempt("l1", l1)
    attempt("xai", xai)
    if "macs" in steps:
        s = out.get("l1", {})
        ok = s.get("ok") and (1 - 0.03) * MACS_BUDGET <= s["kept_macs"] <= MACS_BUDGET
        out["macs"] = {"ok": bool(ok), "note": f"kept {s.get('kept_macs')}" if s.get("ok")
                       else "no l1 result"}
    if "speedup" in steps:
        s = out.get("xai", {})
        ok = s.get("ok") and s.get("landing") in ("landed", "staircase") and s["budget_met"]
        out["speedup"] = {"ok": bool(ok), "note": f"{s.get('landing')} at {s.get('speedup')}x"
                          if s.get("ok") else "no deeplift result"}
    pruned = (results.get("l1") or results.get("xai"))
    pruned = pruned.model if pruned is not None else None

    def onnx():
        import onnxruntime as ort

        info = pl.export_onnx(pruned, folder / "m.onnx", x[:1], overwrite=True)
        sess = ort.InferenceSession(info["onnx"], providers=["CPUExecutionProvider"])
        got = sess.run(["logits"], {"input": x[:1].numpy()})[0]
        with torch.no_grad():
            ref = pruned(x[:1]).numpy()
        # float32 through a deep random-weight net: differences scale with the logits
        np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-4 * max(1.0, abs(ref).max()))
        return {}

    def save_load():
        p = pl.save(pruned, folder / "saved", x[:1], overwrite=True)
        again = pl.load(p, like=model)
        with torch.no_grad():
            torch.testing.assert_close(again(x), pruned(x))
        return {}

    if pruned is not None:
        attempt("onnx", onnx)
        attempt("save_load", save_load)
    else:
        for s in ("onnx", "save_load"):
            if s in steps:
                out[s] = {"ok": False, "note": "no pruned model"}

    def unchanged():
        after = model.state_dict()
        assert after.keys() == before.keys() and all(
            torch.equal(before[k], after[k]) for k in before), "state changed"
        with torch.no_grad():
            torch.testing.assert_close(model(x), y0)
        assert not model.training
        return {}

    attempt("unchanged", unchanged)

    def ort():
        # a measured landing on a real runtime: onnxruntime-cpu, batch 1, 1 thread, the landing
        # stage deciding in fresh processes; then an independent `prunelab latency compare` of
        # the two ONNX files in 6 new processes (the one timing path)
        import json
        import subprocess
        import sys

        train, val = _loaders(a.size)
        r = pl.search(model, x[:1], train=train, val=val, target="onnxruntime-cpu",
                      budget=f"speedup={ORT_BUDGET}", method="uniform", criterion="l1",
                      recal_batches=1, val_images=0, measure_front=2, threads=1, batch_size=1,
                      cache_dir=cache, options={"front": 0})
        land = r.chosen.get("landing") or {}
        files = []
        for tag, net in (("base", model), ("pruned", r.model)):
            files.append(pl.export_onnx(net, folder / f"ort-{tag}.onnx", x[:1],
                                        overwrite=True)["onnx"])
        p = subprocess.run([sys.executable, "-m", "prunelab", "latency", "compare", *files,
                            "--target", "onnxruntime-cpu", "--threads", "1", "--processes", "6",
                            "--json"], capture_output=True, text=True, check=False)
        if p.returncode:
            raise RuntimeError(f"latency compare failed: {p.stderr.strip()[-300:]}")
        vs = json.loads(p.stdout)["models"][1]["vs_first"]
        lo, hi = r.chosen["speedup_interval"]
        return {"landing": land.get("status"), "budget_met": bool(r.chosen.get("budget_met")),
                "speedup": round(r.speedup, 4), "interval": [round(lo, 4), round(hi, 4)],
                "neighbours": land.get("neighbours"),
                "remeasure": round(vs["estimate"], 4),
                "remeasure_interval": [round(vs["low"], 4), round(vs["high"], 4)],
                "note": f"{land.get('status')} at {r.speedup:.3f}x, re-measured "
                        f"{vs['estimate']:.3f}x"}

    attempt("ort", ort)
    return out
