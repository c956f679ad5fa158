"""OpenTelemetry tracing, an optional extra: ``pip install "flask-django-gateway[tracing]"``.

Turned on with ``gateway serve --tracing`` (or ``GATEWAY_TRACING=1``). Each request gets
a server span, ``GET /flask``, that carries the mount, the request ID and the status::

    gateway.mount = "/flask"            gateway.request_id = "5f0c...0001"
    http.request.method = "GET"         url.path = "/flask/"
    http.response.status_code = 200     client.address = "127.0.0.1"

The client's W3C ``traceparent`` (and ``tracestate``), read with OpenTelemetry's global
propagator, is the span's parent. The apps are given the gateway's span instead, in
the same headers and as the current span of the request's context, so that their own
spans (Flask's and Django's instrumentations, which read the headers, or a view's
``tracer.start_as_current_span``) join the trace under it.

Spans go to OpenTelemetry's global tracer provider. When nothing has set one (no
``opentelemetry-instrument``, no code of yours), the gateway sets up the SDK's, exporting
as ``OTEL_TRACES_EXPORTER`` says: ``otlp`` (the default, over HTTP to
``OTEL_EXPORTER_OTLP_ENDPOINT``), ``console`` or ``none``; ``OTEL_SERVICE_NAME`` names
the service (default ``gateway``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, Protocol

from gateway import __version__
from gateway.methods import OTHER, method_label

EXTRA = ('install the "tracing" extra: pip install "flask-django-gateway[tracing]" '
         '(from a clone: pip install ".[tracing]")')
#: The headers that carry a trace across a hop (W3C Trace Context), as the apps see them.
TRACE_HEADERS = ("traceparent", "tracestate")


class Head(Protocol):
    """What a span reads of the pipeline's request head (``gateway.core.pipeline.Head``)."""

    @property
    def method(self) -> str: ...
    @property
    def fetch(self) -> Callable[[str], str | None] | None: ...


class Decision(Protocol):
    """What a span reads of the pipeline's decision."""

    @property
    def mount(self) -> object: ...
    @property
    def mount_label(self) -> str: ...
    @property
    def script_name(self) -> str: ...
    @property
    def path_info(self) -> str: ...
    @property
    def scheme(self) -> str: ...
    @property
    def client(self) -> str | None: ...
    @property
    def host(self) -> str | None: ...
    @property
    def request_id(self) -> str: ...


class Request(Protocol):
    """A request's state (``gateway.core.pipeline.Request``): what a span reads, and the
    two fields it sets."""

    span: Any
    trace_headers: tuple[tuple[str, str], ...]

    @property
    def head(self) -> Head: ...
    @property
    def status(self) -> int: ...
    @property
    def decision(self) -> Decision: ...
    @property
    def started(self) -> float: ...


class _HeadGetter:
    """OpenTelemetry's ``Getter`` over a request head's header lookup."""

    def get(self, carrier: Callable[[str], str | None], key: str) -> list[str] | None:
        value = carrier(key)
        return [value] if value is not None else None

    def keys(self, carrier: Callable[[str], str | None]) -> list[str]:
        return []


def _no_headers(name: str) -> str | None:
    return None


class Tracing:
    """Start and end each request's span; raises ValueError (one sentence) without OpenTelemetry."""

    def __init__(self) -> None:
        try:
            from opentelemetry import context, propagate, trace
            from opentelemetry.trace import SpanKind, Status, StatusCode
        except ImportError:
            raise ValueError(f"GATEWAY_TRACING=1 (--tracing) needs OpenTelemetry: {EXTRA}.") from None
        if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            set_up_sdk()
        self.tracer = trace.get_tracer("gateway", __version__)
        self.trace, self.context, self.propagate = trace, context, propagate
        self.kind, self.error = SpanKind.SERVER, Status(StatusCode.ERROR)
        self.getter = _HeadGetter()

    def start(self, request: Request) -> None:
        """Start the request's span, make it current, and note the headers the app gets."""
        head, decision = request.head, request.decision
        parent = self.propagate.extract(head.fetch or _no_headers, getter=self.getter)  # type: ignore[arg-type]
        label = decision.mount_label
        path = decision.script_name + decision.path_info
        method = method_label(head.method)
        attributes = {"http.request.method": method, "url.path": path.encode("latin-1").decode("utf-8",
                                                                                               "replace"),
                      "url.scheme": decision.scheme, "gateway.mount": label, "gateway.request_id": decision.request_id}
        if method != head.method:  # a method not HTTP's, or in lower case: as it came
            attributes["http.request.method_original"] = head.method
        if decision.client is not None:
            attributes["client.address"] = decision.client
        if decision.host is not None:
            attributes["server.address"] = decision.host
        named = "HTTP" if method == OTHER else method  # OpenTelemetry's name for a method it does not know
        span = self.tracer.start_span(f"{named} {label}" if decision.mount is not None else named,
                                      context=parent, kind=self.kind, attributes=attributes,
                                      start_time=time.time_ns() - int((time.perf_counter() - request.started) * 1e9))
        current = self.trace.set_span_in_context(span, parent)
        # Set, not reset, as the request ID is: the request's task (ASGI) or the server's
        # next request on this thread (WSGI) sets it again.
        self.context.attach(current)
        carrier: dict[str, str] = {}
        self.propagate.inject(carrier, context=current)
        request.span = span
        request.trace_headers = tuple((name, carrier[name]) for name in TRACE_HEADERS if name in carrier)

    def end(self, request: Request) -> None:
        span, status = request.span, request.status
        if span is None:
            return
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_status(self.error)
        span.end()


def set_up_sdk() -> None:
    """Set the SDK's tracer provider, exporting as ``OTEL_TRACES_EXPORTER`` says."""
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
    except ImportError:
        raise ValueError(f"GATEWAY_TRACING=1 (--tracing) needs the OpenTelemetry SDK to export spans: {EXTRA}.") \
            from None
    wanted = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() or "otlp"
    exporter: SpanExporter | None
    if wanted == "none":
        exporter = None
    elif wanted == "console":
        exporter = ConsoleSpanExporter()
    elif wanted == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise ValueError(f"OTEL_TRACES_EXPORTER=otlp needs the OTLP exporter: {EXTRA}.") from None
        exporter = OTLPSpanExporter()
    else:
        raise ValueError(f'OTEL_TRACES_EXPORTER="{wanted}" is not one the gateway sets up: use otlp, console or '
                         "none, or set up your own tracer provider (opentelemetry-instrument).")
    service = os.environ.get("OTEL_SERVICE_NAME", "").strip() or "gateway"
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)


def describe() -> str:
    """Where the spans go, for the banner: a tracer provider of yours, or the exporter
    :func:`set_up_sdk` will set up."""
    from opentelemetry import trace

    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return "to your tracer provider"
    wanted = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() or "otlp"
    if wanted == "otlp":
        base = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318").rstrip("/")
        endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or base + "/v1/traces"
        return f"OTLP to {endpoint}"
    return {"console": "to standard output", "none": "nowhere (OTEL_TRACES_EXPORTER=none)"}.get(wanted, wanted)


def installed() -> bool:
    """Whether the OpenTelemetry API can be imported (the ``tracing`` extra)."""
    try:
        import opentelemetry.trace  # noqa: F401
    except ImportError:
        return False
    return True

