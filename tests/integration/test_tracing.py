"""OpenTelemetry tracing (``GATEWAY_TRACING``), through both entry points in process with
the SDK's in-memory exporter (tests/system/test_tracing_servers.py: over a real server with the
console exporter).

The apps' own spans come from OpenTelemetry's WSGI instrumentation (what Flask's
instrumentation is built on) around the real Flask and Django apps, and from a view
that starts a span of its own in the request's context.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry import baggage, trace
from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from gateway import __version__
from gateway.core.config import Config
from gateway.core.mounts import Mount, MountTable
from gateway.observe.tracing import Tracing
from tests.entries import ENTRIES, Send, builder, config_with

EXPORTER = InMemorySpanExporter()
if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
    _provider = TracerProvider()
    _provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(_provider)

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"


def view_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """A view that starts a span of its own in the request's context, and says what it was given."""
    with trace.get_tracer("tests.view").start_as_current_span("view work") as span:
        context = span.get_span_context()
        body = json.dumps({"traceparent": environ.get("HTTP_TRACEPARENT"),
                           "tracestate": environ.get("HTTP_TRACESTATE"),
                           "view_trace": f"{context.trace_id:032x}",
                           "baggage": baggage.get_baggage("user")}).encode()
    status = "500 Internal Server Error" if environ.get("PATH_INFO") == "/fail" else "200 OK"
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


@pytest.fixture(scope="module")
def traced_table(table: MountTable) -> MountTable:  # type: ignore[no-untyped-def]
    flask, django = table.mounts["/flask"].app, table.mounts["/django"].app
    return MountTable([*table, Mount("/view", "tests.integration.test_tracing:view_app", "wsgi", view_app),
                       Mount("/tflask", "flask_hello (instrumented)", "wsgi", OpenTelemetryMiddleware(flask)),
                       Mount("/tdjango", "django_hello (instrumented)", "wsgi", OpenTelemetryMiddleware(django))])


@pytest.fixture(params=sorted(ENTRIES))
def make(request: pytest.FixtureRequest, traced_table: MountTable) -> Iterator[Callable[..., Send]]:
    EXPORTER.clear()
    yield from builder(request.param, traced_table)


def spans() -> list[ReadableSpan]:
    return list(EXPORTER.get_finished_spans())


def gateway_span() -> ReadableSpan:
    found = [s for s in spans() if s.instrumentation_scope is not None and s.instrumentation_scope.name == "gateway"]
    assert len(found) == 1, [s.name for s in spans()]
    return found[0]


def hex_ids(span: ReadableSpan) -> tuple[str, str]:
    context = span.get_span_context()
    assert context is not None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def traceparent_of(span: ReadableSpan) -> str:
    """The W3C header that names ``span`` as the parent."""
    trace_id, span_id = hex_ids(span)
    context = span.get_span_context()
    assert context is not None
    return f"00-{trace_id}-{span_id}-{int(context.trace_flags):02x}"


def test_each_request_gets_a_server_span_with_its_mount_and_request_id(make: Callable[..., Send]) -> None:
    answer = make(tracing=True)("GET", "/view/x?q=1")
    assert answer.status == 200
    span = gateway_span()
    assert (span.name, span.kind, span.parent) == ("GET /view", SpanKind.SERVER, None)
    attributes = dict(span.attributes or {})
    assert attributes == {"http.request.method": "GET", "url.path": "/view/x", "url.scheme": "http",
                          "gateway.mount": "/view", "gateway.request_id": answer.get("X-Request-ID"),
                          "client.address": "127.0.0.1", "server.address": "localhost:8000",
                          "http.response.status_code": 200}
    assert span.status.status_code is StatusCode.UNSET


def test_the_clients_traceparent_is_the_parent_and_the_app_is_given_the_gateways_span(
        make: Callable[..., Send]) -> None:
    seen = make(tracing=True)("GET", "/view/x", {"traceparent": TRACEPARENT, "tracestate": "vendor=1"}).json()
    span = gateway_span()
    trace_id, span_id = hex_ids(span)
    assert trace_id == CLIENT_TRACE
    assert span.parent is not None and f"{span.parent.span_id:016x}" == CLIENT_SPAN and span.parent.is_remote
    assert seen["traceparent"] == f"00-{CLIENT_TRACE}-{span_id}-01"  # the gateway's span, not the client's
    assert traceparent_of(span) == seen["traceparent"]
    assert seen["tracestate"] == "vendor=1"
    view = next(s for s in spans() if s.name == "view work")  # the view's own span, from the current context
    assert seen["view_trace"] == CLIENT_TRACE
    assert view.parent is not None and view.parent.span_id == span.get_span_context().span_id
    assert span.instrumentation_scope is not None and span.instrumentation_scope.version == __version__


def test_the_clients_baggage_reaches_the_views_context(make: Callable[..., Send]) -> None:
    """The gateway's span is set in the context the client's headers made, not in a new one."""
    seen = make(tracing=True)("GET", "/view/x", {"traceparent": TRACEPARENT, "baggage": "user=ada"}).json()
    assert seen["baggage"] == "ada"


@pytest.mark.parametrize(("path", "text"), [("/tflask/?name=Ada", b"Hello, Ada!"), ("/tdjango/", b"Hello, Django!")])
def test_the_apps_own_spans_join_the_trace(make: Callable[..., Send], path: str, text: bytes) -> None:
    answer = make(tracing=True)("GET", path, {"traceparent": TRACEPARENT})
    assert answer.status == 200 and text in answer.body
    span = gateway_span()
    apps = [s for s in spans() if s.instrumentation_scope is not None
            and s.instrumentation_scope.name == "opentelemetry.instrumentation.wsgi"]
    assert len(apps) == 1, [s.name for s in spans()]
    assert hex_ids(apps[0])[0] == CLIENT_TRACE
    assert apps[0].parent is not None and apps[0].parent.span_id == span.get_span_context().span_id
    # In the same process the instrumentation finds the gateway's span current, and makes
    # its own an internal one under it (a server span would be the hop's).
    assert apps[0].kind is SpanKind.INTERNAL


def test_a_5xx_marks_the_span_as_an_error(make: Callable[..., Send]) -> None:
    assert make(tracing=True)("GET", "/view/fail").status == 500
    span = gateway_span()
    assert span.status.status_code is StatusCode.ERROR
    assert (span.attributes or {})["http.response.status_code"] == 500


def test_the_gateways_own_answers_get_a_span_named_by_the_method(make: Callable[..., Send]) -> None:
    assert make(tracing=True)("GET", "/nowhere").status == 404
    span = gateway_span()
    assert (span.name, (span.attributes or {})["gateway.mount"]) == ("GET", "-")


def test_off_no_span_and_the_clients_traceparent_goes_through(make: Callable[..., Send]) -> None:
    seen = make()("GET", "/view/x", {"traceparent": TRACEPARENT}).json()
    assert seen["traceparent"] == TRACEPARENT
    assert not [s for s in spans() if s.name != "view work"]


def test_a_malformed_traceparent_starts_a_new_trace(make: Callable[..., Send]) -> None:
    seen = make(tracing=True)("GET", "/view/x", {"traceparent": "00-xyz-00f067aa0ba902b7-01"}).json()
    span = gateway_span()
    assert span.parent is None and hex_ids(span)[0] != CLIENT_TRACE
    assert seen["traceparent"] == traceparent_of(span)


def test_without_opentelemetry_one_line_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(ValueError, match=r'needs OpenTelemetry: install the "tracing" extra: pip install'):
        Tracing()


def test_the_setting_is_strict() -> None:
    assert Config.from_env({"GATEWAY_TRACING": "1"}).tracing is True
    assert Config.from_env({}).tracing is False
    with pytest.raises(ValueError, match="GATEWAY_TRACING"):
        Config.from_env({"GATEWAY_TRACING": "on please"})


def test_the_span_starts_when_the_request_did_and_names_an_undecodable_path(traced_table: MountTable) -> None:
    import time

    from gateway.core.pipeline import Head, Pipeline

    EXPORTER.clear()
    pipeline = Pipeline(traced_table, config_with(tracing=True))
    # The byte 0xFF, not UTF-8:
    head = Head(method="GET", path="/view/caf\xff", host="localhost:8000", client="127.0.0.1")
    before = time.time_ns()
    request = pipeline.begin(head, time.perf_counter() - 0.5)  # the head arrived half a second ago
    request.status = 200
    pipeline.done(request)
    span = gateway_span()
    assert span.start_time is not None and span.end_time is not None
    assert before - 0.6e9 < span.start_time < before - 0.4e9
    assert span.end_time - span.start_time >= 0.5e9
    assert (span.attributes or {})["url.path"] == "/view/caf\ufffd"


def test_the_banner_names_where_spans_go(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.observe import tracing

    monkeypatch.setattr(trace, "get_tracer_provider", lambda: trace.ProxyTracerProvider())
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    assert tracing.describe() == "OTLP to http://localhost:4318/v1/traces"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")
    assert tracing.describe() == "OTLP to http://collector:4318/v1/traces"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4318/in")
    assert tracing.describe() == "OTLP to http://traces:4318/in"
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    assert tracing.describe() == "to standard output"
    monkeypatch.undo()
    assert tracing.describe() == "to your tracer provider"  # this module set one up


class RecordingExporter(SpanExporter):
    """Stands for the OTLP exporter: keeps what it is given."""

    made: list[RecordingExporter] = []

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []
        RecordingExporter.made.append(self)

    def export(self, spans: Any) -> SpanExportResult:
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


#: What the console exporter printed (its default output is the standard output of import time).
PRINTED = io.StringIO()


class PrintingExporter(ConsoleSpanExporter):
    def __init__(self) -> None:
        super().__init__(out=PRINTED)


def sdk_set_up(monkeypatch: pytest.MonkeyPatch, **environ: str) -> TracerProvider:
    """Run ``set_up_sdk`` with ``environ``; return the provider it set, with one span ended
    and flushed through it (the global provider is left alone)."""
    from opentelemetry.exporter.otlp.proto.http import trace_exporter
    from opentelemetry.sdk.trace import export

    from gateway.observe import tracing

    for name in ("OTEL_TRACES_EXPORTER", "OTEL_SERVICE_NAME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(trace_exporter, "OTLPSpanExporter", RecordingExporter)
    monkeypatch.setattr(export, "ConsoleSpanExporter", PrintingExporter)
    RecordingExporter.made.clear()
    PRINTED.seek(0)
    PRINTED.truncate()
    provided: list[TracerProvider] = []
    monkeypatch.setattr(trace, "set_tracer_provider", provided.append)
    tracing.set_up_sdk()
    [provider] = provided
    provider.get_tracer("tests").start_span("GET /flask").end()
    provider.force_flush()
    provider.shutdown()
    return provider


@pytest.mark.parametrize("exporter", [None, "", " OTLP "])
def test_the_sdk_exports_over_otlp_by_default(monkeypatch: pytest.MonkeyPatch, exporter: str | None) -> None:
    environ = {} if exporter is None else {"OTEL_TRACES_EXPORTER": exporter}
    provider = sdk_set_up(monkeypatch, **environ)
    [otlp] = RecordingExporter.made
    assert [span.name for span in otlp.spans] == ["GET /flask"]
    assert provider.resource.attributes["service.name"] == "gateway"


def test_the_sdk_exports_to_the_console_as_the_service_named(monkeypatch: pytest.MonkeyPatch) -> None:
    sdk_set_up(monkeypatch, OTEL_TRACES_EXPORTER=" Console ", OTEL_SERVICE_NAME=" shop ")
    printed = json.loads(PRINTED.getvalue())
    assert (printed["name"], printed["resource"]["attributes"]["service.name"]) == ("GET /flask", "shop")
    assert RecordingExporter.made == []


def test_the_sdk_exports_nowhere_if_told(monkeypatch: pytest.MonkeyPatch) -> None:
    provider = sdk_set_up(monkeypatch, OTEL_TRACES_EXPORTER="none", OTEL_SERVICE_NAME="  ")
    assert RecordingExporter.made == [] and PRINTED.getvalue() == ""
    assert provider.resource.attributes["service.name"] == "gateway"


@pytest.mark.parametrize(("missing", "environ", "message"), [
    pytest.param("opentelemetry.sdk.trace", {}, 'GATEWAY_TRACING=1 (--tracing) needs the OpenTelemetry SDK to export '
                 'spans: install the "tracing" extra: pip install "flask-django-gateway[tracing]" (from a clone: '
                 'pip install ".[tracing]").', id="no-sdk"),
    pytest.param("opentelemetry.exporter.otlp.proto.http.trace_exporter", {}, 'OTEL_TRACES_EXPORTER=otlp needs the '
                 'OTLP exporter: install the "tracing" extra: pip install "flask-django-gateway[tracing]" (from a '
                 'clone: pip install ".[tracing]").', id="no-otlp"),
    pytest.param(None, {"OTEL_TRACES_EXPORTER": "Zipkin"}, 'OTEL_TRACES_EXPORTER="zipkin" is not one the gateway sets '
                 "up: use otlp, console or none, or set up your own tracer provider (opentelemetry-instrument).",
                 id="unknown"),
])
def test_what_the_sdk_cannot_set_up_is_one_sentence(monkeypatch: pytest.MonkeyPatch, missing: str | None,
                                                    environ: dict[str, str], message: str) -> None:
    from gateway.observe import tracing

    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    if missing is not None:
        monkeypatch.setitem(sys.modules, missing, None)
    monkeypatch.setattr(trace, "set_tracer_provider", lambda provider: pytest.fail("set up nonetheless"))
    with pytest.raises(ValueError) as refused:
        tracing.set_up_sdk()
    assert str(refused.value) == message


def test_the_banner_says_where_spans_go_for_each_exporter(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.observe import tracing

    monkeypatch.setattr(trace, "get_tracer_provider", lambda: trace.ProxyTracerProvider())
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    for wanted, said in [(" OTLP ", "OTLP to http://localhost:4318/v1/traces"),
                         ("", "OTLP to http://localhost:4318/v1/traces"),
                         ("None", "nowhere (OTEL_TRACES_EXPORTER=none)"), ("zipkin", "zipkin")]:
        monkeypatch.setenv("OTEL_TRACES_EXPORTER", wanted)
        assert tracing.describe() == said, wanted
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://OTEL-BOX/")
    assert tracing.describe() == "OTLP to http://OTEL-BOX/v1/traces"


def test_installed_says_whether_the_api_imports(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.observe import tracing

    assert tracing.installed() is True
    monkeypatch.setitem(sys.modules, "opentelemetry.trace", None)
    assert tracing.installed() is False
