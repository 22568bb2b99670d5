"""``--help`` is plain text: the docstrings it is made from are reST (``out``, :func:`x`), the
terminal shows none of that markup.  Every subcommand is found by walking the parser, so a new
command is checked without editing a list."""

import argparse
import os
import subprocess
import sys

import pytest

from prunelab.cli import build_parser, main

from .conftest import hang_guard

MARKUP = ("``", ":func:", ":class:", ":mod:", ":meth:", ":data:", ":attr:")


def command_paths(parser: argparse.ArgumentParser, prefix=()) -> list[tuple[str, ...]]:
    paths = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths += command_paths(sub, (*prefix, name))
    return paths


PATHS = command_paths(build_parser())


def assert_plain(text: str, where: str) -> None:
    found = [m for m in MARKUP if m in text]
    assert not found, f"{where} --help shows reST markup {found}:\n{text}"


def test_every_subcommand_is_found():
    names = {p[0] for p in PATHS if p}
    assert {"run", "search", "prune", "finetune", "latency", "criteria"} <= names
    assert ("latency", "validate") in PATHS and ("criteria", "evaluate") in PATHS


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "prunelab")
def test_help_is_plain_text(path, capsys):
    with pytest.raises(SystemExit) as e:
        main([*path, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: prunelab"), out
    assert_plain(out, " ".join(("prunelab", *path)))


def test_help_in_a_real_process():
    """The same through ``python -m prunelab.cli`` (the installed command's entry point)."""
    for cmd in (["--help"], ["export", "--help"]):
        r = subprocess.run([sys.executable, "-m", "prunelab.cli", *cmd], capture_output=True,
                           text=True, timeout=hang_guard(300), env={**os.environ, "PRUNELAB_QUIET": "1"})
        assert r.returncode == 0, r.stderr
        assert_plain(r.stdout, " ".join(["prunelab", *cmd]))
        assert "prunelab.core.export_onnx" in r.stdout  # the :func: role's text stays
