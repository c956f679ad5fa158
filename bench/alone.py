"""Each benchmarked app served alone on uvicorn, through the gateway's own bridge.

The baseline for the gateway's overhead: the same ``WSGIBridge`` and the same pool size
(``GATEWAY_THREADS``, default 100), without the mount table, the mount policy or the
other app. Each factory imports only its own app, so the process holds one framework::

    uvicorn --factory bench.alone:flask_app
"""

from __future__ import annotations

import importlib
from concurrent.futures import ThreadPoolExecutor

from gateway.adapters.bridge import WSGIBridge
from gateway.core.config import Config, configure_apps


def _bridge(module_name: str, attr: str) -> WSGIBridge:
    config = Config.from_env()
    configure_apps(config)
    app = getattr(importlib.import_module(module_name), attr)
    return WSGIBridge(app, ThreadPoolExecutor(config.threads, thread_name_prefix="wsgi"))


def flask_app() -> WSGIBridge:
    """Serve flask_hello alone."""
    return _bridge("flask_hello", "app")


def django_app() -> WSGIBridge:
    """Serve django_hello alone."""
    return _bridge("django_hello.wsgi", "application")


def slow_app() -> WSGIBridge:
    """Serve the 50 ms view alone."""
    return _bridge("bench.apps", "slow_app")
