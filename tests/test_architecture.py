"""The architecture, kept by tests: one direction of imports (pyproject's [tool.importlinter]
contracts: CLI/config edge -> commands -> object API -> engine), and no module reached through
importlib to dodge them."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_hold(monkeypatch, capsys):
    cli = pytest.importorskip("importlinter.cli")
    monkeypatch.chdir(ROOT)
    code = cli.lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True)
    out = capsys.readouterr().out
    assert code == 0, out
    # every contract ran, and the main one covers each layer the issue names
    assert "3 kept, 0 broken" in out, out


def test_no_module_reached_through_importlib():
    """``importlib.import_module``/``__import__`` only where the design needs them: the plugin
    loader (registry) and a user's own factory file (io, named by the user)."""
    allowed = {"prunelab/registry.py", "prunelab/io.py"}
    bad = []
    for p in sorted((ROOT / "prunelab").rglob("*.py")):
        rel = p.relative_to(ROOT).as_posix()
        text = p.read_text()
        if re.search(r"import_module\(|__import__\(|spec_from_file_location\(", text) and \
                rel not in allowed:
            bad.append(rel)
    assert not bad, f"modules reached through importlib: {bad}"
    assert os.path.exists(ROOT / "prunelab" / "registry.py")
