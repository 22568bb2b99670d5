"""Console output: progress bars and tables go to stderr, JSON results to stdout."""

from __future__ import annotations

import contextlib
import os
import sys

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

err = Console(stderr=True)
out = Console()


def quiet() -> bool:
    return os.environ.get("PRUNELAB_QUIET") == "1"


@contextlib.contextmanager
def progress(transient: bool = True):
    """A rich progress bar on stderr (disabled when PRUNELAB_QUIET=1)."""
    p = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                 console=err, transient=transient, disable=quiet() or not sys.stderr.isatty())
    with p:
        yield p


def log(msg: str) -> None:
    if not quiet():
        err.print(msg, highlight=False)
