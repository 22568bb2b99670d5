"""The one place the version is written (pyproject reads it; ``prunelab.__version__`` is it)."""

__version__ = "0.1.0"
