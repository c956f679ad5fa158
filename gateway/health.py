"""``/healthz`` and ``/readyz``: outside every app's URL space, JSON bodies.

- ``/healthz``: the process is alive and serving; touches nothing else
  (:data:`gateway.replies.HEALTHY`, answered by the pipeline itself).
- ``/readyz``: 503 ``{"status": "draining"}`` once shutdown has begun; otherwise every
  WSGI mount answers a ``GET`` of its root with a status below 500, and every database
  Django is configured with accepts a ``SELECT 1``. 503 otherwise, with the failing part
  named::

      {"status": "fail", "checks": {"/flask": "ok", "/django": "ok",
                                    "database:default": "fail: OperationalError: ..."}}

The check blocks (it calls the apps and the databases): the WSGI side runs it in the
request's thread, the ASGI side on the WSGI thread pool.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from werkzeug.test import EnvironBuilder

from gateway.replies import Reply, json_reply
from gateway.types import WSGIApp

if TYPE_CHECKING:
    from gateway.pipeline import Pipeline

DRAINING = json_reply(503, json.dumps({"status": "draining", "checks": {}}).encode())


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
