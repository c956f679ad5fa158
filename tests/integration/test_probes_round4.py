"""Probes of issue 21's fourth round, in process: new cases of each class the outside
testers found (docs/hardening.md, "Fourth round"). The probes that need a real server
are in tests/test_probes_round4_servers.py."""

from __future__ import annotations

import importlib.util
import logging
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st
from werkzeug.test import Client

from gateway.adapters.wsgi import create_wsgi_app
from gateway.core.config import Config
from gateway.core.mounts import MountTable
from gateway.methods import OTHER, method_label
from gateway.migration.rollout import Visits
from gateway.serve import frameworks
from tests.entries import ENTRIES, Send, builder

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "migration"


def stdlib_email_message() -> ModuleType:
    """A fresh copy of :mod:`email.message`, as this Python ships it (the gateway replaces
    its ``_parseparam`` in this process)."""
    spec = importlib.util.find_spec("email.message")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def c_calls(work: Callable[[], Any]) -> Counter[str]:
    """The calls of C functions ``work()`` makes, by name: a count of steps, not a time."""
    calls: Counter[str] = Counter()

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event == "c_call":
            calls[getattr(arg, "__name__", "?")] += 1

    sys.setprofile(profile)
    try:
        work()
    finally:
        sys.setprofile(None)
    return calls


# -- U1: a Content-Type of many quoted ";" ------------------------------------------------------

def test_django_reads_a_content_type_of_many_quoted_semicolons_in_one_pass() -> None:
    """U1: ``Content-Type: multipart/form-data; charset=utf-8; a=";;;...;"`` (16 KB, under the
    16 KiB header limit). Django reads it with ``email.message._parseparam``, which counts
    the quotes from the parameter's start again at each ``;`` (python/cpython#136063): 32,000
    calls of ``str.count``, 0.3 s of a thread holding the GIL a request. Once the gateway
    has set the frameworks up, it is read in one pass, to the same parameters."""
    from django.utils.http import parse_header_parameters

    frameworks.set_up(Config())
    header = 'multipart/form-data; charset=utf-8; a="' + ";" * 16_000 + '"'
    parsed: list[Any] = []
    calls = c_calls(lambda: parsed.append(parse_header_parameters(header)))
    assert parsed == [("multipart/form-data", {"charset": "utf-8", "a": ";" * 16_000})]
    assert calls["count"] < 100, calls.most_common(3)


params = st.lists(st.sampled_from(['"', ";", "\\", "=", " ", "\t", "a", "B", "*", "'", "é", "\\\""]),
                  max_size=16).map("".join)


@given(params)
def test_the_one_pass_reading_is_the_stdlibs(value: str) -> None:
    """U1: :func:`frameworks.split_params` gives what the stdlib's ``_parseparam`` gives."""
    reference = stdlib_email_message()._parseparam
    for text in (value, "text/plain; " + value, f'a="{value}"; b={value}'):
        assert frameworks.split_params(text) == reference(text)


# -- U2: a sign-out token that is not ASCII -----------------------------------------------------

@pytest.mark.parametrize("token", ["é", "\u202e", "0" * 63 + "é"])
def test_a_signout_token_that_is_not_ascii_is_a_403(table: MountTable, token: str) -> None:
    """U2: ``POST /signout`` with ``signout_token=é`` (before: ``hmac.compare_digest`` raised
    ``TypeError`` on a str outside ASCII, a 500). It is a token that is not this session's."""
    from flask import Flask, make_response

    from gateway.migration.signin import DjangoSignIn, sign_out

    app = Flask("signout-unicode")
    DjangoSignIn(app)

    @app.post("/out")
    def out() -> Any:
        return sign_out(make_response("out"))

    client = app.test_client()
    assert client.post("/out", data={"signout_token": token}).status_code == 403
    raw = b"signout_token=%ff%fe" + quote(token).encode()  # not UTF-8 either: read with U+FFFD
    assert client.post("/out", data=raw, content_type="application/x-www-form-urlencoded").status_code == 403


# -- U3: the example shop and odd item numbers --------------------------------------------------

@pytest.fixture
def shop(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The migration example's legacy Flask shop, imported from its folder, with a session."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.setenv("FLASK_SECRET_KEY", "x" * 32)
    legacy_shop = __import__("legacy_shop")
    client = legacy_shop.app.test_client()
    page = client.get("/shop/items/1").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page)
    assert token is not None, page
    yield client, token[1]


@pytest.mark.parametrize("item", ["²", "\u0661", "٤", "9" * 5000, "-1", " 4", "4\n", ""])
def test_the_example_shop_refuses_an_item_number_it_cannot_read(shop: Any, item: str) -> None:
    """U3: ``POST /shop/cart`` with ``item=²`` (``isdigit()`` is true, ``int()`` raises),
    5,000 digits (over ``int()``'s 4,300) or another odd number (before: a 500 from the
    legacy app, and an Arabic-Indic digit was kept as a cart key of its own)."""
    client, token = shop
    answer = client.post("/shop/cart", data={"csrf_token": token, "item": item})
    assert answer.status_code == 400
    assert b"No such item" in answer.data


def test_the_example_shop_keeps_one_cart_line_an_item(shop: Any) -> None:
    """U3: ``04`` and ``4`` are the same item, one line of the cart."""
    client, token = shop
    for item in ("4", "04"):
        assert client.post("/shop/cart", data={"csrf_token": token, "item": item}).status_code == 303
    with client.session_transaction() as session:
        assert session["cart"] == {"4": 2}


def test_the_cart_ignores_keys_that_are_no_item() -> None:
    """U3: a cart (as a port reads the legacy session) with odd keys lists only its items."""
    sys.path.insert(0, str(EXAMPLE))
    try:
        from catalogue import cart_lines
    finally:
        sys.path.remove(str(EXAMPLE))
    lines, total = cart_lines({"²": 1, "9" * 5000: 1, "\u0661": 1, "2": 2, "x": 1})
    assert [(line.item.id, line.quantity) for line in lines] == [(2, 2)]
    assert str(total) == "79.00"


# -- U4: a cookie with no name ------------------------------------------------------------------

@pytest.fixture(scope="module")
def echo_table(table: MountTable) -> MountTable:
    return MountTable([*table, *MountTable.from_specs(["/echo=tests.thirdapp:echo_app"], defaults=False)])


@pytest.fixture(params=sorted(ENTRIES))
def make(request: pytest.FixtureRequest, echo_table: MountTable) -> Iterator[Callable[..., Send]]:
    yield from builder(request.param, echo_table)


@pytest.mark.parametrize(("cookie", "name"), [
    ("=sessionid=fixed; Path=/", "sessionid"),
    (" = sessionid = fixed; Path=/", "sessionid"),
    ("=csrftoken=fixed", "csrftoken"),
    ("=gateway_canary=0123456789abcdef0123456789abcdef; Path=/", "gateway_canary"),
    ("=sessionid=; Path=/", "sessionid"),  # deletes nothing: an empty session beside the real one
    ("sessionid; Path=/", "sessionid"),  # no "=": sent back as "sessionid", read as that name
])
def test_a_cookie_with_no_name_cannot_set_a_reserved_one(make: Callable[..., Send], cookie: str, name: str,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """U4: ``Set-Cookie: =sessionid=fixed`` from a mount that is not Django's. A browser keeps
    a cookie with no name and sends its value alone, ``sessionid=fixed``, which Django reads
    as its session cookie: session fixation (before: it passed, scoped to the site root
    with one sign-in). It is dropped, with the warning line of a reserved name."""
    entry = make(shared_signin="sessionid")
    with caplog.at_level(logging.WARNING, logger="gateway"):
        answer = entry("GET", "/echo/x?cookie=" + quote(cookie) + "&cookie=" + quote("theme=dark"))
    assert answer.status == 200
    assert answer.all("Set-Cookie") == ["theme=dark; Path=/echo"]
    assert f"The app at /echo set the cookie '{name}'" in caplog.text


def test_a_cookie_with_no_name_and_another_value_is_scoped_as_before(make: Callable[..., Send]) -> None:
    """U4: a nameless cookie that names no reserved cookie is the app's, scoped to its mount."""
    answer = make(shared_signin="sessionid")("GET", "/echo/x?cookie=" + quote("=theme=dark"))
    assert answer.all("Set-Cookie") == ["=theme=dark; Path=/echo"]


# -- U9: the rollout's counts of methods --------------------------------------------------------

def test_visits_count_methods_the_apps_do_not_route_by_as_one() -> None:
    """U9: 5,000 requests, each with a method of its own (``X0`` ... ``X4999``; h11 and
    Granian take any token), to one rule's path (before: 5,000 counts, and 5,000 rows a
    minute in the site's database); ``get`` in lower case is the apps' GET."""
    visits = Visits()
    for n in range(5000):
        visits.add("legacy", f"X{n}", "/shop/")
    visits.add("legacy", "get", "/shop/")
    visits.add("legacy", "GET", "/shop/")
    assert {(app, method, path): n for (_, app, method, path), n in visits.counts.items()} == {
        ("legacy", OTHER, "/shop/"): 5000, ("legacy", "GET", "/shop/"): 2}


@pytest.mark.parametrize(("method", "label"), [("GET", "GET"), ("get", "GET"), ("Patch", "PATCH"), ("X0", OTHER),
                                               ("PROPFIND", OTHER), ("_OTHER", OTHER)])
def test_a_method_is_named_as_http_knows_it_or_as_other(method: str, label: str) -> None:
    assert method_label(method) == label


@pytest.mark.parametrize("kind", sorted(ENTRIES))
def test_a_span_is_named_by_a_method_http_knows_or_http(table: MountTable, kind: str) -> None:
    """U9: the request's span took the client's method as its name and attribute: one name
    a made-up method. Now ``HTTP /flask`` and ``http.request.method = "_OTHER"``, the method
    as it came in ``http.request.method_original`` (OpenTelemetry's conventions)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))  # type: ignore[attr-defined]
    entries = builder(kind, table)
    entry = next(entries)(tracing=True)
    try:
        for method in ("BREW42", "GET"):  # (httpx sends every method in upper case)
            entry(method, "/flask/")
    finally:
        next(entries, None)
        exporter.shutdown()
    got = [(span.name, dict(span.attributes or {})) for span in exporter.get_finished_spans()
           if span.name.endswith(" /flask")]
    assert [(name, attributes["http.request.method"], attributes.get("http.request.method_original"))
            for name, attributes in got] == [("HTTP /flask", OTHER, "BREW42"), ("GET /flask", "GET", None)]


# -- U10: a server port that is not a number ----------------------------------------------------

@pytest.mark.parametrize("port", ["\xb2", "9" * 5000, "\u0661", "-1", ""])
def test_a_server_port_taken_from_the_clients_host_is_never_a_500(table: MountTable, port: str) -> None:
    """U10: gunicorn sets ``SERVER_PORT`` from the client's ``Host`` (``localhost:\\xb2``:
    ``"²".isdigit()`` is true, ``int()`` raises; 5,000 digits: over ``int()``'s limit).
    Before: a 500 before any check; now the gateway's own answer (the Host check's)."""
    client = Client(create_wsgi_app(table, Config.from_env({})))
    answer = client.get("/flask/", headers={"Host": f"localhost:{port}"},
                        environ_overrides={"SERVER_PORT": port, "REMOTE_ADDR": "127.0.0.1"})
    assert answer.status_code == 400


# -- U5: SIGHUPs that overlap -------------------------------------------------------------------

def rules_file(*paths: str) -> str:
    """A gateway.toml whose rules send each of ``paths`` to a bare WSGI app."""
    return '[apps]\nbare = "tests.thirdapp:wsgi_app"\n' + "".join(
        f'\n[[route]]\nrule = "{path}"\napp = "bare"\n' for path in paths)


def test_of_two_sighups_the_last_ones_file_is_served(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """U5: a SIGHUP whose reading is slow (a file that imports a large app), then the file
    changed again and a second SIGHUP. Before, each SIGHUP read the file in a thread of its
    own: the second reading was served first, then the first one's, older, put its rules
    back. Now one reading at a time, and one overtaken by a later SIGHUP is read again:
    the file of the last SIGHUP is served, and was read once after it."""
    import asyncio
    import threading

    from gateway.serve.builder import build

    path = tmp_path / "gateway.toml"
    path.write_text(rules_file("/r4/a"))
    app = build(Config().with_file(path), "asgi")
    readings: list[int] = []
    reading_slowly, release = threading.Event(), threading.Event()
    load_rules = app.load_rules

    def slow_first_reading() -> Any:
        loaded = load_rules()
        readings.append(len(loaded[1].file.routes) if loaded else -1)
        if len(readings) == 1:
            reading_slowly.set()
            release.wait(30)
        return loaded

    app.load_rules = slow_first_reading

    async def two_sighups() -> None:
        path.write_text(rules_file("/r4/a", "/r4/b"))
        app.on_sighup()
        await asyncio.to_thread(reading_slowly.wait, 30)
        path.write_text(rules_file("/r4/a", "/r4/b", "/r4/c"))
        app.on_sighup()
        assert (len(app.reloads), app.reloads_asked, app.reloads_read) == (1, 2, 0)  # one task, reading still
        release.set()
        while app.reloads:
            await asyncio.sleep(0.01)

    try:
        with caplog.at_level(logging.INFO, "gateway"):
            asyncio.run(asyncio.wait_for(two_sighups(), 60))
    finally:
        release.set()
        app.executor.shutdown(wait=True)
    assert readings == [2, 3]
    assert len(app.config.file.routes) == 3
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("Reloaded")] == [
        f"Reloaded {path.resolve()}: 3 route rule(s)."]


# -- U11: a multipart form without its closing boundary -----------------------------------------

FORM = (b'--B\r\nContent-Disposition: form-data; name="a"\r\n\r\nhello\r\n'
        b'--B\r\nContent-Disposition: form-data; name="f"; filename="x.txt"\r\nContent-Type: text/plain\r\n\r\n'
        b"FILEDATA\r\n--B--\r\n")


class DjangoForm:
    """A WSGI app that reads its form with Django's own request (``WSGIRequest``) and
    answers its fields and files; it holds Django's handler, so the gateway takes the mount
    for Django's (as a Django project behind a middleware of one's own)."""

    def __init__(self) -> None:
        from django.core.handlers.wsgi import WSGIHandler

        self.handler = WSGIHandler()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        import json

        from django.core.handlers.wsgi import WSGIRequest

        request = WSGIRequest(environ)
        body = json.dumps({"fields": len(request.POST), "files": len(request.FILES)}).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]


@pytest.fixture
def form_entry(request: pytest.FixtureRequest, table: MountTable) -> Iterator[Send]:
    from gateway.core.mounts import Mount

    forms = MountTable([*table, Mount("/form", "tests:DjangoForm", "wsgi", DjangoForm())])
    entries = builder(request.param, forms)
    yield next(entries)()
    next(entries, None)


@pytest.mark.parametrize("form_entry", sorted(ENTRIES), indirect=True)
@pytest.mark.parametrize(("body", "status"), [
    pytest.param(FORM, 200, id="whole"),
    pytest.param(FORM + b"an epilogue, which the parsers ignore", 200, id="whole-with-an-epilogue"),
    pytest.param(FORM[:FORM.rindex(b"\r\n--B--")], 400, id="no-closing-boundary"),
    pytest.param(FORM[:FORM.index(b"FILEDATA") + 4], 400, id="cut-in-the-file"),
    pytest.param(FORM[:FORM.index(b"hello")], 400, id="cut-in-the-first-field"),
])
def test_a_form_cut_before_its_closing_boundary_never_reaches_django(form_entry: Send, body: bytes,
                                                                     status: int) -> None:
    """U11: a ``multipart/form-data`` body that ends (its ``Content-Length`` says so) before
    ``--B--``. Django kept the fields before the cut and dropped the part it cut (before:
    ``{"fields": 1, "files": 0}``, 200: the form saved as whole without its file). Now a
    400 from the gateway; a whole form, an epilogue after it too, reaches Django."""
    answer = form_entry("POST", "/form/", {"Content-Type": "multipart/form-data; boundary=B"}, body)
    assert answer.status == status, answer.body
    if status == 200:
        assert answer.json() == {"fields": 1, "files": 1}
    else:
        assert b"no closing boundary" in answer.body


# -- U12: credentials a shadow replay carried ---------------------------------------------------

def test_a_shadow_replay_carries_no_credential_in_another_header_or_the_query() -> None:
    """U12: a shadowed GET with ``X-Api-Key``, ``X-Auth-Token`` and
    ``?api_key=...&access_token=...&sig=...`` (before: only Cookie and the two Authorization
    headers were left out: the candidate received the others, and a replay of the rule's own
    app was not made anonymous for them). Now the replays carry none of them, the other
    headers and parameters as they were; ``credentials = true`` keeps them all."""
    from gateway.migration.shadow import carries_credentials, fresh

    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/shop/items/1", "HTTP_HOST": "localhost",
               "HTTP_ACCEPT": "text/html", "HTTP_KEEP_ALIVE": "5", "HTTP_X_API_KEY": "k1", "HTTP_X_AUTH_TOKEN": "t1",
               "HTTP_X_CSRFTOKEN": "c1", "HTTP_X_AMZ_SECURITY_TOKEN": "s1",
               "QUERY_STRING": "page=2&api_key=k2&Access%5FToken=t2&sig=x&q=tea+pot&code=c&sort=price",
               "RAW_URI": "/shop/items/1?page=2&api_key=k2", "wsgi.url_scheme": "http"}
    replay = fresh(environ, credentials=False)
    assert carries_credentials(environ)
    assert {k for k in replay if k.startswith("HTTP_")} == {"HTTP_HOST", "HTTP_ACCEPT", "HTTP_KEEP_ALIVE"}
    assert replay["QUERY_STRING"] == "page=2&q=tea+pot&sort=price"
    assert "RAW_URI" not in replay
    assert not carries_credentials(replay)
    assert fresh(environ, credentials=True)["QUERY_STRING"] == environ["QUERY_STRING"]
    assert fresh(environ, credentials=True)["HTTP_X_API_KEY"] == "k1"
    plain = {"REQUEST_METHOD": "GET", "QUERY_STRING": "page=2&monkey=1", "HTTP_ACCEPT": "*/*"}
    assert not carries_credentials(plain) and fresh(plain, credentials=False)["QUERY_STRING"] == "page=2&monkey=1"


def test_sighups_that_come_together_are_one_rolling_restart_of_the_last_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """U5, uvicorn ``--workers``: SIGHUPs queued together were a rolling restart each (24
    signals, 24 restarts of every worker, one after another). Now the last one reads the
    file and restarts the workers once; every worker then builds from that reading."""
    import signal

    from gateway.serve.runners import GatewaySupervisor, WorkerConfig

    path = tmp_path / "gateway.toml"
    path.write_text(rules_file("/r4/a"))
    monkeypatch.setattr(signal, "signal", lambda *args: None)  # the supervisor's handlers: not in the test process
    config = WorkerConfig(Config().with_file(path), workers=2)
    supervisor = GatewaySupervisor(config, sockets=[])
    restarts: list[int] = []
    monkeypatch.setattr(supervisor, "restart_all", lambda: restarts.append(len(config.gateway.file.routes)))
    path.write_text(rules_file("/r4/a", "/r4/b"))
    supervisor.signal_queue.extend([signal.SIGHUP] * 24)
    supervisor.handle_signals()
    assert restarts == [2]
    assert len(config.gateway.file.routes) == 2
