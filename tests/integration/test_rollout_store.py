"""The rollouts' store, the same contract on both of its databases: a SQLite file (one
machine) and PostgreSQL (several hosts; a private server of the tests' own, a database per
test, so those cases are marked server). What each method writes is read back through the
store and, where the store's own reading could hide a mistake, straight from the table."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.migration.judge import Arm
from gateway.migration.rollout_store import BASELINE, CANARY, PAUSED, RUNNING, State, Store


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.server)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/rollouts.sqlite3"
    else:
        yield request.getfixturevalue("pg_url")


@pytest.fixture
def store(url: str) -> Iterator[Store]:
    with Store(url) as opened:
        yield opened


def test_a_rule_begins_once_with_its_audit_line(store: Store) -> None:
    before = time.time()
    assert store.begin("/cart", 0.1, "judge") is True
    assert store.begin("/cart", 0.5, "alice") is False  # it has one: nothing changes
    assert store.begin("/shop", 0.2, "bob") is True
    state = store.states()["/cart"]
    assert state == State(rule="/cart", status=RUNNING, step=0, share=0.1, epoch=1, since=state.since, owner=None)
    assert before <= state.since <= time.time()
    assert list(store.states(("/shop",))) == ["/shop"]
    assert store.states(()) == {}
    [line] = store.audit("/cart")
    assert (line.rule, line.actor, line.action, line.from_share, line.to_share, line.reason, line.figures) == (
        "/cart", "judge", "start", None, 0.1, "the rule's rollout begins at its first step", {})
    assert before <= line.at <= time.time()


def test_a_change_moves_the_epoch_on_once_and_a_stale_one_moves_nothing(store: Store) -> None:
    store.begin("/cart", 0.1, "judge")
    read = store.states()["/cart"]
    moved = store.change(read, actor="judge", action="promote", reason="pass", figures={"score": 100, "p": [0.5]},
                         status=RUNNING, step=1, share=0.5, owner="new")
    assert moved == State(rule="/cart", status=RUNNING, step=1, share=0.5, epoch=2, since=moved.since, owner="new")
    assert store.states()["/cart"] == moved
    assert store.change(read, actor="alice", action="pause", reason="by hand", figures={}, status=PAUSED,
                        step=1, share=0.5) is None  # read at epoch 1: someone moved it since
    assert store.states()["/cart"] == moved
    trail = store.audit("/cart")
    assert [(a.actor, a.action, a.from_share, a.to_share, a.reason, a.figures) for a in trail] == [
        ("judge", "start", None, 0.1, "the rule's rollout begins at its first step", {}),
        ("judge", "promote", 0.1, 0.5, "pass", {"p": [0.5], "score": 100})]
    again = store.change(moved, actor="alice", action="pause", reason="by hand", figures={}, status=PAUSED,
                         step=1, share=0.5)
    assert again is not None and (again.epoch, again.status, again.owner) == (3, PAUSED, None)


def test_a_note_changes_nothing_but_the_trail(store: Store) -> None:
    store.begin("/cart", 0.1, "judge")
    state = store.states()["/cart"]
    store.note("/cart", "judge", "hold", 0.1, "marginal (score 60)", {"score": 60})
    assert store.states()["/cart"] == state
    last = store.audit("/cart")[-1]
    assert (last.action, last.from_share, last.to_share, last.reason, last.figures) == (
        "hold", 0.1, 0.1, "marginal (score 60)", {"score": 60})


def test_the_trail_is_the_newest_lines_oldest_first_of_one_rule_or_all(store: Store) -> None:
    store.begin("/a", 0.1, "judge")
    store.begin("/b", 0.1, "judge")
    for n in range(4):
        store.note("/a", f"actor{n}", "hold", 0.1, f"line {n}", {})
    assert [a.reason for a in store.audit("/a", last=2)] == ["line 2", "line 3"]
    assert [a.rule for a in store.audit(last=3)] == ["/a", "/a", "/a"]
    assert [a.rule for a in store.audit()][:2] == ["/a", "/b"]
    assert len(store.audit()) == 6
    assert len(store.audit("/b")) == 1
    assert store.audit("/none") == []


def test_a_tally_replaces_the_instances_last_and_adds_up_across_instances(store: Store) -> None:
    store.write_tally("/cart", 2, "host-a", CANARY, Arm(requests=5, errors=1, latency={3: 4, 1: 1}), 2, 3)
    store.write_tally("/cart", 2, "host-a", CANARY, Arm(requests=9, errors=2, latency={3: 8, 1: 1}), 4, 5)
    store.write_tally("/cart", 2, "host-b", CANARY, Arm(requests=1, errors=0, latency={3: 1}), 1, 1)
    store.write_tally("/cart", 2, "host-b", BASELINE, Arm(requests=7, errors=0, latency={2: 7}))
    store.write_tally("/cart", 3, "host-a", CANARY, Arm(requests=100, errors=100, latency={9: 100}), 9, 9)
    store.write_tally("/shop", 2, "host-a", CANARY, Arm(requests=100, errors=100, latency={9: 100}), 9, 9)
    arms, shadow = store.tallies("/cart", 2)
    assert arms == {CANARY: Arm(requests=10, errors=2, latency={1: 1, 3: 9}),
                    BASELINE: Arm(requests=7, errors=0, latency={2: 7})}
    assert shadow == (5, 6)
    assert store.tallies("/cart", 4) == ({}, (0, 0))
    stored = store.execute("SELECT requests, latency, updated FROM gateway_rollout_tally WHERE rule = ? AND "
                           "epoch = ? AND instance = ? AND arm = ?", ("/cart", 2, "host-a", CANARY)).fetchall()
    assert [row[:2] for row in stored] == [(9, '{"1": 1, "3": 8}')]
    assert stored[0][2] <= time.time()


def test_the_last_baseline_is_the_latest_earlier_step_that_had_one(store: Store) -> None:
    assert store.last_baseline("/cart", 5) == Arm()
    store.write_tally("/cart", 1, "host-a", BASELINE, Arm(requests=3, latency={1: 3}))
    store.write_tally("/cart", 2, "host-a", BASELINE, Arm(requests=4, latency={1: 4}))
    store.write_tally("/cart", 2, "host-b", BASELINE, Arm(requests=1, latency={2: 1}))
    store.write_tally("/cart", 3, "host-a", CANARY, Arm(requests=8, latency={1: 8}))  # no baseline at 3
    store.write_tally("/cart", 4, "host-a", BASELINE, Arm(requests=50, latency={1: 50}))  # not before 4
    store.write_tally("/shop", 3, "host-a", BASELINE, Arm(requests=60, latency={1: 60}))
    assert store.last_baseline("/cart", 4) == Arm(requests=5, latency={1: 4, 2: 1})
    assert store.last_baseline("/cart", 2) == Arm(requests=3, latency={1: 3})
    assert store.last_baseline("/cart", 1) == Arm()


def test_visits_are_whole_counts_a_minute_summed_over_instances_and_forgotten(store: Store) -> None:
    store.write_visits(10, "host-a", "flask", "GET", "/shop", 3)
    store.write_visits(10, "host-a", "flask", "GET", "/shop", 5)  # the minute's count so far, not more
    store.write_visits(10, "host-b", "flask", "GET", "/shop", 2)
    store.write_visits(11, "host-a", "flask", "GET", "/shop", 1)
    store.write_visits(11, "host-a", "django", "POST", "/cart", 4)
    store.write_visits(9, "host-a", "django", "GET", "/old", 7)
    assert sorted(store.visits(10)) == [("django", "POST", "/cart", 4), ("flask", "GET", "/shop", 8)]
    assert sorted(store.visits(11)) == [("django", "POST", "/cart", 4), ("flask", "GET", "/shop", 1)]
    assert ("django", "GET", "/old", 7) in store.visits(9)
    store.forget_visits(10)  # before minute 10: minute 9 goes, 10 stays
    assert sorted(store.visits(0)) == [("django", "POST", "/cart", 4), ("flask", "GET", "/shop", 8)]


def test_a_failed_transaction_leaves_nothing(store: Store) -> None:
    store.begin("/cart", 0.1, "judge")
    with pytest.raises(RuntimeError), store.transaction():
        store.execute("UPDATE gateway_rollout SET share = 0.9 WHERE rule = ?", ("/cart",))
        raise RuntimeError("cut")
    assert store.states()["/cart"].share == 0.1
    store.begin("/shop", 0.2, "judge")  # the connection is usable after the rollback
    assert set(store.states()) == {"/cart", "/shop"}


def test_one_instance_judges_at_a_time_and_another_takes_over_when_it_is_gone(url: str) -> None:
    with Store(url) as first, Store(url) as second:
        assert first.elect("host-a") is True
        assert first.elect("host-a") is True  # held: renewed
        assert second.elect("host-b") is False
        first.close()
        assert first.conn is None and first.holds_lock is False
        if second.postgres:  # the lock went with the first one's session
            assert second.elect("host-b") is True
        else:  # the lease lasts until it lapses: expire it as time would
            second.execute("UPDATE gateway_rollout_lease SET until = ?", (time.time() - 1,))
            assert second.elect("host-b") is True
        assert second.elect("host-b") is True
        with Store(url) as third:
            assert third.elect("host-a") is False


def test_a_second_store_on_the_same_database_sees_the_first_ones_tables(url: str) -> None:
    with Store(url) as first:
        first.begin("/cart", 0.1, "judge")
    with Store(url) as second:  # the tables exist: making them again is harmless
        assert list(second.states()) == ["/cart"]
        assert second.connect() is second.connect()
