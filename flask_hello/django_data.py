"""Read the Django project's data from Flask, in the same process, the way Django does.

When ``DJANGO_SETTINGS_MODULE`` is set (the gateway sets it), Django is set up once, at
app creation if nothing did it before, and every Flask request is bracketed with
``close_old_connections()``, as Django brackets its own requests (``request_started``
and ``request_finished``): a connection is closed at the end of the request, or kept
for reuse up to ``CONN_MAX_AGE`` and dropped when broken. Without Django the app still
runs; the pages that need it say what is missing.
"""

from __future__ import annotations

import os

from flask import Flask, current_app, request

NOT_CONFIGURED = (
    "This page reads the Django project's data: set DJANGO_SETTINGS_MODULE="
    "django_hello.settings (the gateway does) to turn it on."
)


def init_app(app: Flask) -> None:
    """Set Django up if it is configured, and manage its connections per request."""
    app.extensions["django"] = False
    if not os.environ.get("DJANGO_SETTINGS_MODULE"):
        app.logger.warning("Django is not configured: /greetings and ?lang= are off. %s", NOT_CONFIGURED)
        return
    import django
    from django.apps import apps
    from django.db import OperationalError, close_old_connections

    if not apps.ready:
        django.setup(set_prefix=False)
    app.extensions["django"] = True
    app.before_request(close_old_connections)
    app.teardown_request(lambda exc: close_old_connections())
    app.register_error_handler(OperationalError, _database_unavailable)


def _database_unavailable(exc: Exception) -> tuple[str, int, dict[str, str]]:
    """Answer 503, not 500, when the shared database cannot be reached or is locked."""
    current_app.logger.warning("Database unavailable for %s: %s", request.path, str(exc).strip()[:200])
    body = "Service Unavailable: the database cannot be reached; try again shortly.\n"
    return body, 503, {"Content-Type": "text/plain; charset=utf-8", "Retry-After": "5"}


def enabled(app: Flask) -> bool:
    """True if the app can read Django's data."""
    return bool(app.extensions.get("django"))
