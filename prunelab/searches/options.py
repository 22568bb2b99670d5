"""Method options, declared once where each method is registered (type, range, choices), and
checked before any work: by :class:`~prunelab.searches.driver.SearchConfig` (so the CLI, a run
config and the library refuse ``pop=2`` or ``pop=2.5`` alike, before minutes of table building)
and again when the method reads them.

    >>> Opt(int, ge=4).coerce("nsga2", "pop", "2.5")
    Traceback (most recent call last):
    prunelab.errors.PrunelabError: nsga2 option pop=2.5 must be an integer >= 4
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from ..errors import PrunelabError


@dataclass(frozen=True)
class Opt:
    type: type
    ge: float | None = None      # lower bound (inclusive)
    gt: float | None = None      # lower bound (exclusive)
    le: float | None = None      # upper bound (inclusive)
    lt: float | None = None      # upper bound (exclusive)
    choices: tuple | None = None
    item: type | None = None     # element type of a list option (numbers: the same bounds)

    def describe(self) -> str:
        kind = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
                list: "a list"}[self.type]
        parts = [f">= {self.ge:g}" if self.ge is not None else "",
                 f"> {self.gt:g}" if self.gt is not None else "",
                 f"<= {self.le:g}" if self.le is not None else "",
                 f"< {self.lt:g}" if self.lt is not None else ""]
        rng = " and ".join(p for p in parts if p)
        if self.type is list:
            return f"a list of numbers{(' each ' + rng) if rng else ''}, e.g. [0.5, 0.8]"
        if self.choices:
            return f"one of {', '.join(map(str, self.choices))}"
        return kind + (f" {rng}" if rng else "")

    def _number(self, v, typ):
        if isinstance(v, bool):
            raise ValueError
        if isinstance(v, str):
            v = json.loads(v)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError
        if not math.isfinite(v):
            raise ValueError
        if typ is int:
            if isinstance(v, float) and not v.is_integer():
                raise ValueError
            v = int(v)
        else:
            v = float(v)
        for bound, ok in ((self.ge, lambda b: v >= b), (self.gt, lambda b: v > b),
                          (self.le, lambda b: v <= b), (self.lt, lambda b: v < b)):
            if bound is not None and not ok(bound):
                raise ValueError
        return v

    def coerce(self, method: str, name: str, v):
        """The option's value in its type, or a one-line error naming the method and option."""
        try:
            if self.type is bool:
                if isinstance(v, str):
                    v = {"true": True, "false": False}[v.lower()]
                if not isinstance(v, bool):
                    raise ValueError
                return v
            if self.type is str:
                if not isinstance(v, str) or (self.choices and v not in self.choices):
                    raise ValueError
                return v
            if self.type is list:
                if isinstance(v, str):
                    v = json.loads(v)
                if not isinstance(v, list) or not v:
                    raise ValueError
                return sorted(self._number(x, self.item or float) for x in v)
            return self._number(v, self.type)
        except (ValueError, KeyError, TypeError, json.JSONDecodeError):
            shown = v if isinstance(v, str) else json.dumps(v, default=str)
            raise PrunelabError(f"{method} option {name}={shown} must be {self.describe()}") \
                from None


def check_options(method: str, options: dict) -> dict:
    """Every option of ``method`` known and in range (coerced values), before any work."""
    from .registered import SEARCHES

    schema = SEARCHES.get(method).meta["options"]
    unknown = sorted(set(options) - set(schema))
    if unknown:
        raise PrunelabError(f"method {method} has no option {unknown[0]!r}; it takes: "
                            f"{', '.join(schema)}")
    return {k: schema[k].coerce(method, k, v) for k, v in options.items()}
