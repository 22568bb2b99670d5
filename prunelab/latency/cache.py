"""A disk cache of measurements, keyed by the device fingerprint.

The fingerprint (CPU model and ISA, core count, runtime and library versions, threads, batch size,
precision) names a folder; a figure measured under one fingerprint is never read under another.
The folder keeps the full fingerprint next to the figures and it is compared on every open, so
even a hash collision cannot mix machines.  Files are written atomically.

    >>> import tempfile
    >>> from prunelab.latency.cache import Cache
    >>> c = Cache({"cpu": "x", "threads": 1}, tempfile.mkdtemp())
    >>> c.put("units", "conv|8|8", {"median_ms": 0.1}); c.flush()
    >>> Cache({"cpu": "x", "threads": 1}, c.root).get("units", "conv|8|8")
    {'median_ms': 0.1}
    >>> Cache({"cpu": "x", "threads": 2}, c.root).get("units", "conv|8|8") is None
    True
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX (Windows): one process per cache folder
    fcntl = None

from ..io import atomic_write_text

FORMAT = 2  # bumped whenever what a record means changes; older files are ignored
def fingerprint_id(fp: dict) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]


def default_root() -> Path:
    """``$PRUNELAB_CACHE`` or ``~/.cache/prunelab``, then ``latency/``."""
    base = os.environ.get("PRUNELAB_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "prunelab")
    return Path(base) / "latency"


class Cache:
    """Tables of JSON records (``units``, ``models``, ``predictors``) for one fingerprint."""

    def __init__(self, fingerprint: dict, root: str | os.PathLike | None = None):
        self.fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True))
        self.id = fingerprint_id(self.fingerprint)
        self.root = Path(root) if root else default_root()
        self.dir = self.root / self.id
        self._tables: dict[str, dict] = {}
        self._dirty: set[str] = set()
        fp_file = self.dir / "fingerprint.json"
        if fp_file.exists():
            try:
                same = json.loads(fp_file.read_text()) == self.fingerprint
            except (OSError, json.JSONDecodeError):
                same = False
            if not same:  # a different machine under the same id: keep nothing of it
                self.dir = self.root / f"{self.id}-{fingerprint_id({'salt': self.fingerprint})}"

    def _table(self, name: str) -> dict:
        if name not in self._tables:
            self._tables[name] = self._read(name)
        return self._tables[name]

    def get(self, table: str, key: str):
        return self._table(table).get(key)

    def put(self, table: str, key: str, value) -> None:
        self._table(table)[key] = value
        self._dirty.add(table)

    def __len__(self) -> int:
        return sum(len(self._table(t)) for t in ("units", "models"))

    def _read(self, name: str) -> dict:
        p = self.dir / f"{name}.json"
        try:
            d = json.loads(p.read_text()) if p.exists() else {}
        except (OSError, json.JSONDecodeError):
            d = {}  # a damaged cache file is only a lost cache: measure again
        return d.get("records", {}) if d.get("format") == FORMAT else {}

    def flush(self) -> None:
        """Write the tables this object changed.  Several processes may share the folder (a
        search beside a ``latency validate``): under an exclusive lock of the folder, each table
        is read again and this object's records merged in before it is written, so no process
        drops the records another one flushed since it read the table."""
        if not self._dirty:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "a") as lock:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)
            atomic_write_text(self.dir / "fingerprint.json",
                              json.dumps(self.fingerprint, indent=1))
            for t in sorted(self._dirty):
                merged = {**self._read(t), **self._tables[t]}
                self._tables[t] = merged
                atomic_write_text(self.dir / f"{t}.json",
                                  json.dumps({"format": FORMAT, "records": merged}))
        self._dirty.clear()
