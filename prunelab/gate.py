"""Quiet while timing: prunelab processes on one machine do not compute while one of them times.

A latency figure taken while another process trains on the next core is not the figure of a
quiet machine: on a 2-core VM with a shared L3, a pruned resnet20 measured 3.25x faster than the
unpruned one while the other core was idle and under 2.6x while it ran a test suite, so a search
whose confirmation happened to run beside a fine-tune rejected a point that was within its
budget.  The *gate* is a pair of advisory file locks (``flock``) that every prunelab process on
the machine honours:

- a timing section (:func:`timing`, held by :func:`prunelab.metrics.time_callables`) takes
  the *door* exclusively, then the *room* exclusively: it waits for the batches in flight to end,
  and no new one starts until it is done;
- a heavy step (:func:`gated`, around each batch of training, evaluation and BN re-estimation;
  :func:`held`, around pruning a candidate, scoring channels and building a runtime session)
  passes the door (shared, released at once) and holds the room shared while it computes.

Timing sections of several processes take turns; heavy steps run side by side.  A process never
waits at the door while it holds the room (a timing inside its own step lets the room go first;
a step inside a step does not pass the door again), so no two processes wait on each other.  The
locks live in ``$PRUNELAB_TIMING_GATE`` (a path prefix; default ``<tmp>/prunelab-gate-<uid>``);
``PRUNELAB_TIMING_GATE=off`` turns the gate off.  ``flock`` locks go with the process: a killed
process leaves nothing held.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

try:
    import fcntl
except ImportError:  # not POSIX (Windows): no gate
    fcntl = None

ENV = "PRUNELAB_TIMING_GATE"
T = TypeVar("T")
F = TypeVar("F", bound=Callable)


class _Gate:
    def __init__(self):
        self.lock = threading.RLock()
        self.prefix: str | None = None
        self.door = self.room = None  # this process's file descriptors
        self.timing = 0  # depth of timing sections in this process
        self.working = 0  # heavy steps in flight in this process

    def _fds(self) -> bool:
        """Open the lock files for the current setting; False when the gate is off."""
        prefix = os.environ.get(ENV) or str(Path(tempfile.gettempdir()) /
                                              f"prunelab-gate-{os.getuid()}")
        if prefix.lower() == "off" or fcntl is None:
            return False
        if prefix != self.prefix:
            if self.timing or self.working:
                return self.door is not None  # the setting changed mid-section: keep the old
            self._close()
            try:
                self.door = os.open(prefix + ".door", os.O_RDWR | os.O_CREAT, 0o666)
                self.room = os.open(prefix + ".room", os.O_RDWR | os.O_CREAT, 0o666)
            except OSError:  # an unwritable place: no gate rather than no run
                self._close()
                return False
            self.prefix = prefix
        return True

    def _close(self) -> None:
        for fd in (self.door, self.room):
            if fd is not None:
                os.close(fd)
        self.door = self.room = self.prefix = None


_GATE = _Gate()


@contextlib.contextmanager
def timing() -> Iterator[None]:
    """Hold the machine quiet (for the prunelab processes on it) while the block times."""
    g = _GATE
    with g.lock:
        first = g._fds() and g.timing == 0
        g.timing += 1
    try:
        if first:
            # never wait at the door while holding the room (this process's own step, e.g. a
            # batch generator still suspended): release it first, so no two processes wait on
            # each other
            if g.working:
                fcntl.flock(g.room, fcntl.LOCK_UN)
            fcntl.flock(g.door, fcntl.LOCK_EX)
            fcntl.flock(g.room, fcntl.LOCK_EX)  # waits for the batches in flight elsewhere
        yield
    finally:
        with g.lock:
            g.timing -= 1
            if first:
                fcntl.flock(g.room, fcntl.LOCK_SH if g.working else fcntl.LOCK_UN)
                fcntl.flock(g.door, fcntl.LOCK_UN)


@contextlib.contextmanager
def step() -> Iterator[None]:
    """One heavy step (a batch): waits while another process times, then runs beside others."""
    g = _GATE
    with g.lock:
        on = g._fds() and g.timing == 0  # inside our own timing section: nothing to wait for
        enter = on and g.working == 0  # a step inside a step holds the room already
    if enter:
        fcntl.flock(g.door, fcntl.LOCK_SH)  # waits while a timing section holds the door
        fcntl.flock(g.door, fcntl.LOCK_UN)
        fcntl.flock(g.room, fcntl.LOCK_SH)
    if on:
        with g.lock:
            g.working += 1
    try:
        yield
    finally:
        if on:
            with g.lock:
                g.working -= 1
                if g.working == 0 and g.timing == 0:
                    fcntl.flock(g.room, fcntl.LOCK_UN)


def gated(batches: Iterable[T]) -> Iterator[T]:
    """``batches``, each held as a :func:`step` while the loop body computes on it (the batch is
    fetched outside the step)."""
    for b in batches:
        with step():
            yield b


def held(fn: F) -> F:
    """``fn`` run as one :func:`step` (a decorator), for heavy work that is not a batch loop:
    pruning a candidate (dependency graph, OMP solves, weight surgery), scoring channels,
    exporting a model and creating its runtime session.  Ungated, omp-search pruned candidates
    for a quarter of an hour while the cell beside it timed its front and confirmations."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        with step():
            return fn(*args, **kwargs)
    return run
