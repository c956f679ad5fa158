"""``gateway.adapters.buffering.SendWatch`` on a clock of the test's own: one timer for a
whole response cuts off a ``send`` that waits ``timeout`` seconds, and only such a send.

The loop here is a fake that holds the timers and runs them when the test moves its clock,
so that every case is exact and nothing waits (the drain's sends through a real loop are
in tests/integration/test_buffering.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import pytest

from gateway.adapters.buffering import SendWatch

TIMEOUT = 10.0


class Timer:
    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Clock:
    """The parts of an event loop that SendWatch uses: ``time()`` and ``call_at()``."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[Timer] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        self.timers.append(Timer(when, callback))
        return self.timers[-1]

    def pending(self) -> list[Timer]:
        return [t for t in self.timers if not t.cancelled]

    def advance(self, to: float) -> None:
        """Run each timer due by ``to``, in order, at its time; then set the clock to ``to``."""
        for _ in range(10_000):  # a timer set again for a time already past would loop
            due = sorted((t for t in self.pending() if t.when <= to), key=lambda t: t.when)
            if not due:
                self.now = to
                return
            timer = due[0]
            self.now = max(self.now, timer.when)
            self.timers.remove(timer)
            timer.callback()
        raise AssertionError("timers set again and again for a time already past")


class Task:
    def __init__(self) -> None:
        self.cancels = 0

    def cancel(self) -> bool:
        self.cancels += 1
        return True


def watch(clock: Clock) -> tuple[SendWatch, Task]:
    task = Task()
    return SendWatch(cast(Any, clock), TIMEOUT, cast(Any, task)), task


def test_a_send_that_waits_the_timeout_cuts_the_task_off_then() -> None:
    clock = Clock()
    sends, task = watch(clock)
    clock.advance(3.0)
    sends.since = clock.now  # a send begins at 3 s and never returns
    clock.advance(12.9)
    assert (task.cancels, sends.expired) == (0, False)  # 9.9 s of waiting: not yet
    assert [t.when for t in clock.pending()] == [13.0]  # the timer moved to that send's deadline
    clock.advance(13.0)
    assert (task.cancels, sends.expired) == (1, True)
    assert clock.pending() == []  # nothing more to watch


def test_sends_that_each_return_in_time_are_never_cut_however_long_the_response() -> None:
    """Sixty sends of 6 s each: six minutes in all, each within its 10 s."""
    clock = Clock()
    sends, task = watch(clock)
    for _ in range(60):
        sends.since = clock.now
        clock.advance(clock.now + 6.0)
        sends.since = None
        clock.advance(clock.now + 0.001)
    assert (task.cancels, sends.expired) == (0, False)
    assert len(clock.pending()) == 1  # one timer at a time, never one a send


def test_no_send_in_flight_is_never_cut() -> None:
    """Waiting for the app's next chunk is not the client's doing: the timer only moves on."""
    clock = Clock()
    sends, task = watch(clock)
    clock.advance(1000.0)
    assert (task.cancels, sends.expired) == (0, False)
    assert [t.when for t in clock.pending()] == [1000.0 + TIMEOUT - (1000.0 % TIMEOUT)]


def test_a_send_that_begins_just_before_the_timer_gets_its_whole_timeout() -> None:
    clock = Clock()
    sends, task = watch(clock)
    sends.since = 9.75  # the timer, set at 0 for 10 s, finds this send a quarter of a second old
    clock.advance(19.5)
    assert task.cancels == 0
    clock.advance(19.75)
    assert task.cancels == 1


@pytest.mark.parametrize(("early", "cut"), [
    pytest.param(SendWatch.EARLY, True, id="within-the-clock-resolution"),
    pytest.param(SendWatch.EARLY * 5, False, id="earlier"),
])
def test_a_timer_that_fires_early_cuts_off_only_within_the_clock_resolution(early: float, cut: bool) -> None:
    """uvloop's timers count whole milliseconds, and may fire before their time: within
    EARLY that counts as the time; earlier, the timer is set again, for the deadline."""
    clock = Clock()
    sends, task = watch(clock)
    sends.since = 0.0
    [timer] = clock.pending()
    clock.timers.remove(timer)
    clock.now = TIMEOUT - early
    timer.callback()  # fires early
    assert task.cancels == int(cut)
    assert [t.when for t in clock.pending()] == ([] if cut else [TIMEOUT])


def test_stop_cancels_the_timer() -> None:
    clock = Clock()
    sends, task = watch(clock)
    sends.since = 0.0
    sends.stop()
    clock.advance(100.0)
    assert task.cancels == 0 and clock.pending() == []
