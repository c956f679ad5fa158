"""``/healthz`` and ``/readyz``: outside every app's URL space, JSON bodies.

- ``/healthz``: the process is alive and serving; touches nothing else
  (:data:`gateway.replies.HEALTHY`, answered by the pipeline itself).
- ``/readyz``: 503 ``{"status": "draining"}`` once shutdown has begun; otherwise every
  mount answers a ``GET`` of its root with a status below 500 (ASGI mounts too: on the
  event loop under the ASGI entry point, through a2wsgi under the WSGI one), every
  database Django is configured with accepts a ``SELECT 1``, and every migration is
  applied. 503 otherwise, with the failing part named::

      {"status": "fail", "checks": {"/flask": "ok", "/django": "ok",
                                    "database:default": "fail: OperationalError: ...",
                                    "migrations": "fail: 18 migration(s) not applied, ..."}}

  The failing part's text goes to loopback and the trusted proxies only; any other client
  gets the verdicts, ``"fail"`` (:meth:`gateway.core.pipeline.Pipeline.readiness_for`).

The check blocks (it calls the apps and the databases), so it runs on a thread of its
own (:class:`ReadinessProbe`), never on the apps' pool: a busy pool cannot hold it up.
Probes that arrive while one runs wait for that one; one that takes longer than
``GATEWAY_READY_TIMEOUT`` answers 503 ``{"status": "busy"}`` rather than hang (a
database that accepts connections and never answers, say).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Any

from werkzeug.test import EnvironBuilder

from gateway.replies import Reply, json_reply
from gateway.types import WSGIApp

if TYPE_CHECKING:
    from gateway.core.pipeline import Pipeline

DRAINING = json_reply(503, json.dumps({"status": "draining", "checks": {}}).encode())


def busy(timeout: float) -> Reply:
    """The 503 for a readiness check still running after ``timeout`` seconds."""
    return json_reply(503, json.dumps({"status": "busy", "checks": {},
                                       "detail": f"the check took longer than {timeout:g} s"}).encode())


class ReadinessProbe:
    """Run :func:`run_checks` on a thread of its own, one check at a time, with a timeout."""

    def __init__(self, pipeline: Pipeline, apps: Mapping[str, WSGIApp], timeout: float) -> None:
        self.pipeline = pipeline
        self.apps = apps
        self.timeout = timeout
        self.lock = threading.Lock()
        self.running: Future[dict[str, str]] | None = None

    def start(self) -> Future[dict[str, str]]:
        """The check under way, or a new one on a thread of its own.

        A daemon thread, not a pool's: a check stuck on a database that never answers
        must not hold the process at exit (a pool's threads are joined then), or
        ``--graceful-timeout`` would no longer be a limit.
        """
        with self.lock:
            if self.running is None or self.running.done():
                future: Future[dict[str, str]] = Future()
                future.set_running_or_notify_cancel()

                def run() -> None:
                    try:
                        future.set_result(run_checks(self.pipeline, self.apps))
                    except BaseException as exc:  # handed to the waiters
                        future.set_exception(exc)

                threading.Thread(target=run, name="gateway-readyz", daemon=True).start()
                self.running = future
            return self.running

    def check(self) -> Reply:
        """Blocking: for a WSGI server's thread."""
        if self.pipeline.draining:
            return DRAINING
        try:
            return ready_reply(self.start().result(self.timeout))
        except FutureTimeout:
            return busy(self.timeout)

    async def check_async(self, more: Callable[[], Awaitable[dict[str, str]]] | None = None) -> Reply:
        """On the event loop: waits on the loop, not on a thread. ``more``: checks that
        run on the loop itself (the ASGI mounts), alongside the threaded ones."""
        if self.pipeline.draining:
            return DRAINING
        future = asyncio.wrap_future(self.start())
        waiting: set[asyncio.Future[dict[str, str]]] = {future}
        if more is not None:
            waiting.add(asyncio.ensure_future(more()))
        # asyncio.wait, not wait_for: a timeout must not cancel the check other
        # probes are waiting for.
        done, pending = await asyncio.wait(waiting, timeout=self.timeout)
        for task in pending - {future}:
            task.cancel()
        if pending:
            return busy(self.timeout)
        checks = future.result()
        for task in done - {future}:
            checks = {**checks, **task.result()}
        return ready_reply(checks)

    def close(self) -> None:
        """Nothing to stop: a check still running ends with the process."""


def run_checks(pipeline: Pipeline, apps: Mapping[str, WSGIApp]) -> dict[str, str]:
    """The blocking checks: each mount in ``apps``, each database, the migrations."""
    host = probe_host(pipeline)
    checks = {prefix: check_mount(prefix, app, host) for prefix, app in apps.items()}
    checks.update(check_databases())
    return checks


def ready_reply(checks: Mapping[str, str]) -> Reply:
    """200 when every check says ``ok``, else 503, with the checks."""
    ok = all(v == "ok" for v in checks.values())
    return json_reply(200 if ok else 503, json.dumps({"status": "ok" if ok else "fail", "checks": checks}).encode())


def probe_host(pipeline: Pipeline) -> str:
    """A host name the apps accept, for the probes' requests."""
    return next((h for h in pipeline.config.allowed_hosts if h != "*" and not h.startswith(".")), "localhost")


async def check_asgi_mount(prefix: str, app: Any, host: str, state: dict[str, Any] | None = None) -> str:
    """GET an ASGI mount's root on the event loop; any status below 500 is an answer."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
             "scheme": "http", "path": prefix + "/", "raw_path": (prefix + "/").encode(), "root_path": prefix,
             "query_string": b"", "headers": [(b"host", host.encode("latin-1"))],
             "client": ("127.0.0.1", 0), "server": (host, 80), "state": dict(state or {})}
    status: list[int] = []
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # nothing more: the probe does not go away
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    try:
        await app(scope, receive, send)
    except Exception as exc:
        return f"fail: {type(exc).__name__}: {exc}"
    code = status[-1] if status else 0
    return "ok" if 0 < code < 500 else f"fail: answered {code or 'nothing'}"


def check_mount(prefix: str, app: WSGIApp, host: str) -> str:
    """GET the mount's root in process; any status below 500 is an answer. A ``prefix``
    that is not a path (``app:shop``, an app of the route rules) is probed at ``/``."""
    script = prefix if prefix.startswith("/") else ""
    environ = EnvironBuilder(path=script + "/", base_url=f"http://{host}").get_environ()
    environ["SCRIPT_NAME"], environ["PATH_INFO"] = script, "/"
    status: list[str] = []

    def start_response(line: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        status.append(line)
        return lambda data: None

    try:
        result = app(environ, start_response)
        try:
            for _ in result:
                pass
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
    except Exception as exc:
        return f"fail: {type(exc).__name__}: {exc}"
    code = int(status[-1][:3]) if status else 0
    return "ok" if 0 < code < 500 else f"fail: answered {status[-1] if status else 'nothing'}"


def check_databases() -> dict[str, str]:
    """``SELECT 1`` on each of Django's databases, if Django is set up in this process,
    and, on the default one, that every migration is applied (a database never
    migrated answers ``SELECT 1``, then fails every page that reads a table)."""
    from django.apps import apps

    if not apps.ready:
        return {}
    from django.db import connections

    checks = {}
    for alias in connections:
        connection = connections[alias]
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
            checks[f"database:{alias}"] = "ok"
            if alias == "default":
                checks["migrations"] = check_migrations(connection)
        except Exception as exc:
            checks[f"database:{alias}"] = f"fail: {type(exc).__name__}: {str(exc).strip()[:200]}"
        finally:
            connection.close()
    return checks


def check_migrations(connection: Any) -> str:
    """``ok`` when every migration is applied, as Django's ``runserver`` checks it."""
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    if not plan:
        return "ok"
    first = plan[0][0]
    return f"fail: {len(plan)} migration(s) not applied, e.g. {first.app_label}.{first.name}: run gateway migrate"
