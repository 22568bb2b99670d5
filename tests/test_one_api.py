"""Issue 27, point 1: one API layer, one definition per setting, criteria said once, plugins
from entry points, criteria as objects, the one-shot prune and evaluate at top level."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import prunelab as pl
from prunelab import config
from prunelab.errors import PrunelabError

ROOT = Path(__file__).resolve().parent.parent


def _defaults(fn) -> dict:
    return {k: p.default for k, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty}


def test_search_defaults_are_defined_once():
    from prunelab.searches import SearchConfig

    cfg = SearchConfig(method="uniform")
    core = _defaults(pl.search)
    for key in ("budget", "recal_batches", "val_images", "measure_front"):
        assert getattr(cfg, key) == config.default("search", key) == core[key], key
    for key in ("batch_size", "threads"):
        assert core[key] == config.default("target", key), key
    assert core["target"] == config.default("target", "name")
    with pytest.raises(TypeError):  # keyword only: no 9 positional arguments
        SearchConfig("uniform", None)


def test_finetune_and_train_defaults_are_defined_once():
    from prunelab import commands
    from prunelab.train import TrainConfig

    core, cmd = _defaults(pl.finetune), _defaults(commands.finetune)
    for key in ("epochs", "lr", "kd_weight", "kd_temperature", "weight_decay", "recal_batches",
                "recal_end", "precision"):
        assert core[key] == config.default("finetune", key), key
    for key in ("lr", "batch_size", "kd_weight", "kd_temperature", "weight_decay",
                "recal_batches", "recal_end", "precision"):
        assert cmd[key] == config.default("finetune", key), key
    t = TrainConfig()
    for key in ("epochs", "lr", "weight_decay", "batch_size", "seed", "precision", "threads"):
        assert getattr(t, key) == config.default("train", key), key


def test_cli_flags_come_from_the_sections():
    from prunelab.cli import build_parser

    p = build_parser()
    sub = next(a for a in p._actions if a.__class__.__name__ == "_SubParsersAction")
    train = {a.dest: a.default for a in sub.choices["train"]._actions}
    for key in config.keys("train"):
        assert train[key] == config.default("train", key), key
    run_help = sub.choices["run"].format_help()
    for name, cls in config.SECTIONS.items():
        for key in cls.model_fields:
            assert key in run_help.replace("\n", " "), f"[{name}] {key} missing from run --help"


@pytest.mark.parametrize("call", ["core", "commands"])
def test_kd_numbers_are_checked_by_the_one_definition(call):
    from prunelab import commands

    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.LazyLinear(3))
    net(torch.zeros(1, 1, 8, 8))
    with pytest.raises(PrunelabError, match=r"kd_weight=1\.5.*less than or equal to 1"):
        if call == "core":
            pl.finetune(net, train=[(torch.zeros(2, 1, 8, 8), torch.zeros(2).long())],
                        val=[], kd_weight=1.5)
        else:
            commands.finetune("resnet20.fmnist", 1, "never-written", kd_weight=1.5)
    assert not Path("never-written").exists()


def test_a_criterion_says_its_name_and_data_need_once():
    from prunelab.criteria import CRITERIA, needs_data

    for e in CRITERIA.entries():
        assert e.fn.name == e.name                       # the registry's name is the class's
        assert "needs_data" not in e.meta                 # no second copy to disagree
    assert needs_data("tp:importance=taylor") and not needs_data("tp")
    assert needs_data("deeplift") and not needs_data("l1")


def test_tp_taylor_is_given_data_through_the_command(tmp_path):
    """The up-front data check asks the criterion as built: ``tp`` with importance=taylor gets
    its data and prunes (it used to pass the check without data, then fail)."""
    from prunelab import commands

    r = commands.prune("resnet20.fmnist", "tp", ratio=0.3, evaluate=False, repeats=1,
                       recal_batches=0, criterion_options={"importance": "taylor",
                                                           "num_images": 64})
    assert r["macs"] < r["base"]["macs"]


def test_out_of_tree_plugin_registers_through_an_entry_point(tmp_path):
    site = tmp_path / "site"
    pkg = site / "my_plugin"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent('''
        from prunelab.criteria import Criterion, criterion

        @criterion(description="a third-party criterion")
        class Mine(Criterion):
            name = "mine"

            def layer_scores(self, name, module, group):
                return module.weight.detach().flatten(1).abs().sum(1)
    '''))
    dist = site / "my_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[prunelab.criteria]\nmine = my_plugin\n")
    code = ("from prunelab.criteria import CRITERIA, make_criterion; "
            "print(CRITERIA.get('mine').description, make_criterion('mine').name)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["a", "third-party", "criterion", "mine"]
    # a broken plugin is one line naming it, not a traceback
    (pkg / "__init__.py").write_text("raise ImportError('missing dependency xyz')\n")
    r = subprocess.run([sys.executable, "-m", "prunelab.cli", "criteria", "list"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "plugin 'mine'" in r.stderr and "missing dependency xyz" in r.stderr


def _tiny():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    return net.eval()


def _loader(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 12, 12, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return [(x[i:i + 8], y[i:i + 8]) for i in range(0, n, 8)]


def test_one_shot_prune_and_evaluate_at_top_level():
    net = _tiny()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    r = pl.prune(net, torch.zeros(1, 1, 12, 12), criterion="l1", ratio=0.5)  # no data at all
    assert r.macs_after < r.macs_before and r.model is not net
    assert r.model[0].out_channels == 4 and net[0].out_channels == 8        # user's untouched
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    acc = pl.evaluate(r.model, _loader())
    assert 0.0 <= acc <= 1.0
    with pytest.raises(PrunelabError, match="pass train="):
        pl.prune(net, (1, 12, 12), criterion="deeplift", ratio=0.5)
    r2 = pl.prune(net, (1, 12, 12), criterion="deeplift", ratio=0.5, train=_loader(),
                  recal_batches=2)
    assert r2.model[0].out_channels == 4


def test_search_takes_a_criterion_object(tmp_path):
    from prunelab.criteria import Criterion

    class Last(Criterion):
        """Keeps the highest-numbered channels (a plain, checkable rule)."""
        name = "last"

        def layer_scores(self, name, module, group):
            return torch.arange(group.width, dtype=torch.float32)

    net = _tiny()
    res = pl.search(net, (1, 12, 12), train=_loader(), val=_loader(seed=1), target="scripted",
                    budget="macs=0.6", method="uniform", criterion=Last(), recal_batches=1,
                    val_images=0, measure_front=2, out=tmp_path / "s",
                    cache_dir=str(tmp_path / "cache"))
    assert res.criterion.startswith("last") and "Last" in res.criterion
    kept = res.keep[next(iter(res.keep))]
    w = res.model[0].weight.detach()
    # the kept filters are the last ones of the first conv: their weights equal the originals
    assert torch.equal(w, net[0].weight.detach()[-kept:])
    with pytest.raises(PrunelabError, match="registered name"):
        pl.search(net, (1, 12, 12), train=_loader(), val=_loader(), target="scripted",
                  method="uniform", criterion=42)
