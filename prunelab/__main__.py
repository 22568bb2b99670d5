"""``python -m prunelab``: the same command line as ``prunelab``."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
