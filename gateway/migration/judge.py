"""The judge of a rollout's step: the canary's own traffic against the baseline's (the rule's
app), in the spirit of Kayenta's judge (docs/rollouts.md compares them).

Pure: tallies in, a :class:`Verdict` out, no clock and no database. Each metric is
classified ``pass`` or ``high`` (or ``nodata``):

- ``errors``: the canary's 5xx rate is high when it exceeds the baseline's by more than
  ``errors`` percentage points and Fisher's exact test (one-sided) says so at ``alpha``;
- ``latency``: high when a Mann-Whitney U test (one-sided: the canary slower) says so at
  ``alpha`` and the effect size, the ratio of the means (Kayenta's default), is at least
  ``latency``;
- ``equality``: for a rule that also shadows, high when fewer than ``equality`` per cent
  of the comparisons were equal.

The score is the per cent of judged metrics that pass, 0 when a critical one is high; a
step passes from ``pass``, holds from ``marginal``, and fails below it::

    verdict = judge(baseline, canary, Thresholds(), equality=(97, 100))
    verdict.outcome, verdict.score  # "pass", 100.0

Latencies are kept in buckets 2^(1/16) wide (4.4%), so that every instance can add its
counts to the others' in the database: the U test reads each bucket as its middle value.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.migration.rollout_spec import Thresholds

#: Latency buckets: bucket ``i`` holds ``[FLOOR * RATIO**i, FLOOR * RATIO**(i+1))`` seconds.
FLOOR = 0.00005
RATIO = 2 ** (1 / 16)
LAST_BUCKET = 400  # 0.05 ms * 2**25: about 28 minutes

PASS, MARGINAL, FAIL = "pass", "marginal", "fail"


def bucket(seconds: float) -> int:
    """The latency bucket of a response that took ``seconds``."""
    if seconds <= FLOOR:
        return 0
    return min(int(math.log(seconds / FLOOR, RATIO)), LAST_BUCKET)


def bucket_value(index: int) -> float:
    """The middle (geometric) of bucket ``index``, in seconds."""
    return float(FLOOR * RATIO ** (index + 0.5))


@dataclass(frozen=True, kw_only=True)
class Arm:
    """One arm's tally over a step: requests, 5xx answers, latencies by bucket."""

    requests: int = 0
    errors: int = 0
    latency: Mapping[int, int] = field(default_factory=dict)

    def plus(self, other: Arm) -> Arm:
        """The two tallies added (one instance's to another's)."""
        latency = dict(self.latency)
        for index, n in other.latency.items():
            latency[index] = latency.get(index, 0) + n
        return Arm(requests=self.requests + other.requests, errors=self.errors + other.errors, latency=latency)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def mean(self) -> float:
        """The mean latency in seconds (of the buckets' middles)."""
        n = sum(self.latency.values())
        return sum(bucket_value(i) * c for i, c in self.latency.items()) / n if n else 0.0

    def quantile(self, q: float) -> float:
        """The ``q`` quantile (0-1) of the latencies in seconds (a bucket's middle)."""
        n = sum(self.latency.values())
        seen = 0
        for index in sorted(self.latency):
            seen += self.latency[index]
            if seen >= q * n:
                return bucket_value(index)
        return 0.0

    @staticmethod
    def of(statuses: Iterable[int], seconds: Iterable[float]) -> Arm:
        """A tally of responses (for tests and tools)."""
        latency: dict[int, int] = {}
        requests = errors = 0
        for status, took in zip(statuses, seconds, strict=True):
            requests += 1
            errors += status >= 500
            index = bucket(took)
            latency[index] = latency.get(index, 0) + 1
        return Arm(requests=requests, errors=errors, latency=latency)


@dataclass(frozen=True, kw_only=True)
class Metric:
    """One metric's classification and the figures it was made from."""

    name: str
    classification: str  # "pass", "high" or "nodata"
    critical: bool
    figures: Mapping[str, float]
    reason: str


@dataclass(frozen=True, kw_only=True)
class Verdict:
    """A step's judgement: ``pass``, ``marginal`` or ``fail``, its score and each metric's."""

    outcome: str
    score: float
    metrics: tuple[Metric, ...]

    def figures(self) -> dict[str, Any]:
        """The verdict as JSON for the audit trail."""
        return {"outcome": self.outcome, "score": self.score,
                "metrics": {m.name: {"classification": m.classification, "critical": m.critical,
                                     "reason": m.reason, **m.figures} for m in self.metrics}}

    def summary(self) -> str:
        """One line: the outcome, the score and each metric's reason."""
        return f"{self.outcome} (score {self.score:g}): " + "; ".join(f"{m.name}: {m.reason}" for m in self.metrics)


def judge(baseline: Arm, canary: Arm, thresholds: Thresholds, equality: tuple[int, int] | None = None) -> Verdict:
    """Judge ``canary`` against ``baseline``; ``equality``: (equal, compared) shadow comparisons."""
    critical = set(thresholds.critical)
    metrics = [_errors(baseline, canary, thresholds, "errors" in critical),
               _latency(baseline, canary, thresholds, "latency" in critical)]
    if equality is not None:
        metrics.append(_equality(equality, thresholds, "equality" in critical))
    judged = [m for m in metrics if m.classification != "nodata"]
    if any(m.critical and m.classification == "high" for m in judged) or not judged:
        score = 0.0
    else:
        score = round(100 * sum(m.classification == "pass" for m in judged) / len(judged), 2)
    outcome = PASS if score >= thresholds.passing else MARGINAL if score >= thresholds.marginal else FAIL
    return Verdict(outcome=outcome, score=score, metrics=tuple(metrics))


def _errors(baseline: Arm, canary: Arm, thresholds: Thresholds, critical: bool) -> Metric:
    if not baseline.requests or not canary.requests:
        return Metric(name="errors", classification="nodata", critical=critical, figures={}, reason="no requests")
    from scipy.stats import fisher_exact  # see _mann_whitney for why scipy, and why here

    table = [[canary.errors, canary.requests - canary.errors], [baseline.errors, baseline.requests - baseline.errors]]
    p = float(fisher_exact(table, alternative="greater").pvalue)
    difference = 100 * (canary.error_rate - baseline.error_rate)
    high = difference > thresholds.errors and p < thresholds.alpha
    figures = {"canary_rate": round(100 * canary.error_rate, 3), "baseline_rate": round(100 * baseline.error_rate, 3),
               "difference": round(difference, 3), "p": _rounded(p), "canary_requests": canary.requests,
               "baseline_requests": baseline.requests}
    reason = (f"5xx {figures['canary_rate']:g}% against {figures['baseline_rate']:g}% "
              f"(+{max(difference, 0):.2f} points, allowed {thresholds.errors:g}; Fisher p={_shown(p)})")
    return Metric(name="errors", classification="high" if high else "pass", critical=critical, figures=figures,
                  reason=reason)


def _latency(baseline: Arm, canary: Arm, thresholds: Thresholds, critical: bool) -> Metric:
    if not baseline.latency or not canary.latency:
        return Metric(name="latency", classification="nodata", critical=critical, figures={}, reason="no requests")
    ratio = canary.mean() / baseline.mean() if baseline.mean() else 1.0
    figures: dict[str, float] = {
        "canary_median_ms": round(1000 * canary.quantile(0.5), 3),
        "baseline_median_ms": round(1000 * baseline.quantile(0.5), 3),
        "canary_p99_ms": round(1000 * canary.quantile(0.99), 3),
        "baseline_p99_ms": round(1000 * baseline.quantile(0.99), 3),
        "mean_ratio": round(ratio, 4)}
    if set(baseline.latency) == set(canary.latency) and len(baseline.latency) == 1:
        # One value in both arms: no ranks to test (Kayenta passes it too).
        figures.update(p=1.0, cles=0.5)
        return Metric(name="latency", classification="pass", critical=critical, figures=figures,
                      reason="every response in the same bucket in both arms")
    u, p = _mann_whitney(canary, baseline)
    cles = u / (sum(canary.latency.values()) * sum(baseline.latency.values()))
    figures.update(p=_rounded(p), cles=round(cles, 4), u=u)
    high = p < thresholds.alpha and ratio >= thresholds.latency
    reason = (f"median {figures['canary_median_ms']:g} ms against {figures['baseline_median_ms']:g} ms, mean ratio "
              f"{ratio:.3f} (allowed {thresholds.latency:g}); U test p={_shown(p)}, P(canary slower)={cles:.3f}")
    return Metric(name="latency", classification="high" if high else "pass", critical=critical, figures=figures,
                  reason=reason)


def _mann_whitney(canary: Arm, baseline: Arm) -> tuple[float, float]:
    """U of the canary and the one-sided p-value that it is slower.

    scipy's ``mannwhitneyu`` (asymptotic, with its tie correction: bucketed latencies tie).
    Measured here: installing scipy (and numpy) took 17 s and 160 MB of the environment,
    and importing ``scipy.stats`` 1.3-1.8 s and 100 MB of memory. So it is an extra
    (``rollout``), imported here, by the one instance that judges, off the event loop; a
    U test of our own would be some 30 lines of rank and tie arithmetic to get right.
    """
    import numpy
    from scipy.stats import mannwhitneyu

    def values(arm: Arm) -> Any:
        indices = sorted(arm.latency)
        return numpy.repeat([bucket_value(i) for i in indices], [arm.latency[i] for i in indices])

    result = mannwhitneyu(values(canary), values(baseline), alternative="greater", method="asymptotic")
    return float(result.statistic), float(result.pvalue)


def _equality(counts: tuple[int, int], thresholds: Thresholds, critical: bool) -> Metric:
    equal, compared = counts
    if not compared:
        return Metric(name="equality", classification="nodata", critical=critical, figures={},
                      reason="no comparisons")
    rate = 100 * equal / compared
    figures = {"equal": equal, "compared": compared, "rate": round(rate, 3)}
    return Metric(name="equality", classification="high" if rate < thresholds.equality else "pass",
                  critical=critical, figures=figures,
                  reason=f"{equal} of {compared} comparisons equal ({rate:.1f}%, at least {thresholds.equality:g}%)")


def _rounded(p: float) -> float:
    return float(f"{p:.4g}")


def _shown(p: float) -> str:
    return f"{p:.2g}"
