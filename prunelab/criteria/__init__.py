"""Filter criteria: which channels of a coupled group go first.

A criterion is a registered class; ``CRITERIA.get(name).fn(**options)`` builds one.  It scores
every channel of a torch-pruning group (higher = more important, pruned last).

How a *group* is scored (the same rule for every criterion): a group couples channels across
several layers (in a ResNet stage the stem, every block's second conv and the shortcut share one
channel set).  Each *producer* layer of the group (a conv / linear whose output channels the group
removes) gets a per-channel score from the criterion, and the group score of a channel is the
``reduction`` (default ``sum``) of its producers' scores.  Scale-free scores (weight norms: ``l1``,
``l2``) are first divided by their layer's mean, so that no coupled layer dominates through its
fan-in or the BN behind it (Torch-Pruning's group normalisation); attributions and loss-based
scores are in common units (contribution to the logit / loss) and are summed as they are.  BN
layers and consumers (layers whose *input* channels go) are scored only by criteria that say so
(``bn-scale`` sums |gamma| over the group's BN layers; ``lrf`` weighs by the consumers' weights).

    >>> from prunelab.criteria import CRITERIA, make_criterion
    >>> [n for n in ("l1", "l2", "random", "deeplift") if n in CRITERIA]
    ['l1', 'l2', 'random', 'deeplift']
    >>> make_criterion("l1").name
    'l1'
"""

from __future__ import annotations

import json

from ..errors import PrunelabError
from ..registry import Registry, import_plugins
from .base import Criterion, GroupInfo  # noqa: F401

CRITERIA = Registry("criterion", hint="(see `prunelab criteria list`)")


def criterion(description: str = ""):
    """Register a :class:`Criterion` subclass under its ``name``: the name and whether it needs
    data are said once, on the class (an out-of-tree criterion does the same and is found through
    the ``prunelab.criteria`` entry-point group)."""
    def deco(cls):
        return CRITERIA.register(cls.name, description=description)(cls)

    return deco


def make_criterion(name: str, **options) -> Criterion:
    """Build a registered criterion by name with its options (validated by the criterion)."""
    return CRITERIA.get(name).fn(**options)


def parse_criterion(spec: str) -> tuple[str, dict]:
    """``name`` or ``name:key=value:key=value`` (values parsed as JSON where they can be)."""
    name, *opts = spec.strip().split(":")
    options = {}
    for o in opts:
        if "=" not in o:
            raise PrunelabError(f"criterion option {o!r} in {spec!r} must look like key=value")
        k, v = o.split("=", 1)
        try:
            options[k] = json.loads(v)
        except json.JSONDecodeError:
            options[k] = v
    return name, options


def build_criterion(spec: "str | Criterion", **extra) -> Criterion:
    """A criterion from ``name[:key=value...]`` (``extra`` fills options the spec leaves out),
    or the :class:`Criterion` object itself."""
    if isinstance(spec, Criterion):
        return spec
    name, options = parse_criterion(spec)
    try:
        return make_criterion(name, **{**extra, **options})
    except TypeError as e:
        raise PrunelabError(f"criterion {name} does not take these options ({e}); see "
                            "`prunelab criteria list`") from None


def needs_data(spec: "str | Criterion") -> bool:
    """Whether a criterion reads data, asked of the criterion as built with its options (so
    ``tp:importance=taylor`` needs data and ``tp`` does not).

    >>> needs_data("l1"), needs_data("tp"), needs_data("tp:importance=taylor")
    (False, False, True)
    """
    return bool(build_criterion(spec).needs_data)


import_plugins(__name__, __path__, "prunelab.criteria")  # every module here registers itself
