"""Rollouts kept in the site's database, shared by every instance: each applies a new step
within 2 s, resumes it after a restart, freezes it while the database is out of reach;
one instance judges at a time; a failed step rolls back at once, a passed last step hands
the rule over. On SQLite here, and on PostgreSQL (a private server) in the tests marked
``server``."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.core.mounts import MountTable
from gateway.migration.rollout import Rollouts, act
from gateway.migration.rollout_store import DONE, ROLLED_BACK, RUNNING, Store, database_url
from gateway.migration.rules import RouteSpec, parse_gateway_file
from tests.apps.shop import ROLLOUT
from tests.entries import ENTRIES, config_with, who
from tests.support import PostgresCluster

APPLIED_WITHIN = 2.0  # seconds: what every instance must do with a new step


def rollout_rule(steps: str = "[10, 50, 100]", interval: float = 0.0, requests: int = 30, judge: str = "",
                 handover: bool = True) -> RouteSpec:
    text = ('[apps]\nold = "m:a"\nnew = "m:b"\n[[route]]\nrule = "/cart"\napp = "old"\ncanary = { app = "new" }\n'
            f"[route.rollout]\nsteps = {steps}\ninterval = {interval}\nrequests = {requests}\n"
            f"handover = {'true' if handover else 'false'}\n" + (f"[route.rollout.judge]\n{judge}\n" if judge else ""))
    return parse_gateway_file(text).routes[0]


def wait_for(what: Callable[[], bool], within: float = 10.0) -> bool:
    """Poll ``what`` until it holds; False if it did not within ``within`` seconds."""
    deadline = time.monotonic() + within
    while not what():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture
def instances() -> Iterator[Callable[..., Rollouts]]:
    """Start instances (each a host's worker); all stopped at the end."""
    made: list[Rollouts] = []

    def make(spec: RouteSpec, url: str, *, start: bool = True) -> Rollouts:
        rollouts = Rollouts([spec], url)
        made.append(rollouts)
        if start:
            rollouts.start()
            assert wait_for(lambda: spec.key in rollouts.states)  # its first poll begins the rollout
        return rollouts

    yield make
    for rollouts in made:
        rollouts.stop()


@pytest.fixture(autouse=True)
def _close_stores(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Close the connections the tests' own commands open (a command closes its own)."""
    opened: list[Store] = []
    real = Store.__init__

    def init(self: Store, url: str) -> None:
        real(self, url)
        opened.append(self)

    monkeypatch.setattr(Store, "__init__", init)
    yield
    for store in opened:
        store.close()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return database_url(tmp_path, {})


def feed(rollouts: Rollouts, spec: RouteSpec, *, n: int, canary_error_every: int = 0, added: float = 0.0) -> None:
    """Count ``n`` answers of each arm, 20-30 ms each (the canary's ``added`` slower); none of
    the rule's own app once the canary has every client."""
    for i in range(n):
        took = 0.020 + (i % 11) / 1000
        if rollouts.share(spec) < 100:
            rollouts.record(spec.key, 200, took)
        failed = canary_error_every and i % canary_error_every == 0
        rollouts.record(spec.canary_key, 500 if failed else 200, took + added)


def test_the_site_database_is_database_url_else_a_file_in_the_data_directory(tmp_path: Path) -> None:
    assert database_url(tmp_path, {}) == f"sqlite:///{tmp_path}/gateway-rollouts.sqlite3"
    assert database_url(tmp_path, {"DATABASE_URL": "postgres://u@db/site"}) == "postgres://u@db/site"
    assert database_url(tmp_path, {"DATABASE_URL": "mysql://u@db/site"}).startswith("sqlite:///")


def check_steps_apply_everywhere(url: str, instances: Callable[..., Rollouts]) -> None:
    spec = rollout_rule()
    one, two = instances(spec, url), instances(spec, url)
    assert wait_for(lambda: one.share(spec) == two.share(spec) == 10)  # the first step, begun by one of them
    started = time.monotonic()
    act(Store(url), spec, "promote", actor="alice", reason="looks fine")
    assert wait_for(lambda: one.share(spec) == two.share(spec) == 50, APPLIED_WITHIN)
    assert time.monotonic() - started < APPLIED_WITHIN
    assert wait_for(lambda: one.judging != two.judging)  # one judges, not both


def test_every_instance_applies_a_new_step_within_2_s_sqlite(sqlite_url: str, instances) -> None:  # type: ignore[no-untyped-def]
    check_steps_apply_everywhere(sqlite_url, instances)


def test_a_restarted_instance_resumes_the_step(sqlite_url: str, instances) -> None:  # type: ignore[no-untyped-def]
    spec = rollout_rule()
    first = instances(spec, sqlite_url)
    act(Store(sqlite_url), spec, "promote", actor="alice", reason="")
    assert wait_for(lambda: first.share(spec) == 50)
    first.stop()
    again = instances(spec, sqlite_url, start=False)  # read before it serves: no thread yet
    assert again.share(spec) == 50


def test_a_failing_canary_is_rolled_back_at_once_with_the_judges_figures(sqlite_url: str, instances) -> None:  # type: ignore[no-untyped-def]
    spec = rollout_rule(interval=3600)  # a pass would wait an hour; a fail does not wait
    one, two = instances(spec, sqlite_url), instances(spec, sqlite_url)
    feed(one, spec, n=200, canary_error_every=20)
    feed(two, spec, n=200, canary_error_every=20)
    assert wait_for(lambda: one.share(spec) == two.share(spec) == 0)
    store = Store(sqlite_url)
    state = store.states()[spec.key]
    assert (state.status, state.step, state.share) == (ROLLED_BACK, -1, 0)
    last = store.audit(spec.key)[-1]
    assert (last.actor, last.action, last.from_share, last.to_share) == ("judge", "rollback", 10, 0)
    errors = last.figures["metrics"]["errors"]
    assert (last.figures["outcome"], errors["canary_rate"]) == ("fail", 5.0)
    assert errors["canary_requests"] in (200, 400)  # one instance's counts, or both's: whichever the judge saw
    assert "5xx 5% against 0%" in last.reason


def test_a_healthy_canary_walks_every_step_and_is_handed_the_rule(sqlite_url: str, instances) -> None:  # type: ignore[no-untyped-def]
    spec = rollout_rule()
    one = instances(spec, sqlite_url)
    for share in (10, 50, 100):
        assert wait_for(lambda share=share: one.share(spec) == share)  # type: ignore[misc]
        feed(one, spec, n=40)
    assert wait_for(lambda: one.states[spec.key].status == DONE)
    assert one.owner(spec) == "new" and one.share(spec) == 100
    actions = [(a.action, a.to_share) for a in Store(sqlite_url).audit(spec.key)]
    assert actions == [("start", 10), ("promote", 50), ("promote", 100), ("done", 100)]


def test_a_marginal_step_holds_and_says_so_once(sqlite_url: str, instances) -> None:  # type: ignore[no-untyped-def]
    spec = rollout_rule(judge="marginal = 50")
    one = instances(spec, sqlite_url)
    feed(one, spec, n=200, added=0.020)  # twice as slow: latency high, errors fine: score 50
    assert wait_for(lambda: any(a.action == "hold" for a in Store(sqlite_url).audit(spec.key)))
    feed(one, spec, n=50, added=0.020)
    one.poll()
    store = Store(sqlite_url)
    assert [a.action for a in store.audit(spec.key)] == ["start", "hold"]
    assert store.states()[spec.key].share == 10 and store.states()[spec.key].status == RUNNING


def test_commands_act_on_every_instance_and_are_audited(sqlite_url: str, instances) -> None:  # type: ignore[no-untyped-def]
    spec = rollout_rule()
    one = instances(spec, sqlite_url)
    store = Store(sqlite_url)
    act(store, spec, "pause", actor="bob", reason="checking the cart")
    with pytest.raises(ValueError, match="the rollout is paused, not running: nothing to pause"):
        act(store, spec, "pause", actor="bob", reason="")
    feed(one, spec, n=100, canary_error_every=5)  # paused: not counted, not judged
    act(store, spec, "rollback", actor="bob", reason="")
    assert wait_for(lambda: one.share(spec) == 0)
    act(store, spec, "resume", actor="carol", reason="fixed")
    assert wait_for(lambda: one.share(spec) == 10)
    trail = [(a.actor, a.action, a.from_share, a.to_share, a.reason) for a in store.audit(spec.key)]
    assert trail == [("judge", "start", None, 10, "the rule's rollout begins at its first step"),
                     ("bob", "pause", 10, 10, "checking the cart (pause by bob)"),
                     ("bob", "rollback", 10, 0, "rollback by bob"),
                     ("carol", "resume", 0, 10, "fixed (resume by carol)")]


@pytest.mark.server
def test_every_instance_applies_a_new_step_within_2_s_postgres(pg_url: str, instances) -> None:  # type: ignore[no-untyped-def]
    check_steps_apply_everywhere(pg_url, instances)


@pytest.mark.server
def test_judging_moves_to_another_instance_when_the_judge_goes(pg_url: str, instances) -> None:  # type: ignore[no-untyped-def]
    spec = rollout_rule()
    one, two = instances(spec, pg_url), instances(spec, pg_url)
    assert wait_for(lambda: one.judging != two.judging)
    judge, other = (one, two) if one.judging else (two, one)
    judge.stop()  # its session, and so the advisory lock, go with it
    assert wait_for(lambda: other.judging)


@pytest.mark.server
def test_an_unreachable_database_freezes_the_rollout(pg_url: str, postgres: PostgresCluster, instances,  # type: ignore[no-untyped-def]
                                                     caplog: pytest.LogCaptureFixture) -> None:
    spec = rollout_rule(interval=0)
    one = instances(spec, pg_url)
    act(Store(pg_url), spec, "promote", actor="alice", reason="")
    assert wait_for(lambda: one.share(spec) == 50)
    with caplog.at_level(logging.WARNING, logger="gateway"):
        postgres.stop()
        try:
            assert wait_for(lambda: one.frozen is not None)
            feed(one, spec, n=100, canary_error_every=5)  # would roll back, if anyone could judge
            one.poll()
            assert one.share(spec) == 50 and not one.judging
        finally:
            postgres.start()
        assert wait_for(lambda: one.frozen is None)
    assert any("Rollouts frozen where they are" in r.getMessage() for r in caplog.records)
    assert wait_for(lambda: one.share(spec) == 0)  # the counts kept meanwhile are judged now


# -- Through the pipeline ---------------------------------------------------------------------




@pytest.mark.parametrize("kind", sorted(ENTRIES))
def test_the_pipeline_serves_the_rollouts_share_and_counts_its_arms(kind: str, table: MountTable,
                                                                    sqlite_url: str) -> None:
    parsed = parse_gateway_file(ROLLOUT)
    shop = MountTable.from_specs(parsed.mounts, routes=parsed.routes, apps=parsed.apps, defaults=False,
                                 rollout_database=sqlite_url)
    rollouts = shop.route_table.rollouts  # type: ignore[union-attr]
    assert rollouts is not None
    send, app = ENTRIES[kind](MountTable([*table, *shop], shop.routes.values(), shop.route_table), config_with())
    try:
        assert wait_for(lambda: rollouts.share(parsed.routes[0]) == 10)  # begun by the first poll
        ids = [f"{i:032x}" for i in range(600)]

        def dealt() -> dict[str, str]:
            return {i: who(send("GET", "/shop/cart", {"Cookie": f"gateway_canary={i}"})) for i in ids}

        first = dealt()
        assert 0.05 <= sum(a == "new" for a in first.values()) / len(ids) <= 0.15  # the first step: 10%
        assert send("GET", "/echo/").status == 200  # matches no rule: counted nowhere
        rollouts.poll()
        spec = parsed.routes[0]
        with Store(sqlite_url) as store:
            arms, _ = store.tallies(spec.key, 1)
            assert arms["canary"].requests == sum(a == "new" for a in first.values())
            assert arms["baseline"].requests == sum(a == "legacy" for a in first.values())
            assert arms["canary"].errors == arms["baseline"].errors == 0
            act(store, spec, "promote", actor="alice", reason="")
        assert wait_for(lambda: rollouts.share(spec) == 50)
        second = dealt()
        assert 0.40 <= sum(a == "new" for a in second.values()) / len(ids) <= 0.60
        assert all(second[i] == "new" for i in ids if first[i] == "new")  # a step only adds clients
        with Store(sqlite_url) as store:
            act(store, spec, "rollback", actor="alice", reason="")
        assert wait_for(lambda: rollouts.share(spec) == 0)
        assert set(dealt().values()) == {"legacy"}  # every client back on the legacy app
    finally:
        rollouts.stop()
        getattr(app, "executor", None) and app.executor.shutdown(wait=True)


# -- The commands -------------------------------------------------------------------------------

def test_the_rollout_commands_change_every_instance_and_say_so(tmp_path: Path, instances) -> None:  # type: ignore[no-untyped-def]
    from click.testing import CliRunner

    from gateway.serve.cli import cli

    spec = rollout_rule()
    toml = tmp_path / "gateway.toml"
    toml.write_text('[apps]\nold = "m:a"\nnew = "m:b"\n[[route]]\nrule = "/cart"\napp = "old"\n'
                    'canary = { app = "new" }\n[route.rollout]\nsteps = [10, 50, 100]\ninterval = 0\nrequests = 30\n'
                    "handover = true\n")
    one = instances(spec, database_url(tmp_path, {}))
    runner = CliRunner()
    env = {"GATEWAY_DATA_DIR": str(tmp_path), "DATABASE_URL": ""}

    def gateway(*args: str) -> tuple[int, str]:
        result = runner.invoke(cli, ["rollout", *args, "--config", str(toml)], env=env)
        return result.exit_code, result.output

    assert gateway("promote", "/cart", "--reason", "the cart looks right", "--by", "dana") == (
        0, "/cart: running, canary new at 50% of clients (every instance applies it within a second).\n")
    assert wait_for(lambda: one.share(spec) == 50)
    code, shown = gateway("status", "/cart")
    assert code == 0 and shown.startswith("/cart: running, step 2 of 3, canary new at 50% of clients since ")
    assert "dana promote 10% -> 50%: the cart looks right (promote by dana)" in shown
    assert gateway("pause", "/nowhere") == (1, "Error: no rule '/nowhere' has a rollout: rules with one: /cart.\n")
    assert gateway("rollback", "/cart", "--by", "dana") == (
        0, "/cart: rolled back, canary new at 0% of clients (every instance applies it within a second).\n")
    assert wait_for(lambda: one.share(spec) == 0)
    assert gateway("rollback", "/cart") == (1, "Error: /cart: the rollout is rolled back already.\n")
    env["DATABASE_URL"] = "postgres://postgres@127.0.0.1:1/none"  # nothing listens on port 1
    code, shown = gateway("promote", "/cart")
    assert code == 1 and shown.startswith(
        "Error: cannot reach the rollouts' database (PostgreSQL at 127.0.0.1:1/none): ") and shown.count("\n") == 1


# -- The migration page ---------------------------------------------------------------------------

def test_the_migration_page_shows_each_rollouts_steps_arms_and_audit_trail(sqlite_url: str) -> None:
    from gateway.migration.page import render
    from gateway.migration.rules import RouteTable

    spec = rollout_rule(interval=3600)
    routes = RouteTable([spec], rollout_database=sqlite_url)
    rollouts = routes.rollouts
    assert rollouts is not None
    try:
        rollouts.poll()  # begins the rollout at 10%
        feed(rollouts, spec, n=100, canary_error_every=20)
        rollouts.poll()  # writes the counts, and judges: 5% of 500s fails
        assert rollouts.share(spec) == 0
        with Store(sqlite_url) as store:
            act(store, spec, "resume", actor="erin", reason="<fixed> the cart")
        rollouts.poll()
        feed(rollouts, spec, n=40)
        rollouts.poll()
        page = render(routes).body.decode()
    finally:
        rollouts.stop()
    section = page[page.index("<h2>Rollouts</h2>"):]
    assert "<h3><code>/cart</code>: running, canary new at 10%</h3>" in section
    assert '<svg role="img" aria-label="canary share over time"' in section
    assert section.count("<circle ") == 3 and 'fill="#c33"' in section  # start, rollback (red), resume
    assert "<tr><td>baseline</td><td>40</td><td>0.00%</td>" in section
    assert "<tr><td>canary</td><td>40</td><td>0.00%</td>" in section
    assert "erin</td><td>resume</td><td>0% &rarr; 10%</td><td>&lt;fixed&gt; the cart (resume by erin)" in section
    assert "judge</td><td>rollback</td><td>10% &rarr; 0%</td><td>fail (score 0): errors: 5xx 5% against 0%" in section
    assert "<strong>fail</strong>, score 0.0" in section and "<script" not in page


def test_the_migration_page_says_when_the_rollouts_database_is_out_of_reach(tmp_path: Path) -> None:
    from gateway.migration.page import render
    from gateway.migration.rules import RouteTable

    routes = RouteTable([rollout_rule()], rollout_database="postgres://postgres@127.0.0.1:1/none")
    try:
        page = render(routes)
    finally:
        routes.rollouts.stop()  # type: ignore[union-attr]
    assert page.status == 200
    assert "The rollouts' database cannot be reached (" in page.body.decode()
    assert "every rollout is frozen where it is.</p>" in page.body.decode()


def test_prometheus_has_each_rollouts_share_and_its_arms_answers_by_step(table: MountTable, sqlite_url: str) -> None:
    parsed = parse_gateway_file(ROLLOUT)
    shop = MountTable.from_specs(parsed.mounts, routes=parsed.routes, apps=parsed.apps, defaults=False,
                                 rollout_database=sqlite_url)
    rollouts = shop.route_table.rollouts  # type: ignore[union-attr]
    assert rollouts is not None
    send, _ = ENTRIES["wsgi"](MountTable([*table, *shop], shop.routes.values(), shop.route_table),
                              config_with(metrics=True))
    try:
        assert wait_for(lambda: rollouts.share(parsed.routes[0]) == 10)
        dealt = [who(send("GET", "/shop/cart", {"Cookie": f"gateway_canary={i:032x}"})) for i in range(200)]
        scrape = send("GET", "/metrics").body.decode()
    finally:
        rollouts.stop()
    rule = 'rule="~/shop/cart GET,HEAD"'
    assert f"gateway_rollout_share{{{rule}}} 10.0" in scrape
    for arm, app in (("baseline", "legacy"), ("canary", "new")):
        line = f'gateway_rollout_responses_total{{arm="{arm}",{rule},status="2xx",step="10"}} {dealt.count(app)}.0'
        assert line in scrape, scrape


def test_a_rollout_without_scipy_is_refused_at_start_in_one_line(sqlite_url: str, monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None if name == "scipy" else real(name, *rest))
    with pytest.raises(ValueError) as refused:
        Rollouts([rollout_rule()], sqlite_url)
    assert str(refused.value) == ("a [route.rollout] is judged with scipy, which is not installed: install the "
                                  "\"rollout\" extra (from a clone, pip install '.[rollout]').")


def test_a_rule_that_shadows_its_canary_counts_the_shadows_equality_per_step(table: MountTable,
                                                                              sqlite_url: str) -> None:
    text = ROLLOUT.replace('canary = { app = "new" }', 'canary = { app = "new" }\nshadow = { app = "new" }')
    parsed = parse_gateway_file(text)
    shop = MountTable.from_specs(parsed.mounts, routes=parsed.routes, apps=parsed.apps, defaults=False,
                                 rollout_database=sqlite_url, shadow_cpu=1.0)
    routes = shop.route_table
    assert routes is not None and routes.rollouts is not None
    spec = parsed.routes[0]
    send, _ = ENTRIES["wsgi"](MountTable([*table, *shop], shop.routes.values(), routes), config_with())
    try:
        assert wait_for(lambda: routes.rollouts.share(spec) == 10)  # type: ignore[union-attr]
        dealt = [who(send("GET", "/shop/cart", {"Cookie": f"gateway_canary={i:032x}"})) for i in range(30)]
        routes.shadower.drain()
        compared = routes.shadower.snapshot(spec.key)["compared"]
        routes.rollouts.poll()
        with Store(sqlite_url) as store:
            _, (equal, counted) = store.tallies(spec.key, 1)
    finally:
        routes.rollouts.stop()
    # Each legacy answer is replayed on the new app, whose cart differs (it names its app).
    assert 0 < compared == counted <= dealt.count("legacy") and equal == 0


def test_the_judge_keeps_a_week_of_per_path_counts(sqlite_url: str, instances) -> None:  # type: ignore[no-untyped-def]
    from gateway.migration.rollout import VISITS_KEPT

    spec = rollout_rule()
    one = instances(spec, sqlite_url, start=False)
    now = int(time.time() // 60)
    with Store(sqlite_url) as store:
        store.connect()
        store.write_visits(now - VISITS_KEPT - 1, "gone", "old", "GET", "/cart", 5)
        store.write_visits(now - VISITS_KEPT + 1, "kept", "old", "GET", "/cart", 7)
    one.record(spec.key, 200, 0.01, "GET", "/cart")
    one.poll()
    assert one.judging
    with Store(sqlite_url) as store:
        assert store.visits(0) == [("old", "GET", "/cart", 8)]
