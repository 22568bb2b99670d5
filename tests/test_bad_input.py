"""Bad input, the whole family of each case in issue 12: through the CLI every case exits with
code 2, prints one line and no traceback, and leaves every file of the workspace as it was (no
half-written output, no leftover run folder); through the library every case raises
PrunelabError before any work."""

import gzip
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from prunelab.errors import PrunelabError

from .conftest import make_idx_dataset, write_idx
from .test_cli import assert_user_error, run

OUT = "OUT"  # the output path of a case (must not exist afterwards)


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*")) if "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A workspace: a tiny model folder and its data, broken copies of both, user code, configs."""
    from prunelab.io import ModelSpec, save_model
    from prunelab.models import build

    root = tmp_path_factory.mktemp("ws")
    idx = make_idx_dataset(root / "idx")
    torch.manual_seed(0)
    m = build("resnet20", in_channels=1, num_classes=4, width=0.25).eval()
    from prunelab.data import load_dataset

    d = load_dataset("mnist-idx", str(idx))
    save_model(m, ModelSpec.for_zoo("resnet20", 1, 4, 0.25, 32, d.mean, d.std, "mnist-idx"),
               root / "model")
    good = json.loads((root / "model" / "model.json").read_text())

    def broken(name, change=None, text=None, raw=None):
        dst = root / name
        shutil.copytree(root / "model", dst)
        if raw is not None:
            (dst / "model.json").write_bytes(raw)
        elif text is not None:
            (dst / "model.json").write_text(text)
        else:
            mj = json.loads(json.dumps(good))
            change(mj)
            (dst / "model.json").write_text(json.dumps(mj))

    broken("m-array", text="[1, 2, 3]")
    broken("m-binary", raw=bytes(range(256)) * 4)
    broken("m-no-shape", lambda j: j.pop("input_shape"))
    broken("m-classes-str", lambda j: j.update(num_classes="ten"))
    broken("m-huge-width", lambda j: j["layers"]["conv1"].update(out=10 ** 9))
    broken("m-huge-input", lambda j: j.update(input_shape=[1, 100000, 100000]))
    broken("m-unknown-arch", lambda j: j["arch"].update(name="resnet9000"))
    broken("m-kind-mismatch", lambda j: j["layers"].update(conv1={"features": 4}))
    broken("m-width-vs-weights", lambda j: j["layers"]["conv1"].update(out=3))
    broken("m-std-zero", lambda j: j.update(std=[0.0]))
    broken("m-arch-code", lambda j: j.update(arch={"kind": "factory", "factory":
                                                   "/usr/lib/python3/os.py:system"}))
    shutil.copytree(root / "model", root / "m-bad-weights")
    (root / "m-bad-weights" / "model.safetensors").write_bytes(b"\x00" * 64)

    def idx_variant(name, fn):
        dst = root / name
        shutil.copytree(idx, dst)
        fn(dst)

    idx_variant("idx-short", lambda p: gzip.open(p / "train-images-idx3-ubyte.gz", "wb")
                .write(bytes([0, 0, 8, 3, 0, 0])))
    idx_variant("idx-badgz", lambda p: (p / "train-images-idx3-ubyte.gz").write_bytes(
        b"\x1f\x8b\x08\x00garbage-not-deflate"))
    idx_variant("idx-ndim", lambda p: write_idx(p / "train-labels-idx1-ubyte",
                                                np.zeros((240, 2, 2), np.uint8)))
    for side in (40, 7):
        def sized(p, side=side):
            rng = np.random.default_rng(0)
            write_idx(p / "train-images-idx3-ubyte", rng.integers(0, 255, (240, side, side)))
            write_idx(p / "t10k-images-idx3-ubyte", rng.integers(0, 255, (60, side, side)))
        idx_variant(f"idx-{side}px", sized)

    (root / "spatial.py").write_text(
        "import torch.nn as nn\n"
        "def make(num_classes=4, **kw):\n"
        "    return nn.Sequential(nn.Conv2d(1, num_classes, 3, padding=1), nn.AdaptiveAvgPool2d(1))\n")
    (root / "seven.py").write_text(
        "import torch.nn as nn\n"
        "def make(**kw):\n"
        "    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),\n"
        "                         nn.Linear(8, 3))\n")
    (root / "raises.py").write_text("raise ImportError('needs a GPU package')\n")
    (root / "nofn.py").write_text("x = 1\n")
    (root / "a-file").write_text("not a folder")
    (root / "user-dir").mkdir()
    (root / "user-dir" / "notes.txt").write_text("mine")

    base = ('[model]\nref = "{root}/model"\ndataset = "mnist-idx"\ndata_dir = "{idx}"\n'
            '[search]\nmethod = "uniform"\n[target]\nname = "scripted"\n')
    configs = {
        "bad-toml": "[model\nref = 1",
        "unknown-section": base + "[tuning]\nx = 1\n",
        "lr-inf": base + "[finetune]\nlr = inf\n",
        "kd-inf": base + "[finetune]\nkd_temperature = inf\n",
        "pop-float": base.replace('"uniform"', '"nsga2"') + "[search.options]\npop = 2.5\n",
        "budget-inf": base.replace('method = "uniform"', 'method = "uniform"\nbudget = '
                                   '"speedup=1e999"'),
        "threads-neg": base + "threads = -1\n",
        "repeats-zero": base + "[verify]\nrepeats = 0\n",
        "ref-missing": base.replace('{root}/model', '{root}/nope'),
        "weights-folder": base.replace('data_dir = "{idx}"', 'data_dir = "{idx}"\nweights = '
                                       '"{root}/model/model.safetensors"'),
        "option-unknown": base + "[search.options]\nbogus = 1\n",
        "ft-threads": base + "[finetune]\nthreads = 0\n",
    }
    for name, text in configs.items():
        (root / f"{name}.toml").write_text(text.format(root=root, idx=idx))
    return root


M, I = "{ws}/model", "{ws}/idx"
SEARCH = ["search", M, "--method", "uniform", "--out", "{ws}/OUT", "--dataset", "mnist-idx",
          "--data-dir", I, "--target", "scripted"]
CLI_CASES = {
    # numbers, each refused before any work
    "eval-threads": (["eval", M, "--data-dir", I, "--threads", "-1"], "--threads"),
    "eval-batch-0": (["eval", M, "--data-dir", I, "--batch-size", "0"], "--batch-size"),
    "eval-batch-neg": (["eval", M, "--data-dir", I, "--batch-size", "-1"], "--batch-size"),
    "eval-repeats-0": (["eval", M, "--data-dir", I, "--repeats", "0"], "--repeats"),
    "prune-round-to": (["prune", M, "--ratio", "0.5", "--round-to", "-4", "--data-dir", I],
                       "--round-to"),
    "prune-ratio-big": (["prune", M, "--ratio", "1.5", "--data-dir", I], "ratio"),
    "prune-ratio-0": (["prune", M, "--ratio", "0", "--data-dir", I], "ratio"),
    "prune-recal": (["prune", M, "--ratio", "0.5", "--recal-batches", "-1", "--data-dir", I],
                    "--recal-batches"),
    "prune-threads": (["prune", M, "--ratio", "0.5", "--threads", "0", "--data-dir", I],
                      "--threads"),
    "ft-lr-inf": (["finetune", M, "--epochs", "1", "--out", "{ws}/OUT", "--lr", "inf"], "--lr"),
    "ft-lr-neg": (["finetune", M, "--epochs", "1", "--out", "{ws}/OUT", "--lr", "-1"], "--lr"),
    "ft-kd-inf": (["finetune", M, "--epochs", "1", "--out", "{ws}/OUT", "--kd-temperature",
                   "inf"], "--kd-temperature"),
    "ft-kd-weight": (["finetune", M, "--epochs", "1", "--out", "{ws}/OUT", "--kd-weight", "2"],
                     "--kd-weight"),
    "ft-epochs-0": (["finetune", M, "--epochs", "0", "--out", "{ws}/OUT"], "--epochs"),
    "ft-batch-0": (["finetune", M, "--epochs", "1", "--out", "{ws}/OUT", "--batch-size", "0"],
                   "--batch-size"),
    "ft-threads": (["finetune", M, "--epochs", "1", "--out", "{ws}/OUT", "--threads", "-2"],
                   "--threads"),
    "budget-1e999": ([*SEARCH, "--budget", "speedup=1e999"], "finite"),
    "budget-macs": ([*SEARCH, "--budget", "macs=1.5"], "fraction kept"),
    "budget-latency": ([*SEARCH, "--budget", "latency=-3ms"], "budget"),
    "budget-text": ([*SEARCH, "--budget", "fast please"], "budget"),
    "pop-float": ([*SEARCH[:3], "nsga2", *SEARCH[4:], "--budget", "macs=0.5", "--option",
                   "pop=2.5"], "pop=2.5"),
    "pop-small": ([*SEARCH[:3], "nsga2", *SEARCH[4:], "--budget", "macs=0.5", "--option",
                   "pop=2"], ">= 4"),
    "option-unknown": ([*SEARCH, "--budget", "macs=0.5", "--option", "bogus=1"], "bogus"),
    "option-range": ([*SEARCH[:3], "global", *SEARCH[4:], "--budget", "macs=0.5", "--option",
                      "max_ratio=1.5"], "max_ratio"),
    "option-choice": ([*SEARCH[:3], "torch-pruning", *SEARCH[4:], "--budget", "macs=0.5",
                       "--option", "importance=l7"], "importance"),
    "search-batch": ([*SEARCH, "--budget", "macs=0.5", "--batch-size", "0"], "--batch-size"),
    "search-threads": ([*SEARCH, "--budget", "macs=0.5", "--threads", "-1"], "threads"),
    "search-target": ([*SEARCH[:10], "--target", "tpu", "--budget", "macs=0.5"], "tpu"),
    "search-method": ([*SEARCH[:3], "nsga3", *SEARCH[4:], "--budget", "macs=0.5"], "nsga3"),
    "search-criterion": ([*SEARCH, "--budget", "macs=0.5", "--criterion", "l7"], "l7"),
    "export-batch": (["export", M, "--onnx", "{ws}/OUT", "--batch-size", "0"], "--batch-size"),
    # model folders
    "json-array": (["eval", "{ws}/m-array", "--data-dir", I], "not a prunelab model.json"),
    "json-binary": (["eval", "{ws}/m-binary", "--data-dir", I], "model.json"),
    "json-no-shape": (["eval", "{ws}/m-no-shape", "--data-dir", I], "'input_shape' is missing"),
    "json-classes": (["eval", "{ws}/m-classes-str", "--data-dir", I], "'num_classes'"),
    "json-huge-width": (["eval", "{ws}/m-huge-width", "--data-dir", I], "layers.conv1"),
    "json-huge-input": (["eval", "{ws}/m-huge-input", "--data-dir", I], "'input_shape'"),
    "json-unknown-arch": (["eval", "{ws}/m-unknown-arch", "--data-dir", I], "resnet9000"),
    "json-kind": (["eval", "{ws}/m-kind-mismatch", "--data-dir", I], "conv1"),
    "json-vs-weights": (["eval", "{ws}/m-width-vs-weights", "--data-dir", I], "inconsistent"),
    "json-std-zero": (["eval", "{ws}/m-std-zero", "--data-dir", I], "'std'"),
    "json-code": (["prune", "{ws}/m-arch-code", "--ratio", "0.5", "--out", "{ws}/OUT",
                   "--data-dir", I], "never runs code"),
    "weights-corrupt": (["eval", "{ws}/m-bad-weights", "--data-dir", I], "safetensors"),
    # data
    "idx-short": (["eval", M, "--data-dir", "{ws}/idx-short"], "short or empty header"),
    "idx-badgz": (["eval", M, "--data-dir", "{ws}/idx-badgz"], "cannot read IDX file"),
    "idx-ndim": (["eval", M, "--data-dir", "{ws}/idx-ndim"], "dimensions"),
    "idx-40px": (["eval", M, "--data-dir", "{ws}/idx-40px"], "1x40x40"),
    "idx-7px": (["eval", M, "--data-dir", "{ws}/idx-7px"], "1x7x7"),
    # the user's code
    "out-spatial": (["eval", "{ws}/spatial.py:make", "--dataset", "mnist-idx", "--data-dir", I],
                    "(2, 4, 1, 1)"),
    "out-seven": (["eval", "{ws}/seven.py:make", "--dataset", "mnist-idx", "--data-dir", I],
                  "(2, 3)"),
    "factory-raises": (["eval", "{ws}/raises.py:make", "--dataset", "mnist-idx", "--data-dir",
                        I], "ImportError"),
    "factory-missing": (["eval", "{ws}/nofn.py:make", "--dataset", "mnist-idx", "--data-dir",
                         I], "no callable 'make'"),
    # output paths
    "export-dir": (["export", M, "--onnx", "{ws}/user-dir"], "is a folder"),
    "export-under-file": (["export", M, "--onnx", "{ws}/a-file/m.onnx"], "is a file"),
    "prune-out-user-dir": (["prune", M, "--ratio", "0.5", "--out", "{ws}/user-dir",
                            "--data-dir", I], "did not write"),
    "prune-out-file": (["prune", M, "--ratio", "0.5", "--out", "{ws}/a-file", "--data-dir", I],
                       "did not write"),
    # run configs: validated whole before any work, no run folder left
    **{f"config-{n}": (["run", f"{{ws}}/{n}.toml", "--out", "{ws}/OUT"], frag) for n, frag in {
        "bad-toml": "TOML", "unknown-section": "tuning", "lr-inf": "lr",
        "kd-inf": "kd_temperature", "pop-float": "pop=2.5", "budget-inf": "finite",
        "threads-neg": "threads", "repeats-zero": "repeats", "ref-missing": "nope",
        "weights-folder": "weights", "option-unknown": "bogus", "ft-threads": "threads"}.items()},
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_cli_bad_input(case, ws):
    argv, fragment = CLI_CASES[case]
    before = _snapshot(ws)
    code, _, err = run(*[a.format(ws=ws) for a in argv])
    assert_user_error(code, err, fragment)
    assert _snapshot(ws) == before, "the workspace changed"
    assert not (ws / OUT).exists() and not (ws / f"{OUT}.lock").exists()


def _lib_cases(ws):
    import prunelab as pl
    from prunelab import commands
    from prunelab.io import load_model
    from prunelab.searches import Budget, SearchConfig
    from prunelab.train import TrainConfig

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 2))
    loader = [(torch.randn(4, 1, 8, 8), torch.randint(0, 2, (4,)))]
    return {
        "search-inputs": lambda: pl.search(net, "images", train=loader, val=loader),
        "search-eval-fn": lambda: pl.search(net, (1, 8, 8), train=loader, eval_fn=3),
        "search-no-score": lambda: pl.search(net, (1, 8, 8), train=loader),
        "search-not-module": lambda: pl.search("resnet20", (1, 8, 8), train=loader, val=loader),
        "finetune-lr": lambda: pl.finetune(net, train=loader, val=loader, lr=math.inf),
        "finetune-no-train": lambda: pl.finetune(net, train=None, val=loader),
        "finetune-kd": lambda: pl.finetune(net, train=loader, val=loader, kd_weight=-1),
        "save-user-dir": lambda: pl.save(net, ws / "user-dir", (1, 8, 8)),
        "export-dir": lambda: pl.export_onnx(net, ws / "user-dir", (1, 8, 8)),
        "load-array": lambda: load_model(ws / "m-array"),
        "load-code": lambda: load_model(ws / "m-arch-code"),
        "config-pop": lambda: SearchConfig(method="nsga2", options={"pop": 2.5}),
        "config-unknown": lambda: SearchConfig(method="uniform", options={"bogus": 1}),
        "train-lr": lambda: TrainConfig(lr=math.inf),
        "train-threads": lambda: TrainConfig(threads=-1),
        "budget-inf": lambda: Budget.parse("speedup=inf"),
        "budget-nan": lambda: Budget.parse("macs=nan"),
        "prune-round-to": lambda: commands.prune(str(ws / "model"), "l1", ratio=0.5, round_to=-4,
                                            data_dir=str(ws / "idx")),
        "measure-threads": lambda: commands.check_timing(1, -1, 50),
        "data-size": lambda: commands.data_for(load_model(ws / "model")[1], "mnist-idx",
                                          str(ws / "idx-40px")),
    }


LIB_CASES = ["search-inputs", "search-eval-fn", "search-no-score", "search-not-module",
             "finetune-lr", "finetune-no-train", "finetune-kd", "save-user-dir", "export-dir",
             "load-array", "load-code", "config-pop", "config-unknown", "train-lr",
             "train-threads", "budget-inf", "budget-nan", "prune-round-to", "measure-threads",
             "data-size"]


@pytest.mark.parametrize("case", LIB_CASES)
def test_library_bad_input(case, ws):
    before = _snapshot(ws)
    with pytest.raises(PrunelabError) as e:
        _lib_cases(ws)[case]()
    assert "\n" not in str(e.value) and str(e.value)
    assert _snapshot(ws) == before


def test_at_least_sixty_cases():
    assert len(CLI_CASES) + len(LIB_CASES) >= 60
    assert len(set(CLI_CASES)) == len(CLI_CASES)

