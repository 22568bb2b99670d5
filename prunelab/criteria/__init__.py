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

from ..registry import Registry, import_plugins
from .base import Criterion, GroupInfo  # noqa: F401

CRITERIA = Registry("criterion", hint="(see `prunelab criteria list`)")

import_plugins(__name__, __path__)  # every module here registers its criteria


def make_criterion(name: str, **options) -> Criterion:
    """Build a registered criterion by name with its options (validated by the criterion)."""
    return CRITERIA.get(name).fn(**options)
