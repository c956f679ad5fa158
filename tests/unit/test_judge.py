"""The judge of a rollout's step, on tallies drawn from seeded random latencies: errors,
latency (Mann-Whitney U with an effect size) and the shadow's equality."""

from __future__ import annotations

import numpy
import pytest

from gateway.migration.judge import FAIL, MARGINAL, PASS, Arm, bucket, bucket_value, judge
from gateway.migration.rollout_spec import Thresholds

N = 400  # requests per arm and step


def arm(seed: int, *, added: float = 0.0, error_every: int = 0, n: int = N) -> Arm:
    """A port's tally: latencies around 20 ms (log-normal), plus ``added`` seconds; every
    ``error_every``-th answer a 500."""
    rng = numpy.random.default_rng(seed)
    seconds = rng.lognormal(numpy.log(0.020), 0.25, n) + added
    statuses = [500 if error_every and i % error_every == 0 else 200 for i in range(n)]
    return Arm.of(statuses, seconds.tolist())


def test_buckets_hold_latencies_within_a_twentieth() -> None:
    for seconds in (0.0002, 0.003, 0.020, 0.5, 12.0):
        assert abs(bucket_value(bucket(seconds)) - seconds) / seconds < 0.05


def test_a_port_answering_5_percent_500s_fails() -> None:
    verdict = judge(arm(1), arm(2, error_every=20), Thresholds())
    errors = verdict.metrics[0]
    assert (verdict.outcome, verdict.score) == (FAIL, 0.0)
    assert (errors.name, errors.classification, errors.critical) == ("errors", "high", True)
    assert errors.figures["canary_rate"] == 5.0 and errors.figures["baseline_rate"] == 0.0
    assert errors.figures["p"] < 0.001
    assert "5xx 5% against 0%" in verdict.summary()


def test_a_port_20_ms_slower_is_marginal_or_fail_as_configured() -> None:
    baseline, slower = arm(3), arm(4, added=0.020)
    marginal = judge(baseline, slower, Thresholds(marginal=50))
    latency = marginal.metrics[1]
    assert (marginal.outcome, marginal.score, latency.classification) == (MARGINAL, 50.0, "high")
    assert latency.figures["p"] < 1e-10 and 1.9 < latency.figures["mean_ratio"] < 2.1
    assert latency.figures["cles"] > 0.95
    assert judge(baseline, slower, Thresholds()).outcome == FAIL  # marginal from 75: 50 is below
    critical = judge(baseline, slower, Thresholds(marginal=50, critical=("errors", "latency")))
    assert (critical.outcome, critical.score) == (FAIL, 0.0)


def test_a_port_equal_to_the_baseline_passes_at_least_19_runs_of_20() -> None:
    outcomes = [judge(arm(100 + run), arm(200 + run), Thresholds()).outcome for run in range(20)]
    assert outcomes.count(PASS) >= 19


def test_a_port_a_little_slower_but_within_the_effect_size_passes() -> None:
    """Significant (p tiny) but small: Kayenta's effect size keeps it from failing."""
    verdict = judge(arm(5), arm(6, added=0.002), Thresholds())
    latency = verdict.metrics[1]
    assert latency.figures["p"] < 0.01 and latency.figures["mean_ratio"] < 1.2
    assert verdict.outcome == PASS


def test_the_shadows_equality_counts_where_the_rule_shadows() -> None:
    baseline, canary = arm(7), arm(8)
    assert judge(baseline, canary, Thresholds(), equality=(99, 100)).outcome == PASS
    verdict = judge(baseline, canary, Thresholds(marginal=60), equality=(80, 100))
    assert (verdict.outcome, round(verdict.score, 2)) == (MARGINAL, 66.67)
    assert verdict.figures()["metrics"]["equality"] == {
        "classification": "high", "critical": False, "equal": 80, "compared": 100, "rate": 80.0,
        "reason": "80 of 100 comparisons equal (80.0%, at least 95%)"}
    assert judge(baseline, canary, Thresholds(), equality=(0, 0)).outcome == PASS  # no data: not judged


@pytest.mark.parametrize(("baseline", "canary"), [
    pytest.param(Arm(), arm(9), id="no-baseline"), pytest.param(arm(9), Arm(), id="no-canary")])
def test_no_traffic_is_no_pass(baseline: Arm, canary: Arm) -> None:
    verdict = judge(baseline, canary, Thresholds())
    assert (verdict.outcome, verdict.score) == (FAIL, 0.0)
    assert {m.classification for m in verdict.metrics} == {"nodata"}


def test_tallies_of_instances_add_up() -> None:
    one, two = arm(10, n=100), arm(11, n=50, error_every=10)
    both = one.plus(two)
    assert (both.requests, both.errors, sum(both.latency.values())) == (150, 5, 150)
