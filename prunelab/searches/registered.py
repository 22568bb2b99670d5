"""The registry of search methods (every method module registers itself here by name)."""

from ..registry import Registry

SEARCHES = Registry("search method", "see `prunelab search --help`")
