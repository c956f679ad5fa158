"""Test-only apps for the hardening and fault tests: views that echo, block, fail and stream.

They are mounted by the tests, beside the demo apps, never by the gateway's defaults:

- ``tests.apps.flaskfaults:app``: a Flask app, ``gateway serve --mount /faults=...``;
- ``tests.apps.django_settings``: django_hello's settings with ``tests.apps.django_urls``
  as the URLconf (django_hello's URLs plus test views under ``/test/``), selected with
  ``DJANGO_SETTINGS_MODULE=tests.apps.django_settings``.

What happens inside the server that a client cannot see (a slow view started, a response
closed, a streaming generator stopped) is appended, one line per event, to the file named
by ``GATEWAY_TEST_EVENTS``: a test polls for it instead of sleeping.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

#: ``gateway serve`` arguments and environment that bring in the test apps.
SERVE_ARGS = ("--mount", "/flask=flask_hello:app", "--mount", "/django=django_hello.wsgi:application",
              "--mount", "/faults=tests.apps.flaskfaults:app")
DJANGO_SETTINGS = "tests.apps.django_settings"

_lock = threading.Lock()


def apps_env(data_dir: Path) -> dict[str, str]:
    """The extra environment of a server running the test apps in ``data_dir``."""
    return {
        "DJANGO_SETTINGS_MODULE": DJANGO_SETTINGS,
        "GATEWAY_TEST_EVENTS": str(data_dir / "events.log"),
    }


def events(data_dir: Path) -> list[str]:
    """The events the test apps recorded so far in ``data_dir``."""
    try:
        return (data_dir / "events.log").read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []


def record(event: str) -> None:
    """Append one event line to the file named by ``GATEWAY_TEST_EVENTS``, if set."""
    path = os.environ.get("GATEWAY_TEST_EVENTS")
    if not path:
        return
    with _lock, open(path, "a", encoding="utf-8") as f:
        f.write(event + "\n")
