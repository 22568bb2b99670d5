"""The user's budget: what the chosen pruned model must reach.

* ``latency=3.2ms`` (or ``latency=800us``) on the search's target, batch as configured;
* ``speedup=2.0``: the unpruned model's latency on the target divided by 2;
* ``macs=0.5`` / ``params=0.3``: the fraction of the unpruned model's MACs / parameters kept.

During a search, latency budgets are checked against the lookup-table *prediction*; the final
choice is made on latency *measured* on the target.

    >>> b = Budget.parse("speedup=2")
    >>> b.kind, b.value, b.limit({"latency_ms": 5.0, "macs": 100, "params": 10})
    ('latency', 2.0, 2.5)
    >>> Budget.parse("latency=800us").value
    0.8
    >>> Budget.parse("macs=0.5").met({"macs": 49}, {"macs": 100})
    True
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..errors import PrunelabError

_HELP = "give latency=3.2ms, speedup=2.0, macs=0.5 or params=0.3"


@dataclass(frozen=True)
class Budget:
    kind: str      # latency | macs | params
    value: float   # ms for latency (or the speed-up factor when ``relative``), else a fraction
    relative: bool = False  # speedup=X: limit = base latency / X

    @classmethod
    def parse(cls, text: str) -> "Budget":
        m = re.fullmatch(r"\s*(latency|speedup|macs|params)\s*=\s*([0-9.eE+-]+)\s*(ms|us|s)?\s*",
                         str(text))
        if not m:
            raise PrunelabError(f"cannot read budget {text!r}; {_HELP}")
        key, num, unit = m.groups()
        try:
            v = float(num)
        except ValueError:
            raise PrunelabError(f"cannot read the number in budget {text!r}; {_HELP}") from None
        if not math.isfinite(v):
            raise PrunelabError(f"budget {text!r} is not a finite number; {_HELP}")
        if key == "latency":
            v *= {"ms": 1.0, None: 1.0, "us": 1e-3, "s": 1e3}[unit]
            if not v > 0:
                raise PrunelabError(f"latency budget must be positive, got {text!r}")
            return cls("latency", v)
        if unit:
            raise PrunelabError(f"budget {key} takes no unit; {_HELP}")
        if key == "speedup":
            if not v > 1:
                raise PrunelabError(f"speedup budget must be above 1, got {v}; e.g. speedup=2")
            return cls("latency", v, relative=True)
        if not 0 < v < 1:
            raise PrunelabError(f"{key} budget is the fraction kept, in (0, 1); got {v}")
        return cls(key, v)

    def __str__(self) -> str:
        if self.relative:
            return f"speedup={self.value:g}"
        return f"latency={self.value:g}ms" if self.kind == "latency" else f"{self.kind}={self.value:g}"

    @property
    def key(self) -> str:
        """The point field the budget limits."""
        return "latency_ms" if self.kind == "latency" else self.kind

    def limit(self, base: dict) -> float:
        """The largest allowed value of :attr:`key`, given the unpruned model's point."""
        if self.kind == "latency":
            return base["latency_ms"] / self.value if self.relative else self.value
        return self.value * base[self.kind]

    def met(self, point: dict, base: dict, slack: float = 0.0) -> bool:
        return point[self.key] <= self.limit(base) * (1 + slack)

    def excess(self, point: dict, base: dict) -> float:
        """How far over the limit, relative to it (<= 0 when met)."""
        lim = self.limit(base)
        return (point[self.key] - lim) / lim

    def to_json(self) -> dict:
        return {"text": str(self), "kind": self.kind, "value": self.value,
                "relative": self.relative}
