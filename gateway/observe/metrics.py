"""``/metrics``: the gateway's counts in Prometheus' text format, off unless asked for.

Turned on with ``gateway serve --metrics`` (or ``GATEWAY_METRICS=1``), it answers
``GET /metrics`` outside every app's URL space, like the health endpoints, to loopback
and the trusted proxies only (anyone else gets what the path would get without it). It
reports, under ``gateway_``:

========================================  ==============================================
``requests_total{mount,status}``          requests answered, by mount (``-``: the
                                          gateway itself) and status class (``2xx``)
``request_duration_seconds{mount}``       a histogram of the time to answer
``requests_in_flight``                    requests being answered now
``wsgi_threads``, ``wsgi_threads_busy``   the WSGI thread pool's size and the threads
                                          running an app now (under uvicorn)
``wsgi_thread_wait_seconds``              a histogram of the wait for a free thread
``refusals_total{reason}``                the gateway's own 4xx answers, by reason
``route_fallbacks_total{rule}``,          the route rules' fallbacks taken and requests
``canary_requests_total{rule}``           sent to a canary
``shadow_total{rule,outcome}``            shadow comparisons: compared, equal,
                                          different, noise, dropped, error, timeout
========================================  ==============================================

With several worker processes the counts are the sum over all of them, in
``prometheus_client``'s multiprocess mode: each worker writes its values to files in
``PROMETHEUS_MULTIPROC_DIR``, and the worker that answers a scrape reads them all.
``gateway serve --metrics`` makes that directory (a fresh one per run, removed at exit)
unless the variable is set; under gunicorn, set it to an empty directory yourself. The
gauges count live processes only: the files of a worker that has exited are removed at
the next scrape.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from gateway.replies import Reply

PATH = "/metrics"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Time to answer, in seconds: Prometheus' default buckets.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
#: The wait for a WSGI thread: most are well under a millisecond.
WAIT_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)
_LIVE_FILE = re.compile(r"gauge_live\w+?_(\d+)\.db")
_STATUS_CLASSES = {n: f"{n}xx" for n in range(1, 6)}


def multiprocess_dir() -> str | None:
    """``PROMETHEUS_MULTIPROC_DIR`` if this process writes its values there: set before
    ``prometheus_client`` chose its value class (it chooses once, at import)."""
    from prometheus_client import values

    directory = os.environ.get(MULTIPROC_ENV)
    return directory if directory and values.ValueClass is not values.MutexValue else None


def prepare_directory() -> str:
    """Before the workers start: the multiprocess directory, a fresh one unless
    ``PROMETHEUS_MULTIPROC_DIR`` names one; raises ValueError with one sentence if
    that is not a writable directory."""
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        path = Path(given)
        if not path.is_dir() or not os.access(path, os.W_OK | os.X_OK):
            raise ValueError(f"{MULTIPROC_ENV}={given} is not a writable directory: create it, empty, or unset "
                             "the variable and the gateway makes one.")
        return given
    directory = tempfile.mkdtemp(prefix="gateway-metrics-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    os.environ[MULTIPROC_ENV] = directory
    return directory


class Metrics:
    """The gateway's metrics, in a registry of their own (each gateway in a test has one).

    The hot paths cache the labelled children: ``labels()`` takes a lock and checks its
    arguments on every call.
    """

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.directory = multiprocess_dir()
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("gateway_requests", "Requests answered, by mount and status class.",
                                ["mount", "status"], registry=registry)
        self.latency = Histogram("gateway_request_duration_seconds", "Time to answer a request, by mount.",
                                 ["mount"], buckets=LATENCY_BUCKETS, registry=registry)
        self.in_flight = Gauge("gateway_requests_in_flight", "Requests being answered now.",
                               multiprocess_mode="livesum", registry=registry)
        self.threads = Gauge("gateway_wsgi_threads", "WSGI threads (GATEWAY_THREADS, per worker, summed).",
                             multiprocess_mode="livesum", registry=registry)
        self.threads_busy = Gauge("gateway_wsgi_threads_busy", "WSGI threads running an app now.",
                                  multiprocess_mode="livesum", registry=registry)
        self.thread_wait = Histogram("gateway_wsgi_thread_wait_seconds", "Wait for a free WSGI thread.",
                                     buckets=WAIT_BUCKETS, registry=registry)
        self.refusals = Counter("gateway_refusals", "The gateway's own 4xx answers, by reason.",
                                ["reason"], registry=registry)
        self.fallbacks = Counter("gateway_route_fallbacks", "Fallbacks taken, by route rule.",
                                 ["rule"], registry=registry)
        self.canaries = Counter("gateway_canary_requests", "Requests sent to a canary, by route rule.",
                                ["rule"], registry=registry)
        self.shadow = Counter("gateway_shadow", "Shadow comparisons, by route rule and outcome.",
                              ["rule", "outcome"], registry=registry)
        self.rollout_share = Gauge("gateway_rollout_share", "A rollout's canary share now (per cent), by rule.",
                                   ["rule"], multiprocess_mode="livemax", registry=registry)
        self.rollout_responses = Counter("gateway_rollout_responses", "Answers of a rollout's arms, by rule, arm "
                                         "(baseline, canary), step (its share) and status class.",
                                         ["rule", "arm", "step", "status"], registry=registry)
        self._requests: dict[tuple[str, int], Any] = {}
        self._latency: dict[str, Any] = {}

    # -- requests

    def started(self) -> None:
        self.in_flight.inc()

    def finished(self, mount: str, status: int, seconds: float, *, in_flight: bool = True) -> None:
        """A request answered (``status`` 0: none was sent); ``in_flight``: it was counted
        by :meth:`started` (a scrape of ``/metrics`` is not: it would always see itself)."""
        if in_flight:
            self.in_flight.dec()
        klass = status // 100
        child = self._requests.get((mount, klass))
        if child is None:
            child = self._requests[(mount, klass)] = self.requests.labels(mount, _STATUS_CLASSES.get(klass, "other"))
        child.inc()
        timer = self._latency.get(mount)
        if timer is None:
            timer = self._latency[mount] = self.latency.labels(mount)
        timer.observe(seconds)

    def refused(self, reason: str) -> None:
        self.refusals.labels(reason).inc()

    # -- WSGI threads

    def pool(self, size: int) -> None:
        self.threads.inc(size)

    def thread_started(self, waited: float) -> None:
        self.threads_busy.inc()
        self.thread_wait.observe(waited)

    def thread_done(self) -> None:
        self.threads_busy.dec()

    # -- route rules

    def route_event(self, kind: str, rule: str, outcomes: tuple[str, ...] = ()) -> None:
        """A route rule's fallback, canary request or shadow outcomes."""
        if kind == "fallback":
            self.fallbacks.labels(rule).inc()
        elif kind == "canary":
            self.canaries.labels(rule).inc()
        elif kind == "rollout":  # outcomes: arm, step, status class
            self.rollout_responses.labels(rule, *outcomes).inc()
        elif kind == "rollout_share":  # outcomes: the share
            self.rollout_share.labels(rule).set(float(outcomes[0]))
        else:
            for outcome in outcomes:
                self.shadow.labels(rule, outcome).inc()

    # -- the scrape

    def render(self) -> Reply:
        """The scrape: every worker's values in multiprocess mode, else this process's."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        registry = self.registry
        if self.directory is not None:
            forget_dead_workers(self.directory)
            registry = CollectorRegistry()
            registry.register(WorkerFiles(self.directory))
        body = generate_latest(registry)
        return Reply(200, (("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(body))),
                           ("Cache-Control", "no-store")), body)


class WorkerFiles:
    """prometheus_client's ``MultiProcessCollector``, less two races that fail a scrape
    (a 500) while workers start or exit:

    - a worker creates its file empty and sizes it a moment later: read in between, it
      raises ``struct.error`` (prometheus/client_python#1199; the fix, #1206, is not in
      0.26). Empty files are passed over: they hold nothing yet.
    - a dead worker's gauge file removed between the listing and the reading raises
      ``FileNotFoundError`` (prometheus/client_python#425): the files are listed again.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def collect(self) -> Any:
        from prometheus_client.multiprocess import MultiProcessCollector

        for _ in range(2):  # then a third time, letting the error through
            with contextlib.suppress(FileNotFoundError):
                return MultiProcessCollector.merge(self.files())  # type: ignore[no-untyped-call]
        return MultiProcessCollector.merge(self.files())  # type: ignore[no-untyped-call]

    def files(self) -> list[str]:
        """The workers' files that hold anything yet."""
        files = []
        for entry in os.scandir(self.directory):
            with contextlib.suppress(FileNotFoundError):
                if entry.name.endswith(".db") and entry.stat().st_size > 0:
                    files.append(entry.path)
        return files


def forget_dead_workers(directory: str) -> None:
    """Remove the live-gauge files of workers that have exited (what gunicorn's
    ``child_exit`` hook does with ``mark_process_dead``, for any server): a worker killed
    mid-request would otherwise count as in flight for ever."""
    from prometheus_client.multiprocess import mark_process_dead

    pids = {int(m.group(1)) for name in os.listdir(directory) if (m := _LIVE_FILE.fullmatch(name))}
    for pid in pids - {os.getpid()}:
        if not _alive(pid):
            with contextlib.suppress(OSError):
                mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):  # no such process, or another user's now
        return False
    return True
