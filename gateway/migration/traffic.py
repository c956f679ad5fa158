"""The migration page's counts: requests, fallbacks and canary requests per rule and
minute (:class:`Traffic`), shared by the workers of one server (:class:`Board`)."""

from __future__ import annotations

import atexit
import json
import logging
import multiprocessing.util
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger("gateway")

MINUTES = 10


#: What is counted per rule and minute: requests, fallbacks taken, requests sent to a canary.
REQUESTS, FALLBACKS, CANARY = "requests", "fallback", "canary"


class _Tally(dict[tuple[int, str, str], int]):
    """One thread's counts, by (minute, what, rule), and the newest minute it counted."""

    minute = -1


class Traffic:
    """Requests, fallbacks and canary requests per rule per minute, for the last
    :data:`MINUTES` minutes.

    Each thread counts in a tally of its own, which only it writes, so a request takes
    no lock: 0.8 us a hit, against 1.4 us with a lock and a shared ``Counter`` (measured
    alone; the rules' whole cost is bench/routes.py's). The page adds the tallies up.
    """

    def __init__(self) -> None:
        self.local = threading.local()
        self.tallies: list[tuple[threading.Thread, _Tally]] = []
        self.lock = threading.Lock()  # for the list of tallies

    def hit(self, key: str, now: float | None = None, what: str = REQUESTS) -> None:
        minute = int((time.time() if now is None else now) // 60)
        try:
            tally: _Tally = self.local.tally
        except AttributeError:
            tally = self.local.tally = _Tally()
            with self.lock:
                self.tallies.append((threading.current_thread(), tally))
        if minute != tally.minute:
            for old in [counted for counted in tally if counted[0] <= minute - MINUTES]:
                del tally[old]
            tally.minute = minute
        counted = (minute, what, key)
        tally[counted] = tally.get(counted, 0) + 1

    def totals(self, now: float | None = None) -> dict[tuple[int, str, str], int]:
        """The threads' counts of the last minutes, added up, by (minute, what, rule)."""
        minute = int((time.time() if now is None else now) // 60)
        with self.lock:
            # A thread that has ended and counted nothing of the last minutes is forgotten.
            self.tallies = [(thread, tally) for thread, tally in self.tallies
                            if thread.is_alive() or tally.minute > minute - MINUTES]
            tallies = [tally.copy() for _, tally in self.tallies]  # copy() holds the GIL: whole
        totals: dict[tuple[int, str, str], int] = {}
        for tally in tallies:
            for counted, n in tally.items():
                if counted[0] > minute - MINUTES:
                    totals[counted] = totals.get(counted, 0) + n
        return totals

    def series(self, key: str, now: float | None = None, what: str = REQUESTS,
               totals: Mapping[tuple[int, str, str], int] | None = None) -> list[int]:
        """Requests (or fallbacks, or canary requests) a minute, oldest first, the current
        minute last (of ``totals``, else of :meth:`totals`)."""
        minute = int((time.time() if now is None else now) // 60)
        totals = self.totals(now) if totals is None else totals
        return [totals.get((m, what, key), 0) for m in range(minute - MINUTES + 1, minute + 1)]


#: How often each worker writes its counts for the others (seconds).
PERIOD = 1.0


class Board:
    """The page's counts shared by the workers of one server (``GATEWAY_MIGRATION_DIR``).

    Each worker keeps its counts in memory, and a thread of its own writes them, each
    :data:`PERIOD` and at exit, to a file of its own in the directory (written aside,
    then renamed over, so a reader sees a whole file). The worker that renders the page adds the other
    files to its own counts: the others' are up to a second old. The files of workers that
    have ended stay, so that their counts keep counting, until the server's directory
    goes (``gateway serve`` makes a fresh one and removes it at exit).
    """

    def __init__(self, directory: Path, traffic: Traffic, shadow_counts: Callable[[], dict[str, dict[str, int]]]
                 ) -> None:
        self.directory = directory
        self.traffic = traffic
        self.shadow_counts = shadow_counts
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.name = ""
        self._named()
        os.register_at_fork(after_in_child=self._forked)
        atexit.register(self.close)
        # A multiprocessing worker (uvicorn's, Granian's) ends with os._exit after its
        # finalizers: atexit does not run there, this does.
        multiprocessing.util.Finalize(self, self.close, exitpriority=0)

    def _named(self) -> None:
        # The pid and the start: a later worker with the same pid does not overwrite this one.
        self.name = f"{os.getpid()}-{time.time_ns()}.json"

    def _forked(self) -> None:
        # A thread does not survive a fork (a server that imports the app, then forks).
        self._named()
        if self.thread is not None:
            self.thread = None
            self.start()

    def start(self) -> None:
        """Start writing this worker's counts (again in a forked worker)."""
        with self.lock:
            if self.thread is None:
                self.thread = threading.Thread(target=self._write_each_period, name="gateway-migration-board",
                                               daemon=True)
                self.thread.start()

    def stop(self) -> None:
        """Stop writing (the thread ends within :data:`PERIOD`)."""
        self.stopped.set()

    def close(self) -> None:
        """At exit: stop, and write the counts of the last moments, if this worker wrote any."""
        self.stop()
        if self.thread is None:
            return
        self.thread.join(PERIOD)  # not two writers of one file
        try:
            self.write(self.counts())
        except Exception:  # the directory may be gone already
            logger.debug("Could not write the migration page's counts to %s.", self.directory, exc_info=True)

    def _write_each_period(self) -> None:
        written = None
        while not self.stopped.wait(PERIOD):
            try:
                counts = self.counts()
                if counts != written:
                    self.write(counts)
                    written = counts
            except Exception:  # a full disk, a directory removed at exit: try again later
                logger.debug("Could not write the migration page's counts to %s.", self.directory, exc_info=True)

    def counts(self) -> dict[str, Any]:
        return {"traffic": [[*counted, n] for counted, n in sorted(self.traffic.totals().items())],
                "shadow": self.shadow_counts()}

    def write(self, counts: dict[str, Any]) -> None:
        aside = self.directory / f".{self.name}.tmp"
        aside.write_text(json.dumps(counts))
        os.replace(aside, self.directory / self.name)

    def others(self) -> tuple[dict[tuple[int, str, str], int], dict[str, Counter[str]]]:
        """The other workers' counts, summed: traffic by (minute, what, rule), and shadow
        outcomes by rule."""
        traffic: dict[tuple[int, str, str], int] = {}
        shadow: dict[str, Counter[str]] = {}
        for path in self.directory.glob("*.json"):
            if path.name == self.name:
                continue
            try:
                counts = json.loads(path.read_text())
            except (OSError, ValueError):  # gone with its directory; never half-written
                continue
            for minute, what, key, n in counts["traffic"]:
                traffic[minute, what, key] = traffic.get((minute, what, key), 0) + n
            for key, outcomes in counts["shadow"].items():
                shadow.setdefault(key, Counter()).update(outcomes)
        return traffic, shadow


