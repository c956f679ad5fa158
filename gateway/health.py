"""``/healthz`` and ``/readyz``: outside every app's URL space, JSON bodies.

- ``/healthz``: the process is alive and serving; touches nothing else
  (:data:`gateway.replies.HEALTHY`, answered by the pipeline itself).
- ``/readyz``: 503 ``{"status": "draining"}`` once shutdown has begun; otherwise every
  WSGI mount answers a ``GET`` of its root with a status below 500, and every database
  Django is configured with accepts a ``SELECT 1``. 503 otherwise, with the failing part
  named::

      {"status": "fail", "checks": {"/flask": "ok", "/django": "ok",
                                    "database:default": "fail: OperationalError: ..."}}

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
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Any

from werkzeug.test import EnvironBuilder

from gateway.replies import Reply, json_reply
from gateway.types import WSGIApp

if TYPE_CHECKING:
    from gateway.pipeline import Pipeline

DRAINING = json_reply(503, json.dumps({"status": "draining", "checks": {}}).encode())


def busy(timeout: float) -> Reply:
    """The 503 for a readiness check still running after ``timeout`` seconds."""
    return json_reply(503, json.dumps({"status": "busy", "checks": {},
                                       "detail": f"the check took longer than {timeout:g} s"}).encode())


class ReadinessProbe:
    """Run :func:`readiness` on a thread of its own, one check at a time, with a timeout."""

    def __init__(self, pipeline: Pipeline, apps: Mapping[str, WSGIApp], timeout: float) -> None:
        self.pipeline = pipeline
        self.apps = apps
        self.timeout = timeout
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-readyz")
        self.lock = threading.Lock()
        self.running: Future[Reply] | None = None

    def start(self) -> Future[Reply]:
        """The check under way, or a new one."""
        with self.lock:
            if self.running is None or self.running.done():
                self.running = self.executor.submit(readiness, self.pipeline, self.apps)
            return self.running

    def check(self) -> Reply:
        """Blocking: for a WSGI server's thread."""
        if self.pipeline.draining:
            return DRAINING
        try:
            return self.start().result(self.timeout)
        except FutureTimeout:
            return busy(self.timeout)

    async def check_async(self) -> Reply:
        """On the event loop: waits on the loop, not on a thread."""
        if self.pipeline.draining:
            return DRAINING
        future = asyncio.wrap_future(self.start())
        # asyncio.wait, not wait_for: a timeout must not cancel the check other
        # probes are waiting for.
        done, _ = await asyncio.wait({future}, timeout=self.timeout)
        return future.result() if done else busy(self.timeout)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def readiness(pipeline: Pipeline, apps: Mapping[str, WSGIApp]) -> Reply:
    """Answer ``/readyz``: probe each WSGI mount as mounted (``apps``) and each database."""
    if pipeline.draining:
        return DRAINING
    host = next((h for h in pipeline.config.allowed_hosts if h != "*" and not h.startswith(".")), "localhost")
    checks = {prefix: check_mount(prefix, app, host) for prefix, app in apps.items()}
    checks.update(check_databases())
    ok = all(v == "ok" for v in checks.values())
    return json_reply(200 if ok else 503, json.dumps({"status": "ok" if ok else "fail", "checks": checks}).encode())


def check_mount(prefix: str, app: WSGIApp, host: str) -> str:
    """GET the mount's root in process; any status below 500 is an answer."""
    environ = EnvironBuilder(path=prefix + "/", base_url=f"http://{host}").get_environ()
    environ["SCRIPT_NAME"], environ["PATH_INFO"] = prefix, "/"
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
    """``SELECT 1`` on each of Django's databases, if Django is set up in this process."""
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
        except Exception as exc:
            checks[f"database:{alias}"] = f"fail: {type(exc).__name__}: {str(exc).strip()[:200]}"
        finally:
            connection.close()
    return checks
