"""Tracing on `gateway serve` (tests/integration/test_tracing.py has the rest, in process):
the SDK set up and exporting, an exporter it does not know refused in one line."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

pytestmark = pytest.mark.server


CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"

CLIENT_SPAN = "00f067aa0ba902b7"

TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"


def test_serve_sets_up_the_sdk_and_exports(start_gateway: Callable[..., Any]) -> None:
    """``gateway serve --tracing`` with no tracer provider of yours: the SDK's, exporting as
    ``OTEL_TRACES_EXPORTER`` says (here the console, into the server's log)."""
    import urllib.request

    gateway = start_gateway("--tracing", env={"OTEL_TRACES_EXPORTER": "console", "OTEL_BSP_SCHEDULE_DELAY": "100",
                                              "OTEL_SERVICE_NAME": "shop-gateway"})
    request = urllib.request.Request(gateway.url + "/flask/?name=Ada", headers={"traceparent": TRACEPARENT})
    with urllib.request.urlopen(request, timeout=10) as response:
        request_id = response.headers["X-Request-ID"]
    assert "  tracing   to standard output" in gateway.log  # the banner says where spans go
    log = gateway.wait_for(f'"gateway.request_id": "{request_id}"')
    assert '"name": "GET /flask"' in log
    assert f'"trace_id": "0x{CLIENT_TRACE}"' in log
    assert '"service.name": "shop-gateway"' in log


def test_serve_refuses_an_exporter_it_does_not_know(start_gateway: Callable[..., Any]) -> None:
    with pytest.raises(RuntimeError) as failed:
        start_gateway("--tracing", env={"OTEL_TRACES_EXPORTER": "zipkin"})
    assert 'gateway: error: OTEL_TRACES_EXPORTER="zipkin" is not one the gateway sets up: use otlp, console or ' \
           "none, or set up your own tracer provider (opentelemetry-instrument).\n" in str(failed.value)
    assert "Traceback" not in str(failed.value)
