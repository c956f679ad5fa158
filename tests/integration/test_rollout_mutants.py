"""What the rollout modules' mutation runs found no test for (docs/testing.md): the judge's
exact figures and boundaries, the file's checks, the state and audit rows a step leaves in
the database, and the migration page's section."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from gateway.migration import rollout, rollout_page, rollout_store
from gateway.migration.judge import FAIL, MARGINAL, PASS, Arm, bucket, judge
from gateway.migration.rollout import Rollouts, Visits, _inherited, act
from gateway.migration.rollout_spec import RolloutSpec, Thresholds
from gateway.migration.rollout_store import CANARY as CANARY_ARM
from gateway.migration.rollout_store import DONE, ROLLED_BACK, RUNNING, Audit, State, Store, database_url
from gateway.migration.rules import ConfigFileError, RouteSpec, parse_gateway_file

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


# The rollouts of one instance (gateway/migration/rollout.py), polled by the test itself
# rather than by their thread: each step is one call, and the database's rows are read back.
def cart_rule(steps: str = "[10, 50, 100]", requests: int = 30, handover: bool = True, judge: str = "",
              interval: float = 0) -> RouteSpec:
    return parse_gateway_file(
        '[apps]\nold = "m:a"\nnew = "m:b"\n[[route]]\nrule = "/cart"\napp = "old"\ncanary = { app = "new" }\n'
        f"[route.rollout]\nsteps = {steps}\ninterval = {interval}\nrequests = {requests}\n"
        f"handover = {'true' if handover else 'false'}\n" + (f"[route.rollout.judge]\n{judge}\n" if judge else "")
    ).routes[0]


@pytest.fixture
def polled(tmp_path: Path) -> Iterator[Callable[..., Rollouts]]:
    made: list[Rollouts] = []

    def make(spec: RouteSpec, url: str = "") -> Rollouts:
        made.append(Rollouts([spec], url or database_url(tmp_path, {})))
        return made[-1]

    yield make
    for rollouts in made:
        rollouts.stop()


def answer(rollouts: Rollouts, spec: RouteSpec, n: int, *, canary_error_every: int = 0, added: float = 0.0) -> None:
    for i in range(n):
        took = 0.020 + (i % 11) / 1000
        if rollouts.share(spec) < 100:
            rollouts.record(spec.key, 200, took)
        rollouts.record(spec.canary_key, 500 if canary_error_every and i % canary_error_every == 0 else 200,
                        took + added)


def trail(url: str, key: str) -> list[tuple[str, str, float | None, float | None]]:
    with Store(url) as store:
        return [(a.actor, a.action, a.from_share, a.to_share) for a in store.audit(key)]


def test_a_step_moves_once_both_arms_have_their_requests_and_logs_why(polled, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    spec = cart_rule(handover=False)
    url = database_url(tmp_path, {})
    one = polled(spec)
    assert (one.share(spec), one.owner(spec)) == (0.0, None)  # nothing begun before the first poll
    one.poll()
    answer(one, spec, 29)
    one.poll()
    assert one.share(spec) == 10  # 29 answers an arm: not judged yet
    answer(one, spec, 1)
    with caplog.at_level(logging.INFO, logger="gateway"):
        one.poll()
    assert one.share(spec) == 50
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "Rollout of /cart: promote to 50%: " + Store(url).audit(spec.key)[-1].reason]
    assert Store(url).audit(spec.key)[-1].reason.startswith("pass (score 100): errors: 5xx 0% against 0%")
    answer(one, spec, 30)
    one.poll()
    answer(one, spec, 30)  # at 100%: the canary alone, judged against the step at 50%'s baseline
    one.poll()
    state = Store(url).states()[spec.key]
    assert (state.status, state.step, state.share, state.owner) == (DONE, 2, 100, None)  # no hand-over
    assert one.owner(spec) is None
    assert trail(url, spec.key) == [("judge", "start", None, 10), ("judge", "promote", 10, 50),
                                    ("judge", "promote", 50, 100), ("judge", "done", 100, 100)]
    figures = Store(url).audit(spec.key)[-1].figures
    assert (figures["step"], figures["share"], figures["metrics"]["errors"]["baseline_requests"]) == (2, 100, 30)


def test_a_hand_over_names_the_canarys_app_the_rules(polled, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    spec = cart_rule(steps="[50]")
    one = polled(spec)
    one.poll()
    answer(one, spec, 30)
    one.poll()
    assert (one.owner(spec), one.share(spec), one.states[spec.key].status) == ("new", 100, DONE)


def test_a_pass_waits_for_the_interval_and_a_fail_does_not(polled, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    spec = cart_rule(interval=3600)
    url = database_url(tmp_path, {})
    one = polled(spec)
    one.poll()
    answer(one, spec, 40)
    one.poll()
    assert one.share(spec) == 10 and trail(url, spec.key) == [("judge", "start", None, 10)]
    answer(one, spec, 40, canary_error_every=5)
    one.poll()
    state = Store(url).states()[spec.key]
    assert (state.status, state.step, state.share, one.share(spec)) == (ROLLED_BACK, -1, 0, 0)
    assert trail(url, spec.key)[-1] == ("judge", "rollback", 10, 0)
    answer(one, spec, 40, canary_error_every=5)  # rolled back: nothing counted, nothing judged
    one.poll()
    assert len(trail(url, spec.key)) == 2


def test_a_marginal_step_is_noted_once_and_holds(polled, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    spec = cart_rule(judge="marginal = 50")
    url = database_url(tmp_path, {})
    one = polled(spec)
    one.poll()
    answer(one, spec, 100, added=0.020)
    one.poll()
    answer(one, spec, 10, added=0.020)
    one.poll()
    assert trail(url, spec.key) == [("judge", "start", None, 10), ("judge", "hold", 10, 10)]
    held = Store(url).audit(spec.key)[-1]
    assert held.reason.startswith("marginal (score 50): ") and (held.figures["step"], held.figures["share"]) == (0, 10)


def test_the_metrics_hear_each_share_and_each_counted_answer(polled) -> None:  # type: ignore[no-untyped-def]
    spec = cart_rule()
    one = polled(spec)
    one.poll()
    heard: list[tuple[str, str, tuple[str, ...]]] = []
    one.listen(lambda *event: heard.append(event))
    one.record(spec.canary_key, 503, 0.01)
    one.record(spec.key, 0, 0.01)  # the client left before an answer: not counted
    assert heard == [("rollout_share", spec.key, ("10",)), ("rollout", spec.key, ("canary", "10", "5xx"))]


def test_a_command_on_a_rule_not_begun_begins_it_first(tmp_path: Path) -> None:
    spec = cart_rule()
    url = database_url(tmp_path, {})
    with Store(url) as store:
        moved = act(store, spec, "promote", actor="alice", reason="")
        assert (moved.status, moved.step, moved.share) == (RUNNING, 1, 50)
        with pytest.raises(ValueError) as refused:
            act(store, spec, "resume", actor="alice", reason="")
        assert str(refused.value) == "the rollout is running: only a paused or rolled back one resumes"
        with pytest.raises(ValueError) as refused:
            act(store, spec, "restart", actor="alice", reason="")
        assert str(refused.value) == "'restart' is not a rollout command: use pause, resume, promote or rollback"
        act(store, spec, "promote", actor="alice", reason="")
        done = act(store, spec, "promote", actor="alice", reason="")
        assert (done.status, done.step, done.share, done.owner) == (DONE, 2, 100, "new")
        with pytest.raises(ValueError) as refused:
            act(store, spec, "promote", actor="alice", reason="")
        assert str(refused.value) == "the rollout is done already"
    assert trail(url, spec.key) == [("alice", "start", None, 10), ("alice", "promote", 10, 50),
                                    ("alice", "promote", 50, 100), ("alice", "done", 100, 100)]


def test_a_database_out_of_reach_freezes_and_says_so_once_then_resumes(polled, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "data"
    blocker.write_text("a file where the database's folder should be")
    spec = cart_rule()
    with caplog.at_level(logging.WARNING, logger="gateway"):
        one = polled(spec, f"sqlite:///{blocker}/rollouts.sqlite3")
        one.poll()
        assert one.frozen is not None and not one.judging and one.share(spec) == 0
        blocker.unlink()
        one.poll()
    assert one.frozen is None and one.share(spec) == 10
    assert [r.getMessage() for r in caplog.records] == [
        f"Rollouts frozen where they are: the database ({blocker}/rollouts.sqlite3) cannot be reached: "
        f"[Errno 17] File exists: '{blocker}'",
        f"Rollouts resume: the database ({blocker}/rollouts.sqlite3) answers again."]


def test_a_forked_worker_polls_on_a_connection_of_its_own(polled) -> None:  # type: ignore[no-untyped-def]
    """What os.register_at_fork runs in the child: the parent's connection is kept, never closed."""
    spec = cart_rule()
    one = polled(spec)
    one.poll()
    parents, instance = one.store, one.instance
    one.start()
    thread = one.thread
    one._forked()
    assert one.store is not parents and one.store.url == parents.url and one.instance != instance
    assert one.instance.split(":")[:2] == instance.split(":")[:2]  # the same host and process id here
    assert _inherited[-1] is parents.conn is not None
    assert one.thread is not thread and one.thread is not None and one.thread.is_alive()
    one.poll()
    assert one.share(spec) == 10
    parents.close()


def test_visits_count_each_path_a_minute_up_to_a_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [600.0]
    monkeypatch.setattr(rollout, "time", SimpleNamespace(time=lambda: clock[0]))
    visits = Visits()
    visits.PATHS = 2
    for path in ("/a", "/b", "/a", "/c", "/d", "x" * 301, "/b"):
        visits.add("old", "GET", path)
    visits.add("old", "GET", "y" * 300)
    assert visits.counts == {(10, "old", "GET", "/a"): 2, (10, "old", "GET", "/b"): 2, (10, "old", "GET", "*"): 4}
    clock[0] = 660.0  # the next minute: two paths of its own again
    visits.add("old", "GET", "/c")
    visits.add("new", "POST", "y" * 300)
    visits.add("new", "GET", "/e")
    assert {k: n for k, n in visits.counts.items() if k[0] == 11} == {
        (11, "old", "GET", "/c"): 1, (11, "new", "POST", "y" * 300): 1, (11, "new", "GET", "*"): 1}


# The migration page's section (gateway/migration/rollout_page.py), on lines of a trail made here.
T = 1764979200.0  # 2025-12-06 00:00:00 UTC
TRAIL = [Audit(at=T, rule="r", actor="judge", action="start", from_share=None, to_share=10, reason="begins",
               figures={}),
         Audit(at=T + 100, rule="r", actor="judge", action="hold", from_share=10, to_share=10, reason="slow <b>",
               figures={"outcome": "marginal", "score": 60.0}),
         Audit(at=T + 200, rule="r", actor="bob", action="rollback", from_share=10, to_share=0, reason="bad",
               figures={}),
         Audit(at=T + 300, rule="r", actor="x", action="note", from_share=None, to_share=None, reason="n", figures={})]


def test_the_timeline_steps_through_each_share_to_now_with_a_mark_per_change() -> None:
    # x: 30 px at the first line, 440 px for the 400 s to now; y: 70 px at 0%, 60 px for 100%.
    assert rollout_page.timeline(TRAIL, T + 400) == (
        '<svg role="img" aria-label="canary share over time" width="480" height="90" viewBox="0 0 480 90">'
        '<polyline fill="none" stroke="#4a7" stroke-width="2" points="30.0,70.0 30.0,64.0 140.0,64.0 140.0,64.0 '
        '250.0,64.0 250.0,70.0 470.0,70.0"/>'
        '<circle cx="30.0" cy="64.0" r="3" fill="#4a7"><title>2025-12-06 00:00:00 judge start 10%</title></circle>'
        '<circle cx="140.0" cy="64.0" r="3" fill="#c90"><title>2025-12-06 00:01:40 judge hold 10%</title></circle>'
        '<circle cx="250.0" cy="70.0" r="3" fill="#c33"><title>2025-12-06 00:03:20 bob rollback 0%</title></circle>'
        '<text x="0" y="14" font-size="10">100%</text><text x="8" y="74" font-size="10">0%</text>'
        '<text x="30" y="88" font-size="10">2025-12-06 00:00:00</text>'
        '<text x="470" y="88" font-size="10" text-anchor="end">now</text></svg>')
    assert rollout_page.timeline(TRAIL[3:], T) == ""  # no line that sets a share


def test_the_audit_table_lists_the_newest_first_with_the_judges_outcome() -> None:
    assert rollout_page.audit_table(TRAIL) == (
        "<table><thead><tr><th>When</th><th>Who</th><th>What</th><th>Share</th><th>Why</th></tr></thead><tbody>"
        "<tr><td>2025-12-06 00:05:00</td><td>x</td><td>note</td><td></td><td>n</td></tr>"
        "<tr><td>2025-12-06 00:03:20</td><td>bob</td><td>rollback</td><td>10% &rarr; 0%</td><td>bad</td></tr>"
        "<tr><td>2025-12-06 00:01:40</td><td>judge</td><td>hold</td><td>10% &rarr; 10%</td>"
        "<td>slow &lt;b&gt; <strong>marginal</strong>, score 60.0</td></tr>"
        "<tr><td>2025-12-06 00:00:00</td><td>judge</td><td>start</td><td>10%</td><td>begins</td></tr></tbody></table>")


def test_the_arm_table_gives_each_arms_figures_and_the_shadows_equality() -> None:
    canary = Arm(requests=3, errors=1, latency={100: 2, 110: 1})  # 3.9 ms twice, 6.0 ms once
    head = ("<table><thead><tr><th>Arm, this step</th><th>Requests</th><th>5xx</th><th>Median / p99</th>"
            "<th>Latency</th></tr></thead><tbody><tr><td>baseline</td><td>0</td><td>-</td><td>-</td><td></td></tr>")
    assert rollout_page.arm_table({CANARY_ARM: canary}, (2, 3)) == (
        head + "<tr><td>canary</td><td>3</td><td>33.33%</td><td>3.9 / 6.0 ms</td><td>"
        '<svg role="img" aria-label="latency distribution" width="160" height="24" viewBox="0 0 160 24">'
        '<rect x="0.0" y="0.0" width="14.0" height="24.0"/><rect x="145.5" y="12.0" width="14.0" height="12.0"/>'
        "</svg></td></tr></tbody></table><p>Shadow: 2 of 3 comparisons equal on this step (66.7%).</p>")
    assert rollout_page.arm_table({}, (0, 0)).endswith(
        "<tr><td>canary</td><td>0</td><td>-</td><td>-</td><td></td></tr></tbody></table>"
        "<p>Shadow: 0 of 0 comparisons equal on this step.</p>")
    assert rollout_page.arm_table({}, None).endswith("</tbody></table>")
    slow = rollout_page.arm_table({"baseline": Arm(requests=2, latency={200: 1, 210: 1})}, None)
    assert "<td>baseline</td><td>2</td><td>0.00%</td><td>296.0 / 456.5 ms</td>" in slow  # to a tenth of a ms


def test_a_histograms_bars_are_as_tall_as_their_share_of_the_tallest() -> None:
    assert rollout_page.histogram(Arm(requests=4, latency={10: 1, 12: 3})) == (
        '<svg role="img" aria-label="latency distribution" width="160" height="24" viewBox="0 0 160 24">'
        '<rect x="0.0" y="16.0" width="52.8" height="8.0"/><rect x="106.7" y="0.0" width="52.8" height="24.0"/></svg>')
    assert rollout_page.histogram(Arm()) == ""


def test_the_section_says_a_rollout_not_begun_and_one_handed_over(tmp_path: Path) -> None:
    from gateway.migration.rules import RouteTable

    url = database_url(tmp_path, {})
    spec = cart_rule(steps="[50]")
    routes = RouteTable([spec], rollout_database=url)
    assert routes.rollouts is not None
    try:
        assert rollout_page.section(routes, T) == "<h2>Rollouts</h2><h3><code>/cart</code></h3><p>Not started yet.</p>"
        with Store(url) as store:
            act(store, spec, "promote", actor="alice", reason="")
        shown = rollout_page.section(routes, T)
    finally:
        routes.rollouts.stop()
    assert shown.startswith("<h2>Rollouts</h2><h3><code>/cart</code>: done, canary new at 100%, handed over to new"
                            "</h3><svg ")
    assert "<p>Shadow:" not in shown  # the rule does not shadow
    assert rollout_page.section(None) == "" and rollout_page.section(RouteTable([cart_rule()]), T) == ""


# The site's database (gateway/migration/rollout_store.py), on SQLite.
def test_the_database_is_named_without_its_password_and_made_private(tmp_path: Path) -> None:
    assert Store("postgres://u:secret@db.example/site").where == "PostgreSQL at db.example:5432/site"
    assert Store("postgresql://u:secret@db.example:6543/site").where == "PostgreSQL at db.example:6543/site"
    store = Store(f"sqlite:///{tmp_path}/new/deeper/rollouts.sqlite3?mode=rwc")
    assert store.where == f"{tmp_path}/new/deeper/rollouts.sqlite3?mode=rwc"
    with store:
        conn = store.connect()
        assert store.connect() is conn  # one connection, kept
    assert (tmp_path / "new" / "deeper" / "rollouts.sqlite3").is_file()
    assert (tmp_path / "new" / "deeper").stat().st_mode & 0o777 == 0o700
    assert store.conn is None
    with pytest.raises(sqlite3.ProgrammingError):  # closed
        conn.execute("SELECT 1")


@pytest.mark.parametrize("url", ["PostgreSQL://u@db/site", " pgsql://u@db/site ", "sqlite:////srv/site.sqlite3",
                                 "sqlite:////srv/a:b.sqlite3"])
def test_a_database_url_naming_postgresql_or_sqlite_is_the_sites(url: str, tmp_path: Path) -> None:
    assert database_url(tmp_path, {"DATABASE_URL": url}) == url.strip()


def test_one_instance_holds_the_judges_lease_until_it_lapses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(rollout_store, "time", SimpleNamespace(time=lambda: clock[0]))
    with Store(database_url(tmp_path, {})) as store:
        assert store.elect("a") and not store.elect("b")
        clock[0] += rollout_store.LEASE  # renewed by its holder only
        assert store.elect("a") and not store.elect("b")
        clock[0] += rollout_store.LEASE + 0.001
        assert store.elect("b") and not store.elect("a")


def test_tallies_add_every_instances_counts_and_replace_an_instances_own(tmp_path: Path) -> None:
    with Store(database_url(tmp_path, {})) as store:
        store.write_tally("r", 2, "one", "baseline", Arm(requests=9, errors=9, latency={5: 9}), 9, 9)
        store.write_tally("r", 2, "one", "baseline", Arm(requests=3, errors=1, latency={5: 2, 7: 1}), 2, 3)
        store.write_tally("r", 2, "two", "baseline", Arm(requests=2, latency={5: 1, 6: 1}), 1, 1)
        store.write_tally("r", 2, "two", "canary", Arm(requests=1, latency={9: 1}))
        store.write_tally("r", 3, "two", "canary", Arm(requests=5, latency={9: 5}))
        store.write_tally("other", 2, "two", "canary", Arm(requests=5, latency={9: 5}))
        assert store.tallies("r", 2) == ({"baseline": Arm(requests=5, errors=1, latency={5: 3, 6: 1, 7: 1}),
                                          "canary": Arm(requests=1, latency={9: 1})}, (3, 4))
        assert store.last_baseline("r", 4) == Arm(requests=5, errors=1, latency={5: 3, 6: 1, 7: 1})  # epoch 3 has none
        assert store.last_baseline("r", 2) == Arm()


def test_a_change_applies_only_to_the_epoch_it_read_and_audits_it(tmp_path: Path) -> None:
    with Store(database_url(tmp_path, {})) as store:
        assert store.begin("r", 10.0, "judge") and not store.begin("r", 50.0, "judge")
        state = store.states()["r"]
        moved = store.change(state, actor="bob", action="promote", reason="ok", figures={"b": 1, "a": 2},
                             status=RUNNING, step=1, share=50.0)
        assert moved is not None and (moved.epoch, moved.step, moved.share, moved.owner) == (2, 1, 50.0, None)
        assert store.states() == {"r": moved}
        assert store.change(state, actor="eve", action="rollback", reason="", figures={}, status=ROLLED_BACK,
                            step=-1, share=0.0) is None  # epoch 1 is gone
        store.note("r", "judge", "hold", 50.0, "marginal", {})
        store.begin("s", 1.0, "judge")
        assert [(a.rule, a.actor, a.action, a.from_share, a.to_share, a.reason, a.figures)
                for a in store.audit("r")] == [
            ("r", "judge", "start", None, 10.0, "the rule's rollout begins at its first step", {}),
            ("r", "bob", "promote", 10.0, 50.0, "ok", {"a": 2, "b": 1}),
            ("r", "judge", "hold", 50.0, 50.0, "marginal", {})]
        assert [(a.rule, a.action) for a in store.audit(last=2)] == [("r", "hold"), ("s", "start")]
        assert set(store.states(("s",))) == {"s"}


def test_a_transaction_that_raises_leaves_nothing(tmp_path: Path) -> None:
    with Store(database_url(tmp_path, {})) as store:
        with pytest.raises(KeyError), store.transaction():
            store.execute("INSERT INTO gateway_rollout_lease (name, holder, until) VALUES ('x', 'y', 1)")
            raise KeyError("x")
        assert store.execute("SELECT count(*) FROM gateway_rollout_lease").fetchone()[0] == 0


def test_visits_add_up_over_instances_and_the_oldest_minutes_go(tmp_path: Path) -> None:
    with Store(database_url(tmp_path, {})) as store:
        store.write_visits(10, "one", "old", "GET", "/a", 5)
        store.write_visits(10, "one", "old", "GET", "/a", 6)  # a whole count: replaced
        store.write_visits(11, "two", "old", "GET", "/a", 1)
        store.write_visits(9, "two", "old", "GET", "/b", 1)
        assert sorted(store.visits(10)) == [("old", "GET", "/a", 7)]
        store.forget_visits(10)
        assert sorted(store.visits(0)) == [("old", "GET", "/a", 7)]


def test_commands_pause_roll_back_and_resume_with_their_audit_lines(tmp_path: Path) -> None:
    spec = cart_rule(handover=False)
    url = database_url(tmp_path, {})
    with Store(url) as store:
        paused = act(store, spec, "pause", actor="bob", reason="")
        assert (paused.status, paused.step, paused.share) == ("paused", 0, 10)
        with pytest.raises(ValueError) as refused:
            act(store, spec, "pause", actor="bob", reason="")
        assert str(refused.value) == "the rollout is paused, not running: nothing to pause"
        back = act(store, spec, "rollback", actor="bob", reason="the cart is empty")
        assert (back.status, back.step, back.share) == (ROLLED_BACK, -1, 0)
        with pytest.raises(ValueError) as refused:
            act(store, spec, "rollback", actor="bob", reason="")
        assert str(refused.value) == "the rollout is rolled back already"
        again = act(store, spec, "resume", actor="carol", reason="")
        assert (again.status, again.step, again.share) == (RUNNING, 0, 10)
        act(store, spec, "promote", actor="carol", reason="")
        act(store, spec, "promote", actor="carol", reason="")
        done = act(store, spec, "promote", actor="carol", reason="")
        assert (done.status, done.step, done.share, done.owner) == (DONE, 2, 100, None)  # no hand-over
        assert [(a.actor, a.action, a.from_share, a.to_share, a.reason, a.figures) for a in store.audit(spec.key)] == [
            ("bob", "start", None, 10, "the rule's rollout begins at its first step", {}),
            ("bob", "pause", 10, 10, "pause by bob", {}),
            ("bob", "rollback", 10, 0, "the cart is empty (rollback by bob)", {}),
            ("carol", "resume", 0, 10, "resume by carol", {}),
            ("carol", "promote", 10, 50, "promote by carol", {}),
            ("carol", "promote", 50, 100, "promote by carol", {}),
            ("carol", "done", 100, 100, "promote by carol", {})]


class StaleStore(Store):
    """A command's store that reads the states as they were before another's change."""

    def __init__(self, url: str, seen: dict[str, State]) -> None:
        super().__init__(url)
        self.seen = seen

    def states(self, rules: tuple[str, ...] | None = None) -> dict[str, State]:
        return dict(self.seen)


def test_a_command_that_races_another_says_to_run_it_again(tmp_path: Path) -> None:
    spec = cart_rule()
    url = database_url(tmp_path, {})
    with Store(url) as store:
        store.begin(spec.key, 10.0, "judge")
        first = store.states()
        act(store, spec, "promote", actor="alice", reason="")
    for seen, message in (({}, "the rollout changed meanwhile: try again"),
                          (first, "the rollout changed meanwhile: run the command again")):
        with StaleStore(url, seen) as stale, pytest.raises(ValueError) as refused:
            act(stale, spec, "promote", actor="bob", reason="")
        assert str(refused.value) == message
    assert [a.actor for a in Store(url).audit(spec.key)] == ["judge", "alice"]


def test_the_polling_thread_is_a_named_daemon_that_applies_each_step(polled,  # type: ignore[no-untyped-def]
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    spec = cart_rule()
    one = polled(spec)
    caplog.set_level(logging.WARNING, logger="gateway")
    one.start()
    assert one.thread is not None and (one.thread.name, one.thread.daemon) == ("gateway-rollouts", True)
    with Store(one.url) as store:
        store.begin(spec.key, 10.0, "judge")
        act(store, spec, "promote", actor="alice", reason="")
    deadline = time.monotonic() + 10
    while one.share(spec) != 50 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert one.share(spec) == 50
    assert caplog.records == []  # the thread polls on the connection opened before it (no freeze)
    idle = polled(parse_gateway_file('[apps]\nold = "m:a"\n[[route]]\nrule = "/cart"\napp = "old"\n').routes[0])
    idle.start()
    assert idle.thread is None  # no rule has a rollout: nothing to poll


def test_the_shadows_comparisons_count_from_the_step_on_for_a_rule_that_shadows(tmp_path: Path) -> None:
    compared = {"equal": 5, "noise": 2, "compared": 10}
    shadowing = parse_gateway_file(
        '[apps]\nold = "m:a"\nnew = "m:b"\n[[route]]\nrule = "/cart"\napp = "old"\ncanary = { app = "new" }\n'
        'shadow = { app = "new" }\n[route.rollout]\nsteps = [10, 50]\nrequests = 30\n').routes[0]
    url = database_url(tmp_path, {})
    made = [(Rollouts([spec], database_url(tmp_path / name, {}) if name else url, lambda rule: dict(compared)), spec)
            for name, spec in (("", shadowing), ("plain", cart_rule()))]
    try:
        for rollouts, spec in made:
            rollouts.poll()
            answer(rollouts, spec, 5)
        compared.update(equal=8, noise=3, compared=20)  # since the step began: 3 + 1 of 10
        for rollouts, _ in made:
            rollouts.poll()
        with Store(url) as store:
            assert store.tallies(shadowing.key, 1)[1] == (4, 10)
        with Store(made[1][0].url) as store:
            assert store.tallies(cart_rule().key, 1)[1] == (0, 0)  # no shadow: none counted
    finally:
        for rollouts, _ in made:
            rollouts.stop()


def test_a_rollout_that_ends_below_100_without_hand_over_keeps_its_share(polled, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    spec = cart_rule(steps="[10, 50]", handover=False)
    url = database_url(tmp_path, {})
    one = polled(spec)
    assert not one.judging  # the first read, before serving, judges nothing
    for _ in range(2):
        one.poll()
        answer(one, spec, 30)
        one.poll()
    state = Store(url).states()[spec.key]
    assert (state.status, state.step, state.share, state.owner) == (DONE, 1, 50, None)
    promote, done = Store(url).audit(spec.key)[-2:]
    assert (promote.figures["step"], promote.figures["share"], done.figures["step"]) == (0, 10, 1)
    assert set(promote.figures["metrics"]) == {"errors", "latency"}  # no shadow: no equality
    with Store(url) as store:
        baseline = store.tallies(spec.key, 2)[0]["baseline"]
    assert (baseline.requests, sum(baseline.latency.values())) == (30, 30)
    assert baseline.latency == Arm.of([200] * 30, [0.020 + (i % 11) / 1000 for i in range(30)]).latency


def test_each_change_seen_is_logged_and_heard_and_another_rules_counts_stay(polled, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                            caplog: pytest.LogCaptureFixture) -> None:
    text = ('[apps]\nold = "m:a"\nnew = "m:b"\n[[route]]\nrule = "/a"\napp = "old"\ncanary = { app = "new" }\n'
            "[route.rollout]\nsteps = [10, 50]\nrequests = 30\n"
            '[[route]]\nrule = "/b"\napp = "old"\ncanary = { app = "new" }\n[route.rollout]\nsteps = [20, 60]\n')
    first, second = parse_gateway_file(text).routes
    url = database_url(tmp_path, {})
    with Store(url) as store:
        store.begin("a rule no instance here serves", 5.0, "judge")
    one = Rollouts([first, second], url)
    heard: list[tuple[str, str, tuple[str, ...]]] = []
    try:
        with caplog.at_level(logging.INFO, logger="gateway"):
            one.poll()
            one.listen(lambda *event: heard.append(event))
            for _ in range(5):
                one.record(second.key, 200, 0.01)
                one.record(first.key, 200, 0.01)
            one.poll()
            with Store(url) as store:
                act(store, second, "promote", actor="alice", reason="")
            one.record(second.key, 200, 0.01)  # still counted on the step it saw
            one.poll()
            one.record(first.key, 200, 0.01)  # the first rule's step did not move: its counts go on
            one.poll()
        assert one.frozen is None and (one.share(first), one.share(second)) == (10, 60)
        assert [r.getMessage() for r in caplog.records] == ["Rollout of /b: running, canary at 60% of clients."]
        assert ("rollout_share", second.key, ("60",)) in heard
        assert ("rollout_share", first.key, ("10",)) not in heard[2:]  # unchanged: not heard again
        with Store(url) as store:
            assert store.tallies(second.key, 1)[0]["baseline"].requests == 6
            assert store.tallies(first.key, 1)[0]["baseline"].requests == 6
    finally:
        one.stop()


def test_a_paused_step_is_not_judged_even_with_another_instances_counts(polled, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    spec = cart_rule()
    url = database_url(tmp_path, {})
    one = polled(spec)
    one.poll()
    with Store(url) as store:
        paused = act(store, spec, "pause", actor="bob", reason="")
        failing = Arm.of([500] * 40, [0.02] * 40)
        store.write_tally(spec.key, paused.epoch, "another", "baseline", Arm.of([200] * 40, [0.02] * 40))
        store.write_tally(spec.key, paused.epoch, "another", "canary", failing)
    one.poll()
    assert one.judging and Store(url).states()[spec.key].status == "paused"


def test_a_driver_error_freezes_with_its_first_line_or_its_type(polled, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    spec = cart_rule()
    one = polled(spec)
    errors = [RuntimeError("server closed the connection\nDETAIL: unexpectedly"), RuntimeError()]

    def fails(*args: object) -> None:
        raise errors[0]

    one.store.states = fails
    with caplog.at_level(logging.WARNING, logger="gateway"):
        one.poll()
        assert one.frozen == "server closed the connection\nDETAIL: unexpectedly"
        errors.pop(0)
        one.poll()
    assert one.frozen == "RuntimeError" and not one.judging
    assert [r.getMessage() for r in caplog.records] == [
        f"Rollouts frozen where they are: the database ({one.store.where}) cannot be reached: "
        "server closed the connection"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gateway"):
        one2 = polled(spec, "sqlite:////proc/no/such/place.sqlite3")
        assert len(caplog.records) == 1  # said once, at the first failure
        one2.poll()
        assert len(caplog.records) == 1


def test_the_canarys_visits_count_for_its_app_and_a_stopped_thread_is_done(polled) -> None:  # type: ignore[no-untyped-def]
    spec = cart_rule()
    one = polled(spec)
    one.record(spec.canary_key, 200, 0.01, "POST", "/cart")
    one.record(spec.key, 200, 0.01, "GET", "/cart")
    one.record(spec.key, 200, 0.01)  # no path: not a visit
    assert sorted((app, method, path, n) for (_, app, method, path), n in one.visits.counts.items()) == [
        ("new", "POST", "/cart", 1), ("old", "GET", "/cart", 1)]
    one.start()
    thread = one.thread
    one.stop()
    assert thread is not None and not thread.is_alive()


def test_visits_of_minutes_gone_once_written_leave_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [30.0]  # minute 0: the first minute counts its paths too
    monkeypatch.setattr(rollout, "time", SimpleNamespace(time=lambda: clock[0]))
    visits = Visits()
    visits.PATHS = 1
    visits.add("old", "GET", "/a")
    visits.add("old", "GET", "/b")
    assert visits.counts == {(0, "old", "GET", "/a"): 1, (0, "old", "GET", "*"): 1}
    for minute in (10, 11):
        clock[0] = minute * 60.0
        visits.add("old", "GET", "/a")
    assert visits.changed() == {(0, "old", "GET", "/a"): 1, (0, "old", "GET", "*"): 1, (10, "old", "GET", "/a"): 1,
                                (11, "old", "GET", "/a"): 1}
    visits.written.update(visits.changed())
    visits.add("old", "GET", "/a")
    assert visits.changed() == {(11, "old", "GET", "/a"): 2}
    clock[0] = 12 * 60.0
    visits.written.update(visits.changed())
    visits.add("old", "GET", "/a")
    assert visits.changed() == {(12, "old", "GET", "/a"): 1}
    assert sorted(visits.counts) == [(11, "old", "GET", "/a"), (12, "old", "GET", "/a")]  # the last minute kept


def test_the_shadows_equality_judges_a_rule_that_shadows_on_its_own_steps(tmp_path: Path) -> None:
    counts = {"equal": 0, "noise": 0, "compared": 0}
    spec = parse_gateway_file(
        '[apps]\nold = "m:a"\nnew = "m:b"\n[[route]]\nrule = "/cart"\napp = "old"\ncanary = { app = "new" }\n'
        'shadow = { app = "new" }\n[route.rollout]\nsteps = [10, 50]\nrequests = 30\n').routes[0]
    url = database_url(tmp_path, {})
    one = Rollouts([spec], url, lambda rule: dict(counts) if rule == spec.key else {})
    try:
        one.poll()
        for _ in range(30):
            one.record(spec.key, 200, 0.02)  # the baseline only: the shadow's counts go on its row
        counts.update(equal=8, noise=1, compared=10)
        one.poll()
        with Store(url) as store:
            assert store.tallies(spec.key, 1)[1] == (9, 10)
        answer(one, spec, 30)
        one.poll()  # 9 of 10 equal, below 95%: latency and errors pass, equality high: 66.67, fail
        last = Store(url).audit(spec.key)[-1]
        assert (last.action, last.figures["metrics"]["equality"]["rate"]) == ("rollback", 90.0)
        assert "equality: 9 of 10 comparisons equal" in last.reason
        with Store(url) as store:
            act(store, spec, "resume", actor="bob", reason="")
        one.poll()
        counts.update(equal=19, noise=1, compared=22)  # the resumed step's own: 11 of 12
        answer(one, spec, 30)
        one.poll()
        with Store(url) as store:
            assert store.tallies(spec.key, 3)[1] == (11, 12)
    finally:
        one.stop()


def test_a_rule_that_does_not_shadow_counts_no_comparisons(polled, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    counts = {"equal": 1, "noise": 0, "compared": 1}
    spec = cart_rule()
    url = database_url(tmp_path, {})
    one = Rollouts([spec], url, lambda rule: dict(counts))
    try:
        for n in range(3):
            answer(one, spec, 5)
            counts.update(equal=n + 2, compared=n + 2)
            one.poll()
        with Store(url) as store:
            assert store.tallies(spec.key, 1)[1] == (0, 0)
    finally:
        one.stop()


def test_a_first_failure_without_a_message_is_said_by_its_type(polled, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    spec = cart_rule()
    one = polled(spec)

    def fails(*args: object) -> None:
        raise RuntimeError()

    one.store.states = fails
    with caplog.at_level(logging.WARNING, logger="gateway"):
        one.poll()
    assert one.frozen == "RuntimeError"
    assert [r.getMessage() for r in caplog.records] == [
        f"Rollouts frozen where they are: the database ({one.store.where}) cannot be reached: RuntimeError"]


def test_a_promotion_past_a_last_step_below_100_without_hand_over_keeps_the_share(tmp_path: Path) -> None:
    spec = cart_rule(steps="[10, 50]", handover=False)
    with Store(database_url(tmp_path, {})) as store:
        act(store, spec, "promote", actor="alice", reason="")
        done = act(store, spec, "promote", actor="alice", reason="")
    assert (done.status, done.step, done.share, done.owner) == (DONE, 1, 50, None)
