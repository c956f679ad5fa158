"""Benchmark-only apps, mounted next to the hello apps.

``slow_app`` blocks its worker thread for 50 ms, like a view waiting on a database or
an upstream API; it measures how well a server keeps many such requests in flight
(64 connections / 50 ms = 1280 req/s at best)::

    gateway serve --mount /slow=bench.apps:slow_app
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from gateway.types import Environ, StartResponse

SLOW_SECONDS = 0.05
_BODY = b"slept 50 ms\n"


def slow_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Block the calling thread for 50 ms, then answer a short text."""
    time.sleep(SLOW_SECONDS)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(_BODY)))])
    return [_BODY]
