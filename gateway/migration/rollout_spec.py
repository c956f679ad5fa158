"""A rule's rollout, as its ``gateway.toml`` writes it: the canary's share moves by steps,
each judged against the rule's own app before the next (:mod:`gateway.migration.judge`,
:mod:`gateway.migration.rollout`)::

    [[route]]
    rule = "/shop/cart"
    app = "legacy"
    canary = { app = "new" }        # no share: the rollout sets it

    [route.rollout]
    steps = [1, 5, 25, 50, 100]     # per cent of clients, rising
    interval = 300                  # seconds, at least, on each step before it passes
    requests = 200                  # requests to each arm, at least, before a step is judged
    handover = true                 # a passed last step makes the canary's app the rule's

    [route.rollout.judge]           # each optional; these are the defaults
    pass = 95                       # a score (0-100) from which a step passes...
    marginal = 75                   # ...and from which it holds; below it, it fails
    errors = 1.0                    # the canary's 5xx rate may exceed the baseline's by this many points
    latency = 1.2                   # the canary's mean latency may be this many times the baseline's
    alpha = 0.05                    # the significance level of the U test and of Fisher's test
    equality = 95                   # per cent of shadow comparisons equal, at least (rules that shadow)
    critical = ["errors"]           # metrics that fail the step alone

Each check is one line naming the ``[[route]]``'s line, as the rest of the file's are.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

#: The metrics the judge reads, by name (``critical`` names them).
METRICS = ("errors", "latency", "equality")

_ROLLOUT_KEYS = ("steps", "interval", "requests", "handover", "judge")
_JUDGE_KEYS = ("pass", "marginal", "errors", "latency", "alpha", "equality", "critical")


@dataclass(frozen=True, kw_only=True)
class Thresholds:
    """What the judge allows a canary, and the scores a step passes or holds at."""

    passing: float = 95.0
    marginal: float = 75.0
    errors: float = 1.0  # percentage points of 5xx over the baseline's rate
    latency: float = 1.2  # the mean ratio, canary over baseline (Kayenta's effect size)
    alpha: float = 0.05
    equality: float = 95.0  # per cent
    critical: tuple[str, ...] = ("errors",)


@dataclass(frozen=True, kw_only=True)
class RolloutSpec:
    """A rule's rollout: the steps its canary's share walks, and how each is judged."""

    steps: tuple[float, ...]
    interval: float = 300.0
    requests: int = 200
    handover: bool = False
    judge: Thresholds = Thresholds()


def parse_rollout(value: Any, where: str, canary: Any = None) -> RolloutSpec | None:
    """Check a route's ``rollout`` table; ``where`` names the rule (``gateway.toml, line 9``),
    ``canary`` is its ``canary`` table (checked already, when there is one).

    A problem raises ``ValueError`` with one line; the caller makes it its own error."""
    if value is None:
        return None
    if not isinstance(canary, dict):
        raise ValueError(f'{where}: a rollout moves a canary: add canary = {{ app = "new" }} to the rule.')
    if "share" in canary:
        raise ValueError(f"{where}: a rule with a rollout takes its canary's share from the steps: leave share "
                         "out of canary.")
    if not isinstance(value, dict):
        raise ValueError(f"{where}: rollout must be a table: [route.rollout] with steps = [1, 5, 25, 50, 100].")
    if unknown := sorted(set(value) - set(_ROLLOUT_KEYS)):
        raise ValueError(f"{where}: unknown key {unknown[0]!r} in [route.rollout]; use {', '.join(_ROLLOUT_KEYS)}.")
    steps = value.get("steps")
    if (not isinstance(steps, list) or not steps or not all(_number(s) and 0 < s <= 100 for s in steps)
            or any(a >= b for a, b in itertools.pairwise(steps))):
        raise ValueError(f"{where}: rollout steps must be rising per cents of clients, above 0 and at most 100, "
                         "e.g. steps = [1, 5, 25, 50, 100].")
    interval = value.get("interval", 300)
    if not _number(interval) or not 0 <= interval <= 7 * 86400:
        raise ValueError(f"{where}: rollout interval must be the seconds each step lasts at least, from 0 to "
                         "at most a week (604800), e.g. interval = 300.")
    requests = value.get("requests", 200)
    if isinstance(requests, bool) or not isinstance(requests, int) or not 1 <= requests <= 10_000_000:
        raise ValueError(f"{where}: rollout requests must be a whole number of requests each arm gets before a "
                         "step is judged, from 1, e.g. requests = 200.")
    handover = value.get("handover", False)
    if not isinstance(handover, bool):
        raise ValueError(f"{where}: rollout handover must be true or false (true: a passed last step makes the "
                         "canary's app the rule's).")
    judge = _thresholds(value.get("judge", {}), where)
    return RolloutSpec(steps=tuple(float(s) for s in steps), interval=float(interval), requests=requests,
                       handover=handover, judge=judge)


def _thresholds(value: Any, where: str) -> Thresholds:
    """Check ``[route.rollout.judge]``."""
    if not isinstance(value, dict):
        raise ValueError(f"{where}: rollout judge must be a table: [route.rollout.judge] with pass = 95, "
                         "marginal = 75.")
    if unknown := sorted(set(value) - set(_JUDGE_KEYS)):
        raise ValueError(f"{where}: unknown key {unknown[0]!r} in [route.rollout.judge]; use "
                         f"{', '.join(_JUDGE_KEYS)}.")
    default = Thresholds()
    limits = {"pass": (0, 100), "marginal": (0, 100), "errors": (0, 100), "equality": (0, 100),
              "latency": (1, 1000), "alpha": (0, 0.5)}
    read: dict[str, float] = {}
    for key, (low, high) in limits.items():
        number = value.get(key, getattr(default, "passing" if key == "pass" else key))
        if not _number(number) or not low <= number <= high or (key == "alpha" and number == 0):
            raise ValueError(f"{where}: rollout judge {key} must be a number from {low} to {high}"
                             f"{' (above 0)' if key == 'alpha' else ''}, e.g. {key} = "
                             f"{getattr(default, 'passing' if key == 'pass' else key):g}.")
        read[key] = float(number)
    if read["marginal"] > read["pass"]:
        raise ValueError(f"{where}: rollout judge marginal ({read['marginal']:g}) is above pass ({read['pass']:g}): "
                         "a step passes from pass, holds from marginal, and fails below it.")
    critical = value.get("critical", list(default.critical))
    if not isinstance(critical, list) or not all(isinstance(c, str) and c in METRICS for c in critical):
        raise ValueError(f"{where}: rollout judge critical must list metrics of {', '.join(METRICS)}, e.g. "
                         'critical = ["errors"].')
    return Thresholds(passing=read["pass"], marginal=read["marginal"], errors=read["errors"],
                      latency=read["latency"], alpha=read["alpha"], equality=read["equality"],
                      critical=tuple(dict.fromkeys(critical)))


def _number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and value == value
