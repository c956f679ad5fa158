"""A rule's rollout as gateway.toml writes it: read, and refused in one line naming the rule's line."""

from __future__ import annotations

import pytest

from gateway.migration.rollout_spec import RolloutSpec, Thresholds
from gateway.migration.rules import ConfigFileError, parse_gateway_file

HEAD = '[apps]\nold = "m:a"\nnew = "m:b"\n[[route]]\nrule = "/cart"\napp = "old"\n'
CANARY = 'canary = { app = "new" }\n'


def test_a_rollout_is_read_with_its_steps_and_judge() -> None:
    text = (HEAD + CANARY + "[route.rollout]\nsteps = [1, 5, 25, 50, 100]\ninterval = 60\nrequests = 50\n"
            'handover = true\n[route.rollout.judge]\npass = 90\nmarginal = 50\nlatency = 1.5\ncritical = ["errors", '
            '"latency"]\n')
    spec = parse_gateway_file(text).routes[0]
    assert spec.canary == "new" and spec.share == 0
    assert spec.rollout == RolloutSpec(steps=(1, 5, 25, 50, 100), interval=60, requests=50, handover=True,
                                       judge=Thresholds(passing=90, marginal=50, latency=1.5,
                                                        critical=("errors", "latency")))


def test_a_rule_without_a_rollout_keeps_its_fixed_share() -> None:
    spec = parse_gateway_file(HEAD + 'canary = { app = "new", share = 10 }\n').routes[0]
    assert (spec.share, spec.rollout) == (10, None)


def test_a_rule_may_shadow_the_app_its_rollout_judges() -> None:
    text = HEAD + CANARY + 'shadow = { app = "new" }\n[route.rollout]\nsteps = [50, 100]\n'
    spec = parse_gateway_file(text).routes[0]
    assert (spec.shadow, spec.canary, spec.rollout.steps) == ("new", "new", (50, 100))  # type: ignore[union-attr]


@pytest.mark.parametrize(("tail", "message"), [
    pytest.param("[route.rollout]\nsteps = [1, 5]\n",
                 'gateway.toml, line 4: a rollout moves a canary: add canary = { app = "new" } to the rule.',
                 id="no-canary"),
    pytest.param('canary = { app = "new", share = 5 }\n[route.rollout]\nsteps = [1, 5]\n',
                 "gateway.toml, line 4: a rule with a rollout takes its canary's share from the steps: leave share "
                 "out of canary.", id="share-too"),
    pytest.param(CANARY + "rollout = 5\n",
                 "gateway.toml, line 4: rollout must be a table: [route.rollout] with steps = [1, 5, 25, 50, 100].",
                 id="not-a-table"),
    pytest.param(CANARY + "[route.rollout]\nstep = [1]\n",
                 "gateway.toml, line 4: unknown key 'step' in [route.rollout]; use steps, interval, requests, "
                 "handover, judge.", id="unknown-key"),
    pytest.param(CANARY + "[route.rollout]\nsteps = [5, 1]\n",
                 "gateway.toml, line 4: rollout steps must be rising per cents of clients, above 0 and at most 100, "
                 "e.g. steps = [1, 5, 25, 50, 100].", id="falling-steps"),
    pytest.param(CANARY + "[route.rollout]\nsteps = [0, 100]\n",
                 "gateway.toml, line 4: rollout steps must be rising per cents of clients, above 0 and at most 100, "
                 "e.g. steps = [1, 5, 25, 50, 100].", id="zero-step"),
    pytest.param(CANARY + "[route.rollout]\nsteps = [10, 150]\n",
                 "gateway.toml, line 4: rollout steps must be rising per cents of clients, above 0 and at most 100, "
                 "e.g. steps = [1, 5, 25, 50, 100].", id="above-100"),
    pytest.param(CANARY + '[route.rollout]\nsteps = [10]\ninterval = "5m"\n',
                 "gateway.toml, line 4: rollout interval must be the seconds each step lasts at least, from 0 to "
                 "at most a week (604800), e.g. interval = 300.", id="interval-text"),
    pytest.param(CANARY + "[route.rollout]\nsteps = [10]\nrequests = 0\n",
                 "gateway.toml, line 4: rollout requests must be a whole number of requests each arm gets before a "
                 "step is judged, from 1, e.g. requests = 200.", id="no-requests"),
    pytest.param(CANARY + '[route.rollout]\nsteps = [10]\nhandover = "yes"\n',
                 "gateway.toml, line 4: rollout handover must be true or false (true: a passed last step makes the "
                 "canary's app the rule's).", id="handover-text"),
    pytest.param(CANARY + "[route.rollout]\nsteps = [10]\n[route.rollout.judge]\npass = 50\nmarginal = 60\n",
                 "gateway.toml, line 4: rollout judge marginal (60) is above pass (50): a step passes from pass, "
                 "holds from marginal, and fails below it.", id="marginal-above-pass"),
    pytest.param(CANARY + "[route.rollout]\nsteps = [10]\n[route.rollout.judge]\nlatency = 0.5\n",
                 "gateway.toml, line 4: rollout judge latency must be a number from 1 to 1000, e.g. latency = 1.2.",
                 id="latency-below-1"),
    pytest.param(CANARY + "[route.rollout]\nsteps = [10]\n[route.rollout.judge]\nalpha = 0\n",
                 "gateway.toml, line 4: rollout judge alpha must be a number from 0 to 0.5 (above 0), e.g. "
                 "alpha = 0.05.", id="alpha-0"),
    pytest.param(CANARY + '[route.rollout]\nsteps = [10]\n[route.rollout.judge]\ncritical = ["speed"]\n',
                 "gateway.toml, line 4: rollout judge critical must list metrics of errors, latency, equality, "
                 'e.g. critical = ["errors"].', id="critical-unknown"),
    pytest.param(CANARY + "[route.rollout]\nsteps = [10]\n[route.rollout.judge]\nfail = 10\n",
                 "gateway.toml, line 4: unknown key 'fail' in [route.rollout.judge]; use pass, marginal, errors, "
                 "latency, alpha, equality, critical.", id="judge-unknown"),
    pytest.param('shadow = { app = "new" }\ncanary = { app = "old", share = 5 }\n',
                 "gateway.toml, line 4: a rule in shadow mode has one app, and no canary (but the one a rollout "
                 "judges, when it is the shadow's app).", id="shadow-and-fixed-canary"),
])
def test_a_bad_rollout_is_refused_in_one_line_naming_the_rule(tail: str, message: str) -> None:
    with pytest.raises(ConfigFileError) as caught:
        parse_gateway_file(HEAD + tail)
    assert str(caught.value) == message
