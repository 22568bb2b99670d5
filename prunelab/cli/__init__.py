"""The ``prunelab`` command: a thin layer over :mod:`prunelab.commands` and the object core.

Every subcommand's help is the docstring of the library call it makes.  Errors the user can fix
print one line and exit with code 2 (``--debug`` shows the traceback).  One module per family of
subcommands (``models``, ``latency``, ``search``, ``pipeline``), each with a ``register(sub)``;
what they share is in :mod:`.common`.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import PrunelabError
from .common import Parser


def build_parser() -> argparse.ArgumentParser:
    from ..version import __version__
    from . import latency, models, pipeline, search


    p = Parser(prog="prunelab", description="Filter pruning that makes CNNs measurably faster on the runtime you deploy with.")
    p.add_argument("--version", action="version", version=f"prunelab {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=Parser)

    for family in (models, latency, search, pipeline):
        family.register(sub)
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        from ..io import trust_factory

        with trust_factory(getattr(args, "factory", None)):
            args.fn(args)
    except PrunelabError as e:
        if debug:
            raise
        sys.stderr.write(f"prunelab: error: {e}\n")
        return e.exit_code
    except OSError as e:  # a write the file system refused that no layer above caught
        from ..errors import is_write_error, write_error

        if debug or not is_write_error(e) or not e.filename:
            raise
        sys.stderr.write(f"prunelab: error: {write_error(e.filename, e)}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("prunelab: interrupted\n")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
