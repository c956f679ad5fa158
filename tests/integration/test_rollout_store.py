"""The rollouts' store, the same contract on both of its databases: a SQLite file (one
machine) and PostgreSQL (several hosts; a private server of the tests' own, a database per
test, so those cases are marked server). What each method writes is read back through the
store and, where the store's own reading could hide a mistake, straight from the table."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.migration.judge import Arm
from gateway.migration.rollout_store import BASELINE, CANARY, PAUSED, RUNNING, State, Store
from tests.support import until


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
        if second.postgres:  # the lock goes with the first one's session, once its server process has ended
            until(lambda: second.elect("host-b"), 10, "the lock outlived the first one's session")
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


def test_figures_are_kept_as_sorted_json_and_ids_count_up(store: Store) -> None:
    store.begin("/cart", 0.1, "judge")
    store.note("/cart", "judge", "hold", 0.1, "marginal", {"z": 1, "a": [2], "m": {"y": 0, "b": 1}})
    rows = store.execute("SELECT id, figures FROM gateway_rollout_audit ORDER BY id").fetchall()
    assert [row[1] for row in rows] == ["{}", '{"a": [2], "m": {"b": 1, "y": 0}, "z": 1}']
    ids = [row[0] for row in rows]
    assert all(isinstance(i, int) for i in ids) and ids[0] < ids[1]  # an id the database counts up


def test_the_trail_keeps_to_its_last_100_lines_unless_asked(store: Store) -> None:
    store.begin("/cart", 0.1, "judge")
    for n in range(101):
        store.note("/cart", "judge", "hold", 0.1, f"line {n}", {})
    trail = store.audit("/cart")
    assert len(trail) == 100 and (trail[0].reason, trail[-1].reason) == ("line 1", "line 100")
    assert len(store.audit("/cart", last=102)) == 102


def test_a_new_store_holds_no_lock_and_closing_a_broken_connection_is_quiet(url: str) -> None:
    store = Store(url)
    assert store.holds_lock is False and store.conn is None

    class Broken:
        def close(self) -> None:
            raise OSError("the connection is gone")

    store.conn, store.holds_lock = Broken(), True
    store.close()
    assert (store.conn, store.holds_lock) == (None, False)


def test_the_default_database_is_a_sqlite_file_in_the_data_directory(tmp_path: Path) -> None:
    from gateway.migration.rollout_store import database_url

    assert database_url(tmp_path, {}) == f"sqlite:///{tmp_path}/gateway-rollouts.sqlite3"
    assert database_url(tmp_path, {"DATABASE_URL": "mysql://db/site"}) == f"sqlite:///{tmp_path}/gateway-rollouts.sqlite3"


def test_sqlite_waits_2_s_for_a_lock_and_keeps_a_write_ahead_log(tmp_path: Path) -> None:
    with Store(f"sqlite:///{tmp_path}/rollouts.sqlite3") as store:
        assert store.execute("PRAGMA busy_timeout").fetchone()[0] == 2000
        assert store.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.server
def test_a_postgresql_session_has_its_timeouts_keepalives_and_autocommit(pg_url: str) -> None:
    with Store(pg_url) as store, Store(pg_url) as other:
        assert store.execute("SHOW statement_timeout").fetchone()[0] == "2s"
        assert store.execute("SHOW idle_in_transaction_session_timeout").fetchone()[0] == "10s"
        conn = store.connect()
        assert conn.info.get_parameters()["connect_timeout"] == "2"
        sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
        try:  # a cut network is noticed in 5 + 2 * 2 s, not the kernel's 2 hours
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 5
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 2
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 2
        finally:
            sock.close()
        store.write_visits(10, "host-a", "flask", "GET", "/shop", 3)  # outside any transaction...
        assert other.visits(0) == [("flask", "GET", "/shop", 3)]  # ...seen at once: autocommit


@pytest.mark.server
def test_two_stores_make_the_tables_one_after_the_other(pg_url: str, postgres: Any) -> None:
    import psycopg

    from gateway.migration.rollout_store import JUDGE_LOCK

    key = JUDGE_LOCK + 1
    waiting = ("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
               "AND classid = %s AND objid = %s")
    with psycopg.connect(pg_url.replace("postgres://", "postgresql://", 1), autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (key,))  # another instance making the tables
        store = Store(pg_url)
        done = threading.Event()
        thread = threading.Thread(target=lambda: (store.connect(), done.set()), daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 10
            while not holder.execute(waiting, (key >> 32, key & 0xFFFFFFFF)).fetchone()[0]:
                assert not done.is_set(), "the tables were made while another session held the lock"
                assert time.monotonic() < deadline, "no session waits for the lock"
                time.sleep(0.02)
        finally:
            holder.execute("SELECT pg_advisory_unlock(%s)", (key,))
        assert done.wait(10)
        thread.join()
        assert store.states() == {}
        store.close()


def test_a_database_that_accepts_and_never_answers_is_given_up_on(tmp_path: Path) -> None:
    psycopg = pytest.importorskip("psycopg")

    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts (the backlog), says nothing
        port = silent.getsockname()[1]
        store = Store(f"postgres://u@127.0.0.1:{port}/site")
        with pytest.raises(psycopg.OperationalError) as failed:
            store.connect()
    assert "timeout" in str(failed.value).lower()
    assert store.conn is None
