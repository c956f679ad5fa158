"""Where every worker and host of a site keeps its rollouts: the site's database.

The same database the apps use: PostgreSQL when ``DATABASE_URL`` names one (several hosts),
else a SQLite file in the data directory (one machine, ``GATEWAY_DATA_DIR``). Four tables:

- ``gateway_rollout``: each rule's status, step, share and ``epoch`` (one more at every
  change: the tallies of a step are those of its epoch), and the app that owns the rule
  after a hand-over;
- ``gateway_rollout_tally``: each instance's counts for a rule's epoch, by arm;
- ``gateway_rollout_audit``: who or what changed what, when, why, and the judge's figures;
- ``gateway_route_visits``: each instance's requests a minute by app, method and path, for
  ``gateway progress``;
- ``gateway_rollout_lease``: on SQLite, which instance judges (PostgreSQL uses an advisory
  lock instead, held by the judging instance's session: it goes with the session).

Every change of a rule's row is conditional on the epoch it was read at, in one
transaction with its audit line, so two instances (or a command and the judge) never both
move a step.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.migration.judge import Arm

#: Statuses of a rule's rollout.
RUNNING, PAUSED, ROLLED_BACK, DONE = "running", "paused", "rolled back", "done"
#: The arms of a rule: its own app's answers, and the canary's.
BASELINE, CANARY = "baseline", "canary"
#: The advisory lock's key on PostgreSQL (any 64-bit number the site's apps do not use).
JUDGE_LOCK = 0x6761746577617921  # "gateway!"
#: How long a SQLite judge's lease lasts unless renewed (seconds).
LEASE = 3.0
#: Seconds to connect, and for a statement, before the database counts as unreachable.
TIMEOUT = 2.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS gateway_rollout (
    rule TEXT PRIMARY KEY, status TEXT NOT NULL, step INTEGER NOT NULL, share DOUBLE PRECISION NOT NULL,
    epoch INTEGER NOT NULL, since DOUBLE PRECISION NOT NULL, owner TEXT);
CREATE TABLE IF NOT EXISTS gateway_rollout_tally (
    rule TEXT NOT NULL, epoch INTEGER NOT NULL, instance TEXT NOT NULL, arm TEXT NOT NULL,
    requests INTEGER NOT NULL, errors INTEGER NOT NULL, latency TEXT NOT NULL,
    equal INTEGER NOT NULL, compared INTEGER NOT NULL, updated DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (rule, epoch, instance, arm));
CREATE TABLE IF NOT EXISTS gateway_rollout_audit (
    id {serial} PRIMARY KEY, at DOUBLE PRECISION NOT NULL, rule TEXT NOT NULL, actor TEXT NOT NULL,
    action TEXT NOT NULL, from_share DOUBLE PRECISION, to_share DOUBLE PRECISION, reason TEXT NOT NULL,
    figures TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS gateway_route_visits (
    minute INTEGER NOT NULL, instance TEXT NOT NULL, app TEXT NOT NULL, method TEXT NOT NULL, path TEXT NOT NULL,
    requests INTEGER NOT NULL, PRIMARY KEY (minute, instance, app, method, path));
CREATE TABLE IF NOT EXISTS gateway_rollout_lease (
    name TEXT PRIMARY KEY, holder TEXT NOT NULL, until DOUBLE PRECISION NOT NULL);
"""


def database_url(data_dir: Path, environ: Mapping[str, str]) -> str:
    """The site's database: ``DATABASE_URL`` when it is PostgreSQL or SQLite, else a SQLite
    file in the data directory."""
    url = environ.get("DATABASE_URL", "").strip()
    scheme = url.partition(":")[0].lower()
    if scheme.startswith(("postgres", "pgsql")) or scheme == "sqlite":
        return url
    return f"sqlite:///{data_dir / 'gateway-rollouts.sqlite3'}"


@dataclass(frozen=True, kw_only=True)
class State:
    """A rule's rollout as the database holds it."""

    rule: str
    status: str
    step: int  # an index into the rule's steps; -1 once rolled back
    share: float
    epoch: int
    since: float
    owner: str | None = None


@dataclass(frozen=True, kw_only=True)
class Audit:
    """One line of the audit trail."""

    at: float
    rule: str
    actor: str
    action: str
    from_share: float | None
    to_share: float | None
    reason: str
    figures: Mapping[str, Any]


class Store:
    """One connection to the site's database, for one thread (the poller's, a command's)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.postgres = not url.startswith("sqlite:")
        self.conn: Any = None
        self.holds_lock = False  # PostgreSQL: this session holds the judge's advisory lock

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def where(self) -> str:
        """The database, for messages, without a password."""
        if not self.postgres:
            return self.url.removeprefix("sqlite:///")
        from urllib.parse import urlsplit

        parts = urlsplit(self.url)
        return f"PostgreSQL at {parts.hostname}:{parts.port or 5432}{parts.path}"

    def connect(self) -> Any:
        """The connection, opened (and the tables made) when there is none."""
        if self.conn is not None:
            return self.conn
        conn: Any
        if self.postgres:
            import psycopg

            url = "postgresql" + self.url[self.url.index(":"):]
            # A cut network must not hold a session, or its locks, for the kernel's 2 hours.
            conn = psycopg.connect(url, autocommit=True, connect_timeout=int(TIMEOUT), keepalives=1,
                                   keepalives_idle=5, keepalives_interval=2, keepalives_count=2,
                                   options=f"-c statement_timeout={int(TIMEOUT * 1000)} "
                                           "-c idle_in_transaction_session_timeout=10000")
            with conn.transaction():  # two instances making the tables at once would collide
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (JUDGE_LOCK + 1,))
                for statement in filter(str.strip, _SCHEMA.format(serial="BIGSERIAL").split(";")):
                    conn.execute(statement)
        else:
            path = Path(self.url.removeprefix("sqlite:///").partition("?")[0])
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            conn = sqlite3.connect(path, timeout=TIMEOUT, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA.format(serial="INTEGER"))
        self.conn = conn
        return conn

    def close(self) -> None:
        """Close the connection (a PostgreSQL judge's lock goes with it)."""
        conn, self.conn, self.holds_lock = self.conn, None, False
        if conn is not None:
            with contextlib.suppress(Exception):  # closing a broken connection: nothing more to do
                conn.close()

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        """Run one statement (``?`` placeholders on both databases)."""
        conn = self.connect()
        return conn.execute(sql.replace("?", "%s") if self.postgres else sql, params)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction; SQLite takes its write lock at once (no deferred upgrade)."""
        self.execute("BEGIN IMMEDIATE" if not self.postgres else "BEGIN")
        try:
            yield
        except BaseException:
            self.execute("ROLLBACK")
            raise
        self.execute("COMMIT")

    def states(self, rules: tuple[str, ...] | None = None) -> dict[str, State]:
        """The rules' rollouts (every rule's when ``rules`` is None)."""
        rows = self.execute("SELECT rule, status, step, share, epoch, since, owner FROM gateway_rollout").fetchall()
        return {row[0]: State(rule=row[0], status=row[1], step=int(row[2]), share=float(row[3]), epoch=int(row[4]),
                              since=float(row[5]), owner=row[6])
                for row in rows if rules is None or row[0] in rules}

    def begin(self, rule: str, share: float, actor: str) -> bool:
        """Start ``rule``'s rollout at its first step, unless it has one already."""
        now = time.time()
        with self.transaction():
            done: bool = self.execute("INSERT INTO gateway_rollout (rule, status, step, share, epoch, since, owner) "
                                "VALUES (?, ?, 0, ?, 1, ?, NULL) ON CONFLICT (rule) DO NOTHING",
                                (rule, RUNNING, share, now)).rowcount == 1
            if done:
                self._audit(now, rule, actor, "start", None, share, "the rule's rollout begins at its first step", {})
        return done

    def change(self, state: State, *, actor: str, action: str, reason: str, figures: Mapping[str, Any],
               status: str, step: int, share: float, owner: str | None = None) -> State | None:
        """Move ``state`` on, with its audit line, if no one moved it since it was read;
        the new state, or None when someone had."""
        now = time.time()
        with self.transaction():
            moved = self.execute("UPDATE gateway_rollout SET status = ?, step = ?, share = ?, epoch = epoch + 1, "
                                 "since = ?, owner = ? WHERE rule = ? AND epoch = ?",
                                 (status, step, share, now, owner, state.rule, state.epoch)).rowcount == 1
            if moved:
                self._audit(now, state.rule, actor, action, state.share, share, reason, figures)
        if not moved:
            return None
        return State(rule=state.rule, status=status, step=step, share=share, epoch=state.epoch + 1, since=now,
                     owner=owner)

    def _audit(self, at: float, rule: str, actor: str, action: str, from_share: float | None,
               to_share: float | None, reason: str, figures: Mapping[str, Any]) -> None:
        self.execute("INSERT INTO gateway_rollout_audit (at, rule, actor, action, from_share, to_share, reason, "
                     "figures) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                     (at, rule, actor, action, from_share, to_share, reason, json.dumps(figures, sort_keys=True)))

    def note(self, rule: str, actor: str, action: str, share: float, reason: str, figures: Mapping[str, Any]) -> None:
        """An audit line that changes nothing (a marginal verdict: the step holds)."""
        self._audit(time.time(), rule, actor, action, share, share, reason, figures)

    def audit(self, rule: str | None = None, last: int = 100) -> list[Audit]:
        """The newest ``last`` lines of the audit trail (of ``rule``), oldest first."""
        where, params = ("WHERE rule = ? ", (rule,)) if rule is not None else ("", ())
        rows = self.execute("SELECT at, rule, actor, action, from_share, to_share, reason, figures FROM "
                            f"gateway_rollout_audit {where}ORDER BY id DESC LIMIT {int(last)}", params).fetchall()
        return [Audit(at=float(r[0]), rule=r[1], actor=r[2], action=r[3], from_share=r[4], to_share=r[5],
                      reason=r[6], figures=json.loads(r[7])) for r in reversed(rows)]

    def write_tally(self, rule: str, epoch: int, instance: str, arm: str, tally: Arm, equal: int = 0,
                    compared: int = 0) -> None:
        """This instance's counts for ``rule``'s epoch and ``arm``, replacing its last ones."""
        latency = json.dumps({str(k): v for k, v in sorted(tally.latency.items())})
        self.execute("INSERT INTO gateway_rollout_tally (rule, epoch, instance, arm, requests, errors, latency, equal, "
                     "compared, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (rule, epoch, instance, "
                     "arm) DO UPDATE SET requests = excluded.requests, errors = excluded.errors, latency = "
                     "excluded.latency, equal = excluded.equal, compared = excluded.compared, updated = "
                     "excluded.updated",
                     (rule, epoch, instance, arm, tally.requests, tally.errors, latency, equal, compared, time.time()))

    def tallies(self, rule: str, epoch: int) -> tuple[dict[str, Arm], tuple[int, int]]:
        """Every instance's counts for ``rule``'s epoch added up, by arm; and the shadow's
        (equal, compared)."""
        arms: dict[str, Arm] = {}
        equal = compared = 0
        for arm, requests, errors, latency, eq, cmp in self.execute(
                "SELECT arm, requests, errors, latency, equal, compared FROM gateway_rollout_tally "
                "WHERE rule = ? AND epoch = ?", (rule, epoch)).fetchall():
            counted = Arm(requests=int(requests), errors=int(errors),
                          latency={int(k): int(v) for k, v in json.loads(latency).items()})
            arms[arm] = arms[arm].plus(counted) if arm in arms else counted
            equal, compared = equal + int(eq), compared + int(cmp)
        return arms, (equal, compared)

    def write_visits(self, minute: int, instance: str, app: str, method: str, path: str, requests: int) -> None:
        """This instance's requests to ``app`` for ``method path`` in ``minute`` (a whole count)."""
        self.execute("INSERT INTO gateway_route_visits (minute, instance, app, method, path, requests) VALUES "
                     "(?, ?, ?, ?, ?, ?) ON CONFLICT (minute, instance, app, method, path) DO UPDATE SET "
                     "requests = excluded.requests", (minute, instance, app, method, path, requests))

    def forget_visits(self, before_minute: int) -> None:
        """Drop the per-path counts older than ``before_minute`` (the judge keeps a week)."""
        self.execute("DELETE FROM gateway_route_visits WHERE minute < ?", (before_minute,))

    def visits(self, since_minute: int) -> list[tuple[str, str, str, int]]:
        """Every instance's requests since ``since_minute``: (app, method, path, requests)."""
        rows = self.execute("SELECT app, method, path, SUM(requests) FROM gateway_route_visits WHERE minute >= ? "
                            "GROUP BY app, method, path", (since_minute,)).fetchall()
        return [(r[0], r[1], r[2], int(r[3])) for r in rows]

    def last_baseline(self, rule: str, epoch: int) -> Arm:
        """The baseline's counts of ``rule``'s latest step before ``epoch`` that had any: what
        a step at 100% (no baseline traffic) is judged against."""
        row = self.execute("SELECT max(epoch) FROM gateway_rollout_tally WHERE rule = ? AND epoch < ? AND arm = ?",
                           (rule, epoch, BASELINE)).fetchone()
        if row is None or row[0] is None:
            return Arm()
        return self.tallies(rule, int(row[0]))[0].get(BASELINE, Arm())

    def elect(self, instance: str) -> bool:
        """Whether this instance judges now: it holds PostgreSQL's advisory lock (taken now if
        free), or the SQLite lease (taken if it lapsed, else renewed)."""
        if self.postgres:
            if not self.holds_lock:
                self.holds_lock = bool(self.execute("SELECT pg_try_advisory_lock(?)", (JUDGE_LOCK,)).fetchone()[0])
            return self.holds_lock
        now = time.time()
        with self.transaction():
            self.execute("INSERT INTO gateway_rollout_lease (name, holder, until) VALUES ('judge', ?, ?) "
                         "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until "
                         "WHERE gateway_rollout_lease.holder = excluded.holder OR gateway_rollout_lease.until < ?",
                         (instance, now + LEASE, now))
            row = self.execute("SELECT holder FROM gateway_rollout_lease WHERE name = 'judge'").fetchone()
        return bool(row and row[0] == instance)
