"""``/healthz`` and ``/readyz``: outside every app's URL space, JSON bodies.

- ``/healthz``: the process is alive and serving; touches nothing else.
- ``/readyz``: 503 ``{"status": "draining"}`` once SIGTERM started a drain; otherwise
  every WSGI mount answers a ``GET`` of its root with a status below 500,
  and every database Django is configured with accepts a ``SELECT 1``. 503 otherwise,
  with the failing part named::

      {"status": "fail", "checks": {"/flask": "ok", "/django": "ok",
                                    "database:default": "fail: OperationalError: ..."}}
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from werkzeug.test import EnvironBuilder

from gateway.headers import Drain
from gateway.types import Environ, StartResponse, WSGIApp


class Health:
    """WSGI app for the two health paths."""

    def __init__(self, apps: dict[str, WSGIApp], host: str) -> None:
        self.apps = apps  # prefix -> the WSGI app as mounted (with its mount policy)
        self.host = host

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/readyz" and Drain.active:
            body: dict[str, Any] = {"status": "draining", "checks": {}}
            status = "503 Service Unavailable"
        elif environ.get("PATH_INFO") == "/readyz":
            checks = self.readiness()
            ok = all(v == "ok" for v in checks.values())
            body = {"status": "ok" if ok else "fail", "checks": checks}
            status = "200 OK" if ok else "503 Service Unavailable"
        else:
            body, status = {"status": "ok"}, "200 OK"
        data = json.dumps(body).encode()
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data))),
                                ("Cache-Control", "no-store")])
        return [data]

    def readiness(self) -> dict[str, str]:
        """Run every check; map its name to ``ok`` or ``fail: <reason>``."""
        checks = {prefix: self.check_mount(prefix, app) for prefix, app in self.apps.items()}
        checks.update(check_databases())
        return checks

    def check_mount(self, prefix: str, app: WSGIApp) -> str:
        """GET the mount's root in process; any status below 500 is an answer."""
        environ = EnvironBuilder(path=prefix + "/", base_url=f"http://{self.host}").get_environ()
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
