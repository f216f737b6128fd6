"""An adaptive sweep's search space, written in Hydra's override grammar.

What users of Hydra's Optuna sweeper write in ``hydra.sweeper.params``::

    optimizer: choice(sgd, momentum, adam)            # categorical
    optimizer.lr: tag(log, interval(1e-4, 1e-1))      # float, log scale
    trainer.batch_size: range(16, 129, step=16)       # int 16, 32, ... 128 (as range(): no 129)
    model.dropout: interval(0.0, 0.5)                 # float
    trainer.epochs: 20                                # fixed for every trial

Each entry becomes a :class:`Param` (plain data: the login node validates the space
without importing optuna), turned into an optuna distribution where trials are asked
(hpcjobs/run/study.py), and a sampled value back into an override. :func:`corners`
lists the configurations that exercise every choice and both ends of every range, so
the launcher validates the whole space before anything is submitted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
from hydra.errors import HydraException

from hpcjobs.errors import ConfigError

CATEGORICAL, INT, FLOAT = "categorical", "int", "float"
_SCALARS = (str, int, float, bool, type(None))


@dataclass(frozen=True)
class Param:
    """One searched key: its kind and bounds (or choices), as the override grammar gave them."""

    key: str  # what the override sets: a config key (optimizer.lr) or a group (optimizer)
    kind: str  # CATEGORICAL, INT or FLOAT
    choices: tuple = ()
    low: float = 0.0
    high: float = 0.0  # inclusive
    step: float | None = None
    log: bool = False

    def override(self, value: Any) -> str:
        """The override that sets this key to a sampled value."""
        if isinstance(value, bool) or value is None:
            text = "null" if value is None else str(value).lower()
        elif isinstance(value, float):
            text = repr(float(value))
        else:
            text = str(value)
        return f"{self.key}={text}"

    def ends(self) -> tuple:
        """Values that together exercise the whole param: every choice, or both ends."""
        if self.kind == CATEGORICAL:
            return self.choices
        cast = int if self.kind == INT else float
        return (cast(self.low),) if self.low == self.high else (cast(self.low), cast(self.high))


@dataclass(frozen=True)
class SearchSpace:
    params: tuple[Param, ...]
    # overrides every trial gets (a plain value in params)
    fixed: tuple[str, ...] = field(default=())

    def overrides(self, values: Mapping[str, Any]) -> list[str]:
        """A trial's overrides: the fixed ones, then each sampled value."""
        return [*self.fixed, *(p.override(values[p.key]) for p in self.params)]


def parse(params: Mapping[str, Any]) -> SearchSpace:
    """``hydra.sweeper.params`` -> SearchSpace; ConfigError naming an entry that is not a range."""
    parser = OverridesParser.create()
    searched: list[Param] = []
    fixed: list[str] = []
    for key, text in params.items():
        text = "null" if text is None else str(text)
        try:
            override = parser.parse_override(f"{key}={text}")
        except HydraException as e:
            raise ConfigError(
                f"hydra.sweeper.params.{key}: {text!r} is not in Hydra's override grammar ({e})"
            ) from e
        if not override.is_sweep_override():
            fixed.append(f"{key}={text}")
            continue
        searched.append(_param(str(key), override.value(), text))
    if not searched:
        raise ConfigError(
            "hydra.sweeper.params: nothing to search; give at least one key a choice(...), "
            "range(...) or interval(...)"
        )
    return SearchSpace(tuple(searched), tuple(fixed))


def _param(key: str, sweep: Any, text: str) -> Param:
    where = f"hydra.sweeper.params.{key}: {text!r}"
    unknown_tags = set(getattr(sweep, "tags", ())) - {"log"}
    if unknown_tags:
        raise ConfigError(
            f"{where}: unknown tag(s) {sorted(unknown_tags)}; the one tag understood is `log`"
        )
    log = "log" in getattr(sweep, "tags", ())
    if isinstance(sweep, ChoiceSweep):
        choices = tuple(sweep.list)
        if not all(isinstance(c, _SCALARS) for c in choices):
            raise ConfigError(
                f"{where}: a choice must be a number, a string, true/false or null (lists and dicts"
                " cannot be sampled); name each alternative, e.g. a config group option"
            )
        if log:
            raise ConfigError(
                f"{where}: `log` applies to interval(...) and range(...), not to choice(...)"
            )
        return Param(key, CATEGORICAL, choices=choices)
    if isinstance(sweep, RangeSweep):
        start, stop, step = sweep.start, sweep.stop, sweep.step
        # Optional in Hydra's class only: its parser fills both (range(5) is range(0, 5)).
        if start is None or stop is None or step is None or step <= 0 or stop <= start:
            raise ConfigError(
                f"{where}: range(start, stop, step=...) needs start < stop and a step > 0"
            )
        count = math.ceil((stop - start) / step - 1e-9)  # like range(): stop is excluded
        last = start + (count - 1) * step
        integral = all(float(v).is_integer() for v in (start, stop, step)) and not any(
            isinstance(v, float) for v in (start, stop, step)
        )
        if log and step != 1:
            raise ConfigError(
                f"{where}: a log range cannot have a step; use tag(log, interval(...))"
            )
        return Param(key, INT if integral else FLOAT, low=start, high=last, step=step, log=log)
    if isinstance(sweep, IntervalSweep):
        low, high = sweep.start, sweep.end
        if low is None or high is None or not low < high:
            raise ConfigError(f"{where}: interval(low, high) needs low < high")
        if log and low <= 0:
            raise ConfigError(f"{where}: a log interval needs low > 0")
        integral = isinstance(low, int) and isinstance(high, int) and not isinstance(low, bool)
        return Param(key, INT if integral else FLOAT, low=low, high=high, log=log)
    raise ConfigError(
        f"{where}: use choice(...), range(...) or interval(...) (optionally tag(log, ...))"
    )


def corners(space: SearchSpace) -> list[list[str]]:
    """Configurations that use every choice and both ends of every range at least once.

    Each param in turn takes each of its end values while the others keep their first:
    sum(len(ends)) configurations, not their product, yet every value the launcher must
    check (a choice naming a config group option, a bound outside a key's declared range)
    appears in one of them.
    """
    first = {p.key: p.ends()[0] for p in space.params}
    seen: list[list[str]] = []
    for param in space.params:
        for value in param.ends():
            config = space.overrides({**first, param.key: value})
            if config not in seen:
                seen.append(config)
    return seen


def distributions(space: SearchSpace) -> dict[str, Any]:
    """optuna distributions by key (imports optuna: on the node, or where a study is read)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    found: dict[str, Any] = {}
    for p in space.params:
        if p.kind == CATEGORICAL:
            found[p.key] = CategoricalDistribution(list(p.choices))
        elif p.kind == INT:
            found[p.key] = IntDistribution(
                int(p.low), int(p.high), log=p.log, step=1 if p.log else int(p.step or 1)
            )
        else:
            found[p.key] = FloatDistribution(
                float(p.low),
                float(p.high),
                log=p.log,
                step=None if p.log or p.step is None else float(p.step),
            )
    return found


def as_spec(params: Mapping[str, Any]) -> dict[str, str]:
    """The params as recorded in sweep.json (strings, parsed again on the node)."""
    return {str(k): "null" if v is None else str(v) for k, v in params.items()}
