"""Compositions a user might pick instead of the gateway, all served on uvicorn.

Each mounts the same three WSGI apps (Flask at ``/flask``, Django at ``/django``, the
slow view at ``/slow``); a2wsgi gets the gateway's pool size (``GATEWAY_THREADS``)
rather than its default of 10 threads, so that only the composition differs::

    uvicorn --factory bench.peers:starlette_mount
"""

from __future__ import annotations

from typing import Any

from gateway.core.config import Config, configure_apps


def _apps() -> dict[str, Any]:
    configure_apps(Config.from_env())
    from bench.apps import slow_app
    from django_hello.wsgi import application as django_app
    from flask_hello import app as flask_app

    return {"/flask": flask_app, "/django": django_app, "/slow": slow_app}


def asgiref_dispatcher() -> Any:
    """asgiref's WsgiToAsgi around Werkzeug's DispatcherMiddleware."""
    from asgiref.wsgi import WsgiToAsgi
    from werkzeug.exceptions import NotFound
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    return WsgiToAsgi(DispatcherMiddleware(NotFound(), _apps()))  # type: ignore[no-untyped-call]


def starlette_mount() -> Any:
    """Starlette, one Mount per app, each wrapped in a2wsgi's WSGIMiddleware."""
    from a2wsgi import WSGIMiddleware
    from starlette.applications import Starlette
    from starlette.routing import Mount

    threads = Config.from_env().threads
    wrapped: dict[str, Any] = {prefix: WSGIMiddleware(app, workers=threads) for prefix, app in _apps().items()}
    routes = [Mount(prefix, app=app) for prefix, app in wrapped.items()]
    return Starlette(routes=routes)


def hypercorn_dispatcher() -> Any:
    """Hypercorn's DispatcherMiddleware over a2wsgi's WSGIMiddleware (one per app)."""
    from a2wsgi import WSGIMiddleware
    from hypercorn.middleware import DispatcherMiddleware

    threads = Config.from_env().threads
    mounts: dict[str, Any] = {prefix: WSGIMiddleware(app, workers=threads) for prefix, app in _apps().items()}
    return DispatcherMiddleware(mounts)
