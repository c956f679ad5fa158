"""What the rollout modules' mutation runs found no test for (docs/testing.md): the judge's
exact figures and boundaries, the file's checks, the state and audit rows a step leaves in
the database, and the migration page's section."""

from __future__ import annotations

import pytest

from gateway.migration.judge import FAIL, MARGINAL, PASS, Arm, bucket, judge
from gateway.migration.rollout_spec import RolloutSpec, Thresholds
from gateway.migration.rules import ConfigFileError, parse_gateway_file

# Two arms of unequal size whose figures have more digits than the report keeps, with a
# quantile that falls exactly on a bucket's last answer (the canary's median and p99).
BASELINE = Arm(requests=300, errors=2, latency={100: 149, 102: 100, 110: 51})
CANARY = Arm(requests=600, errors=14, latency={100: 300, 104: 199, 111: 1, 115: 94, 131: 6})


def test_a_verdicts_figures_and_summary_are_the_audit_trails_record() -> None:
    verdict = judge(BASELINE, CANARY, Thresholds(marginal=60, critical=("latency",)), equality=(2, 3))
    assert verdict.figures() == {"outcome": MARGINAL, "score": 66.67, "metrics": {
        "errors": {"classification": "pass", "critical": False,
                   "reason": "5xx 2.333% against 0.667% (+1.67 points, allowed 1; Fisher p=0.058)",
                   "canary_rate": 2.333, "baseline_rate": 0.667, "difference": 1.667, "p": 0.05777,
                   "canary_requests": 600, "baseline_requests": 300},
        "latency": {"classification": "pass", "critical": True,
                    "reason": "median 3.889 ms against 4.241 ms, mean ratio 1.101 (allowed 1.2); U test p=0.00018, "
                              "P(canary slower)=0.568",
                    "canary_median_ms": 3.889, "baseline_median_ms": 4.241, "canary_p99_ms": 7.448,
                    "baseline_p99_ms": 5.997, "mean_ratio": 1.1008, "p": 0.0001759, "cles": 0.5678, "u": 102201.0},
        "equality": {"classification": "high", "critical": False,
                     "reason": "2 of 3 comparisons equal (66.7%, at least 95%)", "equal": 2, "compared": 3,
                     "rate": 66.667}}}
    assert verdict.summary() == (
        "marginal (score 66.67): errors: 5xx 2.333% against 0.667% (+1.67 points, allowed 1; Fisher p=0.058); "
        "latency: median 3.889 ms against 4.241 ms, mean ratio 1.101 (allowed 1.2); U test p=0.00018, "
        "P(canary slower)=0.568; equality: 2 of 3 comparisons equal (66.7%, at least 95%)")


def test_metrics_without_data_are_named_and_say_so() -> None:
    verdict = judge(Arm(), CANARY, Thresholds(critical=("errors", "latency", "equality")), equality=(0, 0))
    assert verdict.figures() == {"outcome": FAIL, "score": 0.0, "metrics": {
        "errors": {"classification": "nodata", "critical": True, "reason": "no requests"},
        "latency": {"classification": "nodata", "critical": True, "reason": "no requests"},
        "equality": {"classification": "nodata", "critical": True, "reason": "no comparisons"}}}
    assert verdict.summary() == ("fail (score 0): errors: no requests; latency: no requests; "
                                 "equality: no comparisons")


def test_a_critical_equality_fails_the_step_alone() -> None:
    verdict = judge(BASELINE, BASELINE, Thresholds(critical=("equality",)), equality=(94, 100))
    assert (verdict.outcome, verdict.score) == (FAIL, 0.0)
    assert [(m.name, m.classification, m.critical) for m in verdict.metrics] == [
        ("errors", "pass", False), ("latency", "pass", False), ("equality", "high", True)]


def test_a_score_equal_to_pass_passes_and_an_equality_rate_equal_to_its_bound_passes() -> None:
    slower = Arm(requests=50, latency={60: 50})  # bucket 60 against 40: 2.4 times as slow
    verdict = judge(Arm(requests=50, latency={40: 50}), slower, Thresholds(passing=50, marginal=50))
    assert (verdict.outcome, verdict.score) == (PASS, 50.0)
    assert judge(BASELINE, BASELINE, Thresholds(), equality=(95, 100)).metrics[2].classification == "pass"


def test_an_error_rate_exactly_the_allowed_points_above_passes() -> None:
    baseline, canary = Arm(requests=400), Arm(requests=400, errors=100)  # 25% against 0%, p tiny
    assert judge(baseline, canary, Thresholds(errors=25)).metrics[0].classification == "pass"
    assert judge(baseline, canary, Thresholds(errors=24.9)).metrics[0].classification == "high"


def test_more_errors_without_significance_pass() -> None:
    """One 500 in ten against none: 10 points more, but Fisher's p is 0.5."""
    errors = judge(Arm(requests=10), Arm(requests=10, errors=1), Thresholds()).metrics[0]
    assert (errors.classification, errors.figures["p"]) == ("pass", 0.5)


def test_a_p_value_equal_to_alpha_is_not_significant() -> None:
    """One answer each: Fisher's p and the U test's (z = 0 after the continuity correction) are 0.5."""
    verdict = judge(Arm(requests=1, latency={40: 1}), Arm(requests=1, errors=1, latency={60: 1}),
                    Thresholds(alpha=0.5))
    errors, latency = verdict.metrics
    assert (errors.classification, errors.figures["p"], errors.figures["difference"]) == ("pass", 0.5, 100.0)
    assert (latency.classification, latency.figures["p"], latency.figures["mean_ratio"]) == ("pass", 0.5, 2.3784)


def test_a_mean_ratio_equal_to_the_allowed_one_is_high() -> None:
    baseline, canary = Arm(requests=50, latency={40: 50}), Arm(requests=50, latency={60: 50})
    allowed = canary.mean() / baseline.mean()
    assert judge(baseline, canary, Thresholds(latency=allowed)).metrics[1].classification == "high"


def test_a_canary_with_fewer_errors_is_no_points_above() -> None:
    errors = judge(Arm(requests=100, errors=5), Arm(requests=100, errors=1), Thresholds()).metrics[0]
    assert errors.reason == "5xx 1% against 5% (+0.00 points, allowed 1; Fisher p=0.99)"
    assert errors.figures["difference"] == -4.0


def test_every_answer_in_one_bucket_in_both_arms_passes_untested() -> None:
    latency = judge(Arm(requests=5, latency={40: 5}), Arm(requests=5, latency={40: 5}),
                    Thresholds(critical=("latency",))).metrics[1]
    assert (latency.name, latency.classification, latency.critical) == ("latency", "pass", True)
    assert latency.reason == "every response in the same bucket in both arms"
    assert latency.figures == {"canary_median_ms": 0.289, "baseline_median_ms": 0.289, "canary_p99_ms": 0.289,
                               "baseline_p99_ms": 0.289, "mean_ratio": 1.0, "p": 1.0, "cles": 0.5}


@pytest.mark.parametrize(("baseline", "canary"), [
    pytest.param({40: 5}, {60: 5}, id="one-bucket-each"),
    pytest.param({40: 5, 60: 5}, {40: 1, 60: 9}, id="the-same-buckets"),
])
def test_arms_in_different_buckets_or_several_are_tested(baseline: dict[int, int], canary: dict[int, int]) -> None:
    latency = judge(Arm(requests=10, latency=baseline), Arm(requests=10, latency=canary), Thresholds()).metrics[1]
    assert latency.figures["p"] < 0.05 and "u" in latency.figures
    assert latency.classification == "high"


def test_small_arms_without_ties_get_the_asymptotic_one_sided_u_test() -> None:
    """scipy's default for samples this small is the exact test (p 0.35); two-sided, p doubles."""
    latency = judge(Arm(requests=3, latency={29: 1, 31: 1, 33: 1}), Arm(requests=3, latency={30: 1, 32: 1, 34: 1}),
                    Thresholds()).metrics[1]
    assert (latency.figures["p"], latency.figures["u"], latency.figures["cles"]) == (0.3313, 6.0, 0.6667)


def test_an_arm_without_latencies_has_mean_and_quantiles_0() -> None:
    assert (Arm().mean(), Arm().quantile(0.5), Arm().quantile(0.99)) == (0.0, 0.0, 0.0)
    assert (bucket(0.0), bucket(0.00005)) == (0, 0)


def test_a_tally_of_statuses_and_latencies_of_different_lengths_is_refused() -> None:
    with pytest.raises(ValueError, match="zip"):
        Arm.of([200, 200], [0.01])


# The file's checks (gateway/migration/rollout_spec.py), through gateway.toml as a user writes it.
RULE = '[apps]\nold = "m:a"\nnew = "m:b"\n[[route]]\nrule = "/cart"\napp = "old"\ncanary = { app = "new" }\n'


def rollout_of(table: str) -> RolloutSpec | None:
    return parse_gateway_file(RULE + "[route.rollout]\n" + table).routes[0].rollout


def test_a_rollout_without_its_optional_keys_takes_the_defaults() -> None:
    assert rollout_of("steps = [10, 100]\n") == RolloutSpec(steps=(10.0, 100.0), interval=300.0, requests=200,
                                                            handover=False, judge=Thresholds())


def test_every_judge_threshold_is_read_into_its_own_field() -> None:
    spec = rollout_of("steps = [10]\n[route.rollout.judge]\npass = 90\nmarginal = 60\nerrors = 2.5\nlatency = 1.5\n"
                      'alpha = 0.01\nequality = 99\ncritical = ["latency", "equality", "latency"]\n')
    assert spec is not None and spec.judge == Thresholds(passing=90, marginal=60, errors=2.5, latency=1.5, alpha=0.01,
                                                         equality=99, critical=("latency", "equality"))


@pytest.mark.parametrize("table", [
    pytest.param("steps = [0.5, 100]\ninterval = 0\nrequests = 1\n", id="interval-0-requests-1"),
    pytest.param("steps = [100]\ninterval = 604800\nrequests = 10000000\n", id="a-week-ten-million"),
    pytest.param("steps = [10]\n[route.rollout.judge]\npass = 0\nmarginal = 0\nerrors = 0\nequality = 0\n"
                 "latency = 1\n", id="judge-lows"),
    pytest.param("steps = [10]\n[route.rollout.judge]\npass = 100\nmarginal = 100\nerrors = 100\nequality = 100\n"
                 "latency = 1000\nalpha = 0.5\n", id="judge-highs-and-marginal-equal-to-pass"),
])
def test_the_bounds_of_each_value_are_allowed(table: str) -> None:
    assert rollout_of(table) is not None


STEPS = ("gateway.toml, line 4: rollout steps must be rising per cents of clients, above 0 and at most 100, "
         "e.g. steps = [1, 5, 25, 50, 100].")
INTERVAL = ("gateway.toml, line 4: rollout interval must be the seconds each step lasts at least, from 0 to at most "
            "a week (604800), e.g. interval = 300.")
REQUESTS = ("gateway.toml, line 4: rollout requests must be a whole number of requests each arm gets before a step "
            "is judged, from 1, e.g. requests = 200.")


@pytest.mark.parametrize(("table", "message"), [
    pytest.param("steps = 5\n", STEPS, id="steps-a-number"),
    pytest.param("steps = [10, 100.5]\n", STEPS, id="step-above-100"),
    pytest.param("steps = [5, 5]\n", STEPS, id="steps-equal"),
    pytest.param("steps = [10]\ninterval = 604801\n", INTERVAL, id="interval-above-a-week"),
    pytest.param("steps = [10]\ninterval = -1\n", INTERVAL, id="interval-negative"),
    pytest.param("steps = [10]\nrequests = true\n", REQUESTS, id="requests-true"),
    pytest.param("steps = [10]\nrequests = 10000001\n", REQUESTS, id="requests-above-ten-million"),
    pytest.param("steps = [10]\njudge = 5\n", "gateway.toml, line 4: rollout judge must be a table: "
                 "[route.rollout.judge] with pass = 95, marginal = 75.", id="judge-not-a-table"),
    pytest.param("steps = [10]\n[route.rollout.judge]\npass = 101\n", "gateway.toml, line 4: rollout judge pass "
                 "must be a number from 0 to 100, e.g. pass = 95.", id="pass-above-100"),
    pytest.param("steps = [10]\n[route.rollout.judge]\nmarginal = 101\n", "gateway.toml, line 4: rollout judge "
                 "marginal must be a number from 0 to 100, e.g. marginal = 75.", id="marginal-above-100"),
    pytest.param("steps = [10]\n[route.rollout.judge]\nerrors = 101\n", "gateway.toml, line 4: rollout judge "
                 "errors must be a number from 0 to 100, e.g. errors = 1.", id="errors-above-100"),
    pytest.param("steps = [10]\n[route.rollout.judge]\nequality = 101\n", "gateway.toml, line 4: rollout judge "
                 "equality must be a number from 0 to 100, e.g. equality = 95.", id="equality-above-100"),
])
def test_a_value_past_its_bound_is_refused_in_one_line(table: str, message: str) -> None:
    with pytest.raises(ConfigFileError) as caught:
        rollout_of(table)
    assert str(caught.value) == message
