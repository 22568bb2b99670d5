"""Registries with metadata (criteria, models, datasets, targets, ...).

Every plugin kind keeps one :class:`Registry`; the CLI's choices and ``prunelab list`` are read
from it, never from a hand-kept list.  An entry is a factory plus metadata such as
``needs_data`` or ``description``.

Example::

    >>> from prunelab.registry import Registry
    >>> shapes = Registry("shape")
    >>> @shapes.register("square", description="four equal sides")
    ... def square(n=1):
    ...     return n * n
    >>> shapes.get("square").fn(3), shapes.names()
    (9, ['square'])
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import PrunelabError


@dataclass(frozen=True)
class Entry:
    name: str
    fn: Callable[..., Any]
    description: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


class Registry:
    def __init__(self, kind: str, hint: str = ""):
        self.kind = kind
        self.hint = hint
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, description: str = "", **meta: Any):
        def deco(fn):
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            doc = description or (fn.__doc__ or "").strip().split("\n")[0]
            self._entries[name] = Entry(name, fn, doc, dict(meta))
            return fn

        return deco

    def get(self, name: str) -> Entry:
        if name not in self._entries:
            close = difflib.get_close_matches(name, self._entries, n=1)
            maybe = f" (did you mean {close[0]!r}?)" if close else ""
            raise PrunelabError(
                f"unknown {self.kind} {name!r}{maybe}; choose one of: {', '.join(self.names())}"
                + (f" {self.hint}" if self.hint else "")
            )
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: str) -> bool:
        return name in self._entries


def import_plugins(package: str, path, group: str | None = None) -> None:
    """Import every module of a plugin package (``import_plugins(__name__, __path__, group)`` in
    its ``__init__``), so that a new criterion, search method or target is one file that registers
    itself by name: no import list to edit.  Modules whose name starts with ``_`` are helpers
    and are imported only by the plugins that use them.

    Out-of-tree plugins: an installed distribution that declares an entry point in ``group``
    (``[project.entry-points."prunelab.criteria"] mine = "my_pkg.criteria"``) is imported too,
    and registers itself the same way.  A plugin that fails to import is reported in one line
    naming the distribution, not a traceback."""
    import importlib
    import importlib.metadata
    import pkgutil

    for m in sorted(pkgutil.iter_modules(path), key=lambda m: m.name):
        if not m.name.startswith("_"):
            importlib.import_module(f"{package}.{m.name}")
    if group is not None:
        load_entry_points(group)


def load_entry_points(group: str) -> None:
    """Import the installed plugins of one entry-point group (see :func:`import_plugins`)."""
    import importlib.metadata

    for ep in sorted(importlib.metadata.entry_points(group=group), key=lambda e: e.name):
        try:
            ep.load()
        except Exception as e:  # a broken third-party plugin must not take prunelab down
            dist = getattr(ep.dist, "name", "?")
            raise PrunelabError(f"plugin {ep.name!r} ({ep.value}, from {dist}) in entry-point "
                                f"group {group} failed to import: {type(e).__name__}: {e}; fix "
                                "or uninstall it") from None
