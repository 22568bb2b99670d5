"""Per-layer allocation searches: how many filters each layer keeps, under the user's budget.

Every method runs on one driver (:mod:`prunelab.searches.driver`): a cached, logged, resumable
``evaluate(widths)``, the budget, the latency predictor of the target and the criterion's scores.

    >>> from prunelab.searches import SEARCHES
    >>> SEARCHES.names()
    ['abc', 'cie', 'global', 'nsga2', 'omp-search', 'torch-pruning', 'uniform']
"""

from ..registry import import_plugins
from .registered import SEARCHES

import_plugins(__name__, __path__, "prunelab.searches")  # every module here registers itself
from .budget import Budget  # noqa: E402
from .driver import SearchConfig  # noqa: E402
from .run import search_model  # noqa: E402

__all__ = ["SEARCHES", "Budget", "SearchConfig", "search_model"]
