"""Rollouts that move themselves: each rule with a ``[route.rollout]`` walks its canary's
share through its steps, judged at each (:mod:`gateway.migration.judge`), on every worker
and host of a site at once.

The state is the site's database's (:mod:`gateway.migration.rollout_store`). Each
instance keeps a copy of each rule's share in memory, which the pipeline reads
(:meth:`Rollouts.share`), and counts its own requests by arm (:meth:`Rollouts.record`).
A thread of its own, every :data:`POLL` seconds, writes those counts, reads the
rules' states (so every instance applies a new step within a second), and, in the one
instance elected to judge (PostgreSQL's advisory lock, a lease row on SQLite), judges each
running step:

- ``fail``: the share goes to 0 at once, as soon as each arm has its ``requests``;
- ``pass``, once the step has lasted its ``interval`` too: the next step; after the last,
  the rollout is done, and with ``handover`` the canary's app owns the rule (a step at 100%
  has no baseline of its own: it is judged against the last step's);
- ``marginal``: the step holds, and is judged again on the next poll.

A database that cannot be reached freezes every rule where it is: the shares stay, no
step moves, the counts wait in memory. An instance that starts reads the states before it
serves (a restart resumes the step), in the thread that builds the gateway, never on the
event loop. Clients keep their canary across instances: a client's place is a hash of its
``gateway_canary`` cookie and the rule (:meth:`gateway.migration.rules.RouteSpec.chooses_canary`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from gateway.methods import method_label
from gateway.migration.judge import FAIL, MARGINAL, PASS, Arm, bucket, judge
from gateway.migration.rollout_spec import RolloutSpec
from gateway.migration.rollout_store import BASELINE, CANARY, DONE, PAUSED, ROLLED_BACK, RUNNING, State, Store

logger = logging.getLogger("gateway")

#: How often each instance writes its counts, reads the states and, if elected, judges (seconds).
POLL = 0.5
#: Minutes of per-path counts the database keeps for ``gateway progress`` (a week).
VISITS_KEPT = 7 * 24 * 60
#: The actor the audit trail names for the judge's own changes.
JUDGE = "judge"
#: Connections kept from before a fork: the child must never close the parent's socket.
_inherited: list[Any] = []


class RouteSpec(Protocol):
    """What a rollout reads of a rule (:class:`gateway.migration.rules.RouteSpec`, which
    imports this module)."""

    @property
    def rule(self) -> str: ...
    @property
    def key(self) -> str: ...
    @property
    def apps(self) -> tuple[str, ...]: ...
    @property
    def canary_key(self) -> str: ...
    @property
    def canary(self) -> str | None: ...
    @property
    def shadow(self) -> str | None: ...
    @property
    def rollout(self) -> RolloutSpec | None: ...


def instance_name() -> str:
    """This process, as the tallies and the lease name it: host, pid and start."""
    return f"{socket.gethostname()}:{os.getpid()}:{time.time_ns()}"


class _Count:
    """One arm's counts over a step, as this instance saw them."""

    __slots__ = ("errors", "latency", "requests")

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.latency: dict[int, int] = {}

    def arm(self) -> Arm:
        return Arm(requests=self.requests, errors=self.errors, latency=dict(self.latency))


class Visits:
    """Requests per minute, app, method and path, as this instance served them through the
    route rules: what ``gateway progress`` maps onto each app's routes. At most
    :data:`PATHS` paths a minute: the others count as ``*``. A method that is not
    HTTP's counts as ``_OTHER`` (:func:`gateway.methods.method_label`): a client chooses it,
    and each one of its own was a count, and a row in the site's database, of its own."""

    PATHS = 2000
    LONGEST = 300

    def __init__(self) -> None:
        self.counts: dict[tuple[int, str, str, str], int] = {}
        self.written: dict[tuple[int, str, str, str], int] = {}
        self.minute = 0
        self.paths = 0

    def add(self, app: str, method: str, path: str) -> None:
        """Count one request (on the event loop too: a few dictionary operations, no lock:
        see :meth:`Rollouts.record`)."""
        minute = int(time.time() // 60)
        method = method_label(method)
        if minute != self.minute:
            self.minute, self.paths = minute, 0
        key = (minute, app, method, path)
        n = self.counts.get(key)
        if n is None:
            if self.paths >= self.PATHS or len(path) > self.LONGEST:
                key = (minute, app, method, "*")
                n = self.counts.get(key, 0)
            else:
                self.paths += 1
                n = 0
        self.counts[key] = n + 1

    def changed(self) -> dict[tuple[int, str, str, str], int]:
        """The counts not written yet as they are (their whole values); counts of minutes
        gone, once written, are dropped from memory."""
        counts = dict(self.counts)  # one C call: whole
        for key in [k for k, n in counts.items() if k[0] < self.minute - 1 and self.written.get(k) == n]:
            del self.counts[key], self.written[key], counts[key]
        return {key: n for key, n in counts.items() if self.written.get(key) != n}


class Rollouts:
    """The rollouts of one process's route rules: shares for the pipeline, counts for the
    judge, and the thread that keeps both in step with the database."""

    def __init__(self, specs: Iterable[RouteSpec], url: str, shadow_counts: Any = None) -> None:
        """Read the rules' states (I/O: at start, or in a reload's thread); a missing judge
        raises ``ValueError`` in one line, rather than every judgement failing later."""
        import importlib.util

        if importlib.util.find_spec("scipy") is None:
            raise ValueError("a [route.rollout] is judged with scipy, which is not installed: install the "
                             "\"rollout\" extra (from a clone, pip install '.[rollout]').")
        self.url = url
        self.store = Store(url)  # the poller's own connection
        self.instance = instance_name()
        #: Each rule's shadow counts, cumulative (``Shadower.snapshot``), or None.
        self.shadow_counts = shadow_counts
        self.thread: threading.Thread | None = None
        self.stopped = threading.Event()
        self.frozen: str | None = None  # why the database could not be reached, while it cannot
        self.judging = False
        self.states: dict[str, State] = {}
        self.shares: dict[str, float] = {}
        self.specs: dict[str, RouteSpec] = {}
        self.arms: dict[str, tuple[str, str]] = {}
        self.counts: dict[tuple[str, int, str], _Count] = {}
        self.shadow_base: dict[tuple[str, int], tuple[int, int]] = {}
        self.noted: set[tuple[str, int]] = set()  # (rule, epoch) whose marginal verdict is in the audit
        self.visits = Visits()
        self.listener: Any = None  # the metrics (:meth:`listen`)
        self.configure(specs)
        self.poll(judge=False, write=False)  # resume where the site is, before serving (and write nothing)
        os.register_at_fork(after_in_child=self._forked)

    def configure(self, specs: Iterable[RouteSpec]) -> None:
        """Follow these rules from now on (at start, and on a reload: no I/O here)."""
        specs = list(specs)
        self.specs = {spec.key: spec for spec in specs if spec.rollout is not None}
        #: The mount keys of the rules' arms: the rule's own app, its canary.
        self.arms = {**{key: (key, BASELINE) for key in self.specs},
                     **{spec.canary_key: (key, CANARY) for key, spec in self.specs.items()}}
        #: Every rule's mount keys, and the app each sends to, for ``gateway progress``.
        self.watched = {**{spec.key: spec.apps[0] for spec in specs},
                        **{spec.canary_key: spec.canary for spec in specs if spec.canary is not None}}

    def listen(self, listener: Any) -> None:
        """Tell ``listener`` (the metrics) of each answer an arm counts, as ``listener("rollout",
        rule, (arm, step, status class))``, and of each share, as ``("rollout_share", rule, (share,))``."""
        self.listener = listener
        for rule, share in list(self.shares.items()):
            listener("rollout_share", rule, (f"{share:g}",))

    def share(self, spec: RouteSpec) -> float:
        """The share of clients the rule's canary has now (0 until the state is known)."""
        return self.shares.get(spec.key, 0.0)

    def owner(self, spec: RouteSpec) -> str | None:
        """The app a hand-over gave the rule to, or None."""
        state = self.states.get(spec.key)
        return state.owner if state is not None else None

    def record(self, key: str, status: int, seconds: float, method: str = "GET", path: str = "") -> None:
        """Count a response of the rule's mount ``key`` (its own app's, or its canary's): by
        path for ``gateway progress``, and by arm for a rollout's judge."""
        if path:
            self.visits.add(self.watched[key], method, path)
        if key not in self.arms:
            return
        rule, arm = self.arms[key]
        state = self.states.get(rule)
        if state is None or state.status != RUNNING or not status:  # 0: the client left before an answer
            return
        index = bucket(seconds)
        # No lock (this runs on the event loop): the poller copies each count with a C call that
        # holds the GIL (dict(), list()), so it sees a whole dictionary; a count it reads between
        # two of these lines is one request short, and whole at its next copy.
        count = self.counts.get((rule, state.epoch, arm))
        if count is None:
            count = self.counts.setdefault((rule, state.epoch, arm), _Count())
        count.requests += 1
        count.errors += status >= 500
        count.latency[index] = count.latency.get(index, 0) + 1
        if self.listener is not None:
            self.listener("rollout", rule, (arm, f"{state.share:g}", f"{status // 100}xx"))

    def start(self) -> None:
        """Start polling (again in a forked worker)."""
        if self.thread is None and self.specs:
            self.thread = threading.Thread(target=self._run, name="gateway-rollouts", daemon=True)
            self.thread.start()

    def stop(self) -> None:
        """Stop polling, and close the connection (a judge's lock goes with it)."""
        self.stopped.set()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(POLL + 2 * 2.0)
        self.store.close()

    def _forked(self) -> None:
        # The parent's connection is the parent's: keep the object, so that it is never closed here.
        _inherited.append(self.store.conn)
        self.store = Store(self.url)
        self.instance = instance_name()
        if self.thread is not None:
            self.thread = None
            self.start()

    def _run(self) -> None:
        while not self.stopped.wait(POLL):
            self.poll()

    def poll(self, *, judge: bool = True, write: bool = True) -> None:
        """Write this instance's counts (and start the rules' rollouts not started yet), read
        the states, and judge if elected; a database that fails freezes everything as it is."""
        try:
            self._poll(judge, write)
        except Exception as exc:  # any driver's error: the database is out of reach
            if self.frozen is None:
                logger.warning("Rollouts frozen where they are: the database (%s) cannot be reached: %s",
                               self.store.where,
                               str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
            self.frozen = str(exc) or type(exc).__name__
            self.judging = False
            self.store.close()
            return
        if self.frozen is not None:
            logger.warning("Rollouts resume: the database (%s) answers again.", self.store.where)
            self.frozen = None

    def _poll(self, judging: bool, writing: bool) -> None:
        store = self.store
        if writing:
            for rule, spec in self.specs.items():
                if rule not in self.states:
                    assert spec.rollout is not None
                    store.begin(rule, spec.rollout.steps[0], JUDGE)
            self._write_counts()
            changed = self.visits.changed()
            for (minute, app, method, path), n in changed.items():
                store.write_visits(minute, self.instance, app, method, path, n)
            self.visits.written.update(changed)
        self._apply(store.states(tuple(self.specs)))
        self.judging = judging and bool(self.specs) and store.elect(self.instance)
        if self.judging:
            store.forget_visits(int(time.time() // 60) - VISITS_KEPT)
            for rule, state in list(self.states.items()):
                if state.status == RUNNING and rule in self.specs:
                    self._judge(self.specs[rule], state)

    def _write_counts(self) -> None:
        counts = {key: count.arm() for key, count in list(self.counts.items())}
        for (rule, epoch, arm), tally in counts.items():
            equal = compared = 0
            if arm == BASELINE and (shadow := self._shadow(rule, epoch)) is not None:
                equal, compared = shadow
            self.store.write_tally(rule, epoch, self.instance, arm, tally, equal, compared)

    def _shadow(self, rule: str, epoch: int) -> tuple[int, int] | None:
        """The shadow's (equal, compared) in this instance since ``epoch`` began here."""
        if self.shadow_counts is None or self.specs[rule].shadow is None:
            return None
        counts = self.shadow_counts(rule)
        now = (counts["equal"] + counts["noise"], counts["compared"])
        base = self.shadow_base.setdefault((rule, epoch), now)
        return now[0] - base[0], now[1] - base[1]

    def _apply(self, states: Mapping[str, State]) -> None:
        for rule, state in states.items():
            old = self.states.get(rule)
            if old is not None and old.epoch == state.epoch:
                continue
            if old is not None:
                self.shadow_base.pop((rule, old.epoch), None)
            if self.specs[rule].shadow is not None:
                self._shadow(rule, state.epoch)  # the shadow's counts start here for this step
            if old is not None:
                logger.info("Rollout of %s: %s, canary at %g%% of clients.", self.specs[rule].rule, state.status,
                            state.share)
            self.states[rule] = state
            self.shares[rule] = state.share
            if self.listener is not None:
                self.listener("rollout_share", rule, (f"{state.share:g}",))
            for key in [k for k in list(self.counts) if k[0] == rule and k[1] != state.epoch]:
                del self.counts[key]  # the counts of steps gone are the database's now

    def _judge(self, spec: RouteSpec, state: State) -> None:
        rollout = spec.rollout
        assert rollout is not None
        arms, shadow = self.store.tallies(spec.key, state.epoch)
        baseline, canary = arms.get(BASELINE, Arm()), arms.get(CANARY, Arm())
        if state.share >= 100:  # every client has the canary: judged against the last step's baseline
            baseline = self.store.last_baseline(spec.key, state.epoch)
        if min(baseline.requests, canary.requests) < rollout.requests:
            return
        verdict = judge(baseline, canary, rollout.judge, shadow if spec.shadow is not None else None)
        figures = {**verdict.figures(), "step": state.step, "share": state.share}
        if verdict.outcome == FAIL:
            self._move(state, action="rollback", reason=verdict.summary(), figures=figures, status=ROLLED_BACK,
                       step=-1, share=0.0)
        elif verdict.outcome == PASS and time.time() - state.since >= rollout.interval:
            if state.step + 1 < len(rollout.steps):
                self._move(state, action="promote", reason=verdict.summary(), figures=figures, status=RUNNING,
                           step=state.step + 1, share=rollout.steps[state.step + 1])
            else:
                self._move(state, action="done", reason=verdict.summary(), figures=figures, status=DONE,
                           step=state.step, share=100.0 if rollout.handover else state.share,
                           owner=spec.canary if rollout.handover else None)
        elif verdict.outcome == MARGINAL and (spec.key, state.epoch) not in self.noted:
            self.noted.add((spec.key, state.epoch))
            self.store.note(spec.key, JUDGE, "hold", state.share, verdict.summary(), figures)

    def _move(self, state: State, **change: Any) -> None:
        moved = self.store.change(state, actor=JUDGE, **change)
        if moved is not None:
            self._apply({moved.rule: moved})
            logger.warning("Rollout of %s: %s to %g%%: %s", self.specs[state.rule].rule, change["action"],
                           moved.share, change["reason"])


def act(store: Store, spec: RouteSpec, action: str, *, actor: str, reason: str) -> State:
    """A person's command on ``spec``'s rollout: ``pause``, ``resume``, ``promote`` (the
    next step; after the last, done) or ``rollback``. Raises ``ValueError`` (one line) when
    it cannot apply."""
    rollout = spec.rollout
    assert rollout is not None
    state = store.states((spec.key,)).get(spec.key)
    if state is None:
        if not store.begin(spec.key, rollout.steps[0], actor):
            raise ValueError("the rollout changed meanwhile: try again")
        state = store.states((spec.key,))[spec.key]
    why = f"{reason} ({action} by {actor})" if reason else f"{action} by {actor}"
    if action == "pause":
        if state.status != RUNNING:
            raise ValueError(f"the rollout is {state.status}, not running: nothing to pause")
        moved = store.change(state, actor=actor, action=action, reason=why, figures={}, status=PAUSED,
                             step=state.step, share=state.share)
    elif action == "resume":
        if state.status not in (PAUSED, ROLLED_BACK):
            raise ValueError(f"the rollout is {state.status}: only a paused or rolled back one resumes")
        step = max(state.step, 0)
        moved = store.change(state, actor=actor, action=action, reason=why, figures={}, status=RUNNING, step=step,
                             share=rollout.steps[step])
    elif action == "promote":
        if state.status == DONE:
            raise ValueError("the rollout is done already")
        step = state.step + 1
        if step < len(rollout.steps):
            moved = store.change(state, actor=actor, action=action, reason=why, figures={}, status=RUNNING,
                                 step=step, share=rollout.steps[step])
        else:
            moved = store.change(state, actor=actor, action="done", reason=why, figures={}, status=DONE,
                                 step=state.step, share=100.0 if rollout.handover else state.share,
                                 owner=spec.canary if rollout.handover else None)
    elif action == "rollback":
        if state.status == ROLLED_BACK:
            raise ValueError("the rollout is rolled back already")
        moved = store.change(state, actor=actor, action=action, reason=why, figures={}, status=ROLLED_BACK,
                             step=-1, share=0.0)
    else:
        raise ValueError(f"{action!r} is not a rollout command: use pause, resume, promote or rollback")
    if moved is None:
        raise ValueError("the rollout changed meanwhile: run the command again")
    return moved
