"""One writer per output folder.

A job that writes a run, search or model folder holds ``<folder>.lock`` (a sibling file, so the
folder itself holds only results) while it runs: created atomically (``O_CREAT | O_EXCL``) with
the owner's pid, host, process start time and command.  A second job on the same folder is
refused in one line naming that pid.  A lock left by a killed process (SIGKILL, power loss) is
*stale* when its pid is gone on this host, or now belongs to a process that started at another
time (pid reuse); a stale lock is taken over.  The lock is released when the job ends, also on an
exception or Ctrl-C.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()) / "run"
    >>> with FolderLock(d):
    ...     FolderLock(d).acquire()
    Traceback (most recent call last):
    prunelab.errors.PrunelabError: ...run is being written by another prunelab process (pid ...
    >>> (d.parent / "run.lock").exists()
    False
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from .errors import PrunelabError


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell pid reuse apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class FolderLock:
    """``with FolderLock(folder): ...`` — exclusive writer of ``folder`` (a second lock on the
    same folder is refused, in this process too)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder).absolute()
        self.path = self.folder.with_name(self.folder.name + ".lock")
        self._mine = False

    def _owner(self) -> dict | None:
        try:
            d = json.loads(self.path.read_text())
            return d if isinstance(d, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def _stale(self, owner: dict) -> bool:
        if owner.get("host") != socket.gethostname():
            return False
        pid = owner.get("pid")
        if pid == os.getpid() and owner.get("started_ticks") == _start_time(pid):
            return False  # this very process holds it
        if not isinstance(pid, int) or not _alive(pid):
            return True
        started = owner.get("started_ticks")
        return started is not None and _start_time(pid) not in (None, started)

    def acquire(self) -> "FolderLock":
        try:
            return self._acquire()
        except OSError as e:  # a read-only or full disk: one line naming the lock file
            from .errors import write_error

            raise write_error(f"{self.folder} (its lock file {self.path.name})", e) from None

    def _acquire(self) -> "FolderLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started_ticks": _start_time(os.getpid()),
              "since": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": " ".join(sys.argv)[:300]}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is None:
                    continue  # released meanwhile
                if owner and not self._stale(owner):
                    raise PrunelabError(
                        f"{self.folder} is being written by another prunelab process (pid "
                        f"{owner.get('pid')} on {owner.get('host')}, since {owner.get('since')});"
                        f" wait for it to finish or use another output folder (a lock left by a "
                        f"crashed job on another host: delete {self.path})")
                try:
                    self.path.unlink()  # stale (or torn): take it over
                except FileNotFoundError:
                    pass
                continue
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(me, f)
            except BaseException:  # e.g. a full disk: no empty lock file left behind
                self.path.unlink(missing_ok=True)
                raise
            self._mine = True
            return self
        raise PrunelabError(f"could not take the lock {self.path}; another process keeps "
                            "taking it: use another output folder")

    def release(self) -> None:
        if self._mine:
            owner = self._owner()
            if owner and owner.get("pid") == os.getpid():
                try:
                    self.path.unlink()
                except FileNotFoundError:
                    pass
            self._mine = False

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
