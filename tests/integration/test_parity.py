"""Every pipeline behaviour through both entry points, from one parametrized fixture.

``entry`` is the WSGI gateway under Werkzeug's test client, then the ASGI gateway under
httpx's ASGI transport, each built on the same table and configuration. A WSGI app that
echoes its environ shows what a mounted app sees.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import pytest

from gateway.adapters.wsgi import create_wsgi_app
from gateway.core.config import Config
from gateway.core.mounts import MountTable
from tests.entries import ENTRIES, TRUSTED, Send, asgi_entry, builder, config_with, rule_table


@pytest.fixture(scope="module")
def echo_table(table: MountTable) -> MountTable:  # type: ignore[no-untyped-def]
    return MountTable([*table, *MountTable.from_specs(["/echo=tests.thirdapp:echo_app",
                                                       "/third=tests.thirdapp:asgi_app"], defaults=False)])


@pytest.fixture(params=sorted(ENTRIES))
def make(request: pytest.FixtureRequest, echo_table: MountTable) -> Iterator[Callable[..., Send]]:
    """Build an entry point (``wsgi``, then ``asgi``) over the echo table with a config."""
    yield from builder(request.param, echo_table)


@pytest.fixture
def entry(make: Callable[..., Send]) -> Send:
    """An entry point that trusts X-Forwarded-* from 127.0.0.1 (the test clients' address)."""
    return make(trusted_proxies=TRUSTED)


def seen(entry: Send, headers: dict[str, str], path: str = "/echo/x") -> dict[str, Any]:
    answer = entry("GET", path, headers)
    assert answer.status == 200, answer.body
    return dict(answer.json())


# -- Forwarded headers -------------------------------------------------------------------

FORWARDED = {
    "X-Forwarded-For": "203.0.113.7",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "example.org",
    "X-Forwarded-Port": "8443",
    "X-Forwarded-Prefix": "/apps",
}
COMBINATIONS = [
    combo for size in range(len(FORWARDED) + 1) for combo in itertools.combinations(sorted(FORWARDED), size)
]


def expected(combo: tuple[str, ...]) -> dict[str, Any]:
    """What the echo app must see for a combination of the FORWARDED headers."""
    https = "X-Forwarded-Proto" in combo
    scheme = "https" if https else "http"
    name = "example.org" if "X-Forwarded-Host" in combo else "localhost"
    if "X-Forwarded-Port" in combo:
        port, host = 8443, f"{name}:8443"
    elif "X-Forwarded-Host" in combo:
        port, host = (443 if https else 80), name
    else:
        # The Host the client sent (localhost:8000) keeps its port, whatever the scheme.
        port, host = 8000, "localhost:8000"
    root = "/apps" if "X-Forwarded-Prefix" in combo else ""
    return {"HTTP_HOST": host, "SERVER_NAME": name, "SERVER_PORT": str(port), "wsgi.url_scheme": scheme,
            "REMOTE_ADDR": "203.0.113.7" if "X-Forwarded-For" in combo else "127.0.0.1",
            "SCRIPT_NAME": f"{root}/echo", "PATH_INFO": "/x"}


@pytest.mark.parametrize("combo", COMBINATIONS, ids=lambda c: "+".join(h[12:] for h in c) or "none")
def test_forwarded_headers_alone_and_combined(entry: Send, combo: tuple[str, ...]) -> None:
    got = seen(entry, {name: FORWARDED[name] for name in combo})
    want = expected(combo)
    assert {key: got[key] for key in want} == want


@pytest.mark.parametrize(
    ("headers", "host", "port"),
    [
        pytest.param({"X-Forwarded-Port": "8443"}, "localhost:8443", "8443", id="port"),
        pytest.param({"X-Forwarded-Host": "example.org:8443"}, "example.org:8443", "8443", id="host-with-port"),
        pytest.param({"X-Forwarded-Host": "example.org", "X-Forwarded-Port": "8443", "X-Forwarded-Proto": "https"},
                     "example.org:8443", "8443", id="host-port-proto"),
        pytest.param({"X-Forwarded-Host": "example.org", "X-Forwarded-Port": "443", "X-Forwarded-Proto": "https"},
                     "example.org", "443", id="default-port-elided"),
    ],
)
def test_the_rows_that_drifted(entry: Send, headers: dict[str, str], host: str, port: str) -> None:
    got = seen(entry, headers)
    assert (got["HTTP_HOST"], got["SERVER_PORT"]) == (host, port)


def test_one_hop_only_the_last_value_counts(entry: Send) -> None:
    got = seen(entry, {"X-Forwarded-For": "198.51.100.1, 203.0.113.9", "X-Forwarded-Proto": "http,https",
                       "X-Forwarded-Host": "evil.example, example.org", "X-Forwarded-Prefix": "/x,/apps"})
    assert (got["REMOTE_ADDR"], got["wsgi.url_scheme"], got["HTTP_HOST"], got["SCRIPT_NAME"]) == (
        "203.0.113.9", "https", "example.org", "/apps/echo")


def test_forwarded_headers_from_an_untrusted_peer_change_nothing(make: Callable[..., Send]) -> None:
    entry = make(trusted_proxies=Config.from_env({"GATEWAY_TRUSTED_PROXIES": "10.0.0.1"}).trusted_proxies)
    assert {k: v for k, v in seen(entry, FORWARDED).items() if k in expected(())} == expected(())


@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param("X-Forwarded-Prefix", "//evil.example", id="prefix-scheme-relative"),
        pytest.param("X-Forwarded-Prefix", "javascript:alert(1)//", id="prefix-javascript"),
        pytest.param("X-Forwarded-Prefix", "/a/../b", id="prefix-dot-dot"),
        pytest.param("X-Forwarded-Prefix", "/a b", id="prefix-space"),
        pytest.param("X-Forwarded-Prefix", "apps", id="prefix-relative"),
        pytest.param("X-Forwarded-Proto", "javascript", id="proto-javascript"),
        pytest.param("X-Forwarded-Proto", "ftp", id="proto-ftp"),
        pytest.param("X-Forwarded-Port", "0", id="port-zero"),
        pytest.param("X-Forwarded-Port", "65536", id="port-too-big"),
        pytest.param("X-Forwarded-Port", "80a", id="port-not-a-number"),
        pytest.param("X-Forwarded-Port", "-1", id="port-negative"),
        pytest.param("X-Forwarded-For", "not-an-ip<script>", id="for-markup"),
        pytest.param("X-Forwarded-For", "999.1.1.1", id="for-bad-ipv4"),
        pytest.param("X-Forwarded-For", "unknown", id="for-unknown"),
        pytest.param("X-Forwarded-Host", "evil.example/x", id="host-with-path"),
        pytest.param("X-Forwarded-Host", "a b", id="host-space"),
        pytest.param("X-Forwarded-Host", "example.org:0", id="host-port-zero"),
    ],
)
def test_malformed_forwarded_values_are_ignored(entry: Send, name: str, value: str) -> None:
    got = seen(entry, {name: value})
    want = expected(())
    assert {key: got[key] for key in want} == want


def test_malformed_forwarded_values_are_counted(echo_table: MountTable) -> None:
    for build in ENTRIES.values():
        send, app = build(echo_table, config_with(trusted_proxies=TRUSTED))
        send("GET", "/echo/x", {"X-Forwarded-Prefix": "//evil.example", "X-Forwarded-Proto": "javascript",
                                "X-Forwarded-For": "nope", "X-Forwarded-Port": "99999"})
        send("GET", "/echo/x", {"X-Forwarded-Prefix": "javascript:alert(1)//", "X-Forwarded-Host": "a/b"})
        send("GET", "/echo/x", {"X-Forwarded-Prefix": "/fine", "X-Forwarded-Proto": "https"})
        assert dict(app.pipeline.ignored) == {"prefix": 2, "proto": 1, "for": 1, "port": 1, "host": 1}


def test_a_malformed_prefix_never_reaches_a_redirect_or_a_link(entry: Send) -> None:
    for prefix in ("//evil.example", "javascript:alert(1)//"):
        assert entry("GET", "/flask", {"X-Forwarded-Prefix": prefix}).get("Location") == "/flask/"
        assert entry("GET", "/echo", {"X-Forwarded-Prefix": prefix}).get("Location") == "/echo/"
        assert b'href="/flask/"' in entry("GET", "/", {"X-Forwarded-Prefix": prefix}).body


def test_a_valid_prefix_reaches_redirects_and_links(entry: Send) -> None:
    assert entry("GET", "/echo?a=1", {"X-Forwarded-Prefix": "/apps/"}).get("Location") == "/apps/echo/?a=1"
    assert b'href="/apps/flask/"' in entry("GET", "/", {"X-Forwarded-Prefix": "/apps"}).body


def test_websocket_scheme_follows_the_forwarded_proto() -> None:
    from gateway.core.pipeline import Head, Pipeline

    pipeline = Pipeline(MountTable([]), config_with(trusted_proxies=TRUSTED))
    decision = pipeline.decide(Head(method="GET", path="/", host="localhost", scheme="ws", client="127.0.0.1",
                                    forwarded={"proto": "https"}))
    assert decision.scheme == "wss"


# -- Refusals, redirects, limits -----------------------------------------------------------

@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        pytest.param("GET", "/echo/x", {"Host": "evil.example"}, 400, id="host-not-allowed"),
        pytest.param("GET", "/echo/x", {"Host": "a b"}, 400, id="host-malformed"),
        # The root's one trailing dot is the same host, as Django reads it; a second, or an
        # empty label, is no host name at all (they passed, and reached the apps).
        pytest.param("GET", "/echo/x", {"Host": "localhost."}, 200, id="host-the-roots-dot"),
        pytest.param("GET", "/echo/x", {"Host": "localhost.."}, 400, id="host-two-trailing-dots"),
        pytest.param("GET", "/echo/x", {"Host": "example..org"}, 400, id="host-empty-label"),
        pytest.param("GET", "/echo/x", {"Host": ".localhost"}, 400, id="host-leading-dot"),
        pytest.param("GET", "/echo/x", {"Host": "localhost..:80"}, 400, id="host-two-dots-and-a-port"),
        pytest.param("GET", "/", {"Host": "evil.example"}, 400, id="host-on-the-index"),
        pytest.param("TRACE", "/echo/x", {}, 405, id="trace"),
        pytest.param("TRACK", "/flask/", {}, 405, id="track"),
        pytest.param("trace", "/echo/x", {}, 405, id="trace-in-lower-case"),  # the apps read it as TRACE
        pytest.param("Track", "/echo/x", {}, 405, id="track-in-mixed-case"),
        pytest.param("GET", "/echo/x", {"X-Big": "a" * 17000}, 431, id="headers-too-large"),
        pytest.param("GET", "/healthz", {"Host": "10.1.2.3:8000"}, 200, id="health-by-address"),
        pytest.param("GET", "/nowhere", {}, 404, id="gateway-404"),
        pytest.param("POST", "/", {}, 405, id="index-post"),
        pytest.param("OPTIONS", "/", {}, 204, id="index-options"),
    ],
)
def test_refusals_and_own_pages(entry: Send, method: str, path: str, headers: dict[str, str], status: int) -> None:
    answer = entry(method, path, headers)
    assert answer.status == status
    assert answer.get("X-Request-ID")
    assert answer.get("X-Content-Type-Options") == "nosniff"


@pytest.mark.parametrize(
    ("coding", "status", "says"),
    [
        pytest.param("gzip, chunked", 501, b"Transfer-Encoding gzip is not supported", id="gzip-then-chunked"),
        pytest.param("br,deflate , chunked", 501, b"Transfer-Encoding br, deflate is not", id="two-codings"),
        pytest.param("chunked, chunked", 400, b"must end with chunked, once", id="chunked-twice"),
        pytest.param("chunked, gzip", 400, b"must end with chunked, once", id="chunked-not-last"),
        pytest.param("gzip", 400, b"must end with chunked, once", id="no-chunked"),
        pytest.param("identity", 400, b"must end with chunked, once", id="identity"),
    ],
)
def test_a_body_framing_the_gateway_cannot_pass_on_whole_is_refused(
        entry: Send, coding: str, status: int, says: bytes) -> None:
    """RFC 9112, 6.1 and 6.3: h11, httptools, Granian and gunicorn each let some of these
    through, and the app then read the body one way or another (a coded body as the form).
    (With ``Content-Length`` too: ``tests/unit/test_pipeline.py``; Werkzeug's test client
    cannot send both.)"""
    answer = entry("GET", "/echo/x", {"Transfer-Encoding": coding})
    assert (answer.status, answer.get("Connection")) == (status, "close"), answer.body
    assert says in answer.body
    assert answer.get("X-Request-ID")


@pytest.mark.parametrize("coding", ["chunked", "Chunked", " chunked "])
def test_a_chunked_body_alone_still_reaches_the_app(entry: Send, coding: str) -> None:
    answer = entry("GET", "/echo/x", {"Transfer-Encoding": coding})
    assert answer.status == 200, answer.body
    assert answer.json()["PATH_INFO"] == "/x"


def test_bare_prefix_redirects_with_the_query(entry: Send) -> None:
    answer = entry("GET", "/echo?x=1&y=2")
    assert (answer.status, answer.get("Location")) == (308, "/echo/?x=1&y=2")
    assert entry("POST", "/echo").status == 308


@pytest.mark.parametrize(
    ("length", "status"),
    [pytest.param(100, 200, id="at-the-limit"), pytest.param(101, 413, id="one-past")],
)
def test_content_length_over_the_mount_limit(make: Callable[..., Send], length: int, status: int) -> None:
    entry = make(max_body_size=1000, max_body_sizes={"/echo": 100})
    answer = entry("POST", "/echo/x", {"Content-Type": "application/octet-stream"}, b"a" * length)
    assert answer.status == status
    if status == 413:
        assert answer.body == b"Request body too large: the limit here is 100 bytes.\n"
    # The default limit holds for the other mounts.
    assert entry("POST", "/third/x", {}, b"a" * 1000).status == 200
    assert entry("POST", "/third/x", {}, b"a" * 1001).status == 413


# -- Response headers ----------------------------------------------------------------------

def set_cookie(entry: Send, cookie: str, path: str = "/echo/x") -> str:
    answer = entry("GET", f"{path}?cookie={quote(cookie)}")
    (value,) = answer.all("Set-Cookie")
    return value


@pytest.mark.parametrize(
    ("cookie", "scoped"),
    [
        pytest.param("a=1", "a=1; Path=/echo", id="no-path"),
        pytest.param("a=1; Path=/", "a=1; Path=/echo", id="root"),
        pytest.param("a=1; Path=", "a=1; Path=/echo", id="empty"),
        pytest.param("a=1; Path=/; Path=/", "a=1; Path=/echo", id="two-roots"),
        pytest.param("a=1; Path=/echo/x; Path=/", "a=1; Path=/echo", id="inside-then-root"),
        pytest.param("a=1; Path=/; Path=/echo/x", "a=1; Path=/echo/x", id="root-then-inside"),
        pytest.param("a=1; path=/; HttpOnly", "a=1; HttpOnly; Path=/echo", id="lower-case"),
        pytest.param("a=1;Path=/;Secure", "a=1;Secure; Path=/echo", id="no-spaces"),
        pytest.param("a=1; PATH = / ; SameSite=Lax", "a=1; SameSite=Lax; Path=/echo", id="spaced"),
        pytest.param("a=1; Path=/echo", "a=1; Path=/echo", id="the-mount"),
        pytest.param("a=1; Path=/echo/sub", "a=1; Path=/echo/sub", id="under-the-mount"),
        pytest.param("a=1; Path=/echoes", "a=1; Path=/echo/echoes", id="not-a-segment"),
        pytest.param("a=1; Path=/flask", "a=1; Path=/echo/flask", id="another-mount"),
        pytest.param(" a=1; Path=/", "a=1; Path=/echo", id="leading-space"),
    ],
)
def test_every_cookie_path_ends_inside_the_mount(entry: Send, cookie: str, scoped: str) -> None:
    assert set_cookie(entry, cookie) == scoped


def test_cookie_path_follows_a_trusted_prefix(entry: Send) -> None:
    answer = entry("GET", f"/echo/x?cookie={quote('a=1; Path=/')}", {"X-Forwarded-Prefix": "/apps"})
    assert answer.all("Set-Cookie") == ["a=1; Path=/apps/echo"]


def test_asgi_mount_cookies_are_scoped_too(entry: Send) -> None:
    assert entry("GET", "/third/x").all("Set-Cookie") == ["third=1; Path=/third"]


@pytest.mark.parametrize("path", ["/", "/nowhere", "/healthz", "/echo/x", "/third/x", "/flask/", "/django/",
                                  "/echo"])
@pytest.mark.parametrize(("https", "scheme", "hsts"), [
    pytest.param(True, "https", True, id="https-on-over-https"),
    pytest.param(True, "http", False, id="https-on-over-http"),
    pytest.param(False, "https", False, id="https-off"),
])
def test_hsts_on_every_response_when_https(make: Callable[..., Send], path: str, https: bool, scheme: str,
                                           hsts: bool) -> None:
    entry = make(https=https, trusted_proxies=TRUSTED)
    answer = entry("GET", path, {"X-Forwarded-Proto": scheme})
    values = answer.all("Strict-Transport-Security")
    assert len(values) == (1 if hsts else 0), (answer.status, values)
    if hsts:
        assert values[0].startswith("max-age=31536000")


def test_flask_session_cookie_is_samesite_lax(entry: Send) -> None:
    answer = entry("GET", "/flask/?name=Ada")
    (cookie,) = answer.all("Set-Cookie")
    assert "SameSite=Lax" in cookie and "Path=/flask" in cookie


def test_request_id_is_kept_or_made(entry: Send) -> None:
    kept = entry("GET", "/echo/x", {"X-Request-ID": "abc-123"})
    assert kept.get("X-Request-ID") == "abc-123" and kept.json()["HTTP_X_REQUEST_ID"] == "abc-123"
    made = entry("GET", "/echo/x", {"X-Request-ID": "<bad>"})
    assert made.get("X-Request-ID") == made.json()["HTTP_X_REQUEST_ID"] != "<bad>"
    assert len(made.all("X-Request-ID")) == 1


def test_draining_closes_connections_and_fails_readiness(echo_table: MountTable) -> None:
    for build in ENTRIES.values():
        send, app = build(echo_table, config_with())
        assert send("GET", "/echo/x").get("Connection") in (None, "keep-alive")
        app.pipeline.draining = True
        assert send("GET", "/echo/x").get("Connection") == "close"
        ready = send("GET", "/readyz")
        assert (ready.status, ready.json()["status"]) == (503, "draining")
        assert send("GET", "/healthz").status == 200


def test_readiness_checks_every_mount_the_database_and_the_migrations(entry: Send) -> None:
    ready = entry("GET", "/readyz")
    assert ready.status == 200
    assert ready.json()["checks"] == {"/flask": "ok", "/django": "ok", "/echo": "ok", "/third": "ok",
                                      "database:default": "ok", "migrations": "ok"}
    assert ready.get("Cache-Control") == "no-store"


def test_readiness_fails_on_an_asgi_mount_that_fails(make: Callable[..., Send], echo_table: MountTable) -> None:
    broken = MountTable([*echo_table, *MountTable.from_specs(["/broken=tests.thirdapp:failing_asgi_app"],
                                                            defaults=False)])
    for entry_point in ENTRIES.values():
        send, app = entry_point(broken, config_with())
        try:
            ready = send("GET", "/readyz")
            assert ready.status == 503
            assert ready.json()["checks"]["/broken"].startswith("fail: answered 503")
            assert ready.json()["checks"]["/third"] == "ok"
        finally:
            if hasattr(app, "executor"):
                app.executor.shutdown(wait=True)


def test_readiness_tells_its_failures_only_to_loopback_and_the_trusted_proxies(echo_table: MountTable) -> None:
    """A failing check's text names what failed and how (a database's host, port and user):
    a client that is neither loopback nor a trusted proxy gets each check's verdict only."""
    broken = MountTable([*echo_table, *MountTable.from_specs(["/broken=tests.thirdapp:failing_asgi_app"],
                                                            defaults=False)])
    for entry_point in ENTRIES.values():
        send, app = entry_point(broken, config_with(trusted_proxies=TRUSTED))
        try:
            outside = send("GET", "/readyz", {"X-Forwarded-For": "203.0.113.9"})
            assert outside.status == 503 and outside.get("Cache-Control") == "no-store"
            assert outside.json() == {"status": "fail", "checks": {
                "/flask": "ok", "/django": "ok", "/echo": "ok", "/third": "ok", "/broken": "fail",
                "database:default": "ok", "migrations": "ok"}}
            inside = send("GET", "/readyz")  # from loopback, the test clients' address
            assert inside.status == 503 and inside.json()["checks"]["/broken"].startswith("fail: answered 503")
            through = send("GET", "/readyz", {"X-Forwarded-For": "127.0.0.1"})  # a client on the proxy's host
            assert through.json()["checks"]["/broken"].startswith("fail: answered 503")
        finally:
            if hasattr(app, "executor"):
                app.executor.shutdown(wait=True)


@pytest.mark.parametrize("forwarded", [
    pytest.param("unknown", id="unknown"), pytest.param("203.0.113.7:54321", id="with-a-port"),
    pytest.param("[2001:db8::1]:443", id="bracketed-with-a-port"), pytest.param("", id="empty"),
    pytest.param("203.0.113.7, junk", id="last-hop-junk"), pytest.param("localhost", id="a-name"),
])
def test_a_client_the_trusted_proxy_cannot_name_is_unknown_not_the_proxy(entry: Send, forwarded: str) -> None:
    """The trusted proxy is loopback here: a client it names badly was taken for the proxy
    itself, and so shown the operators' pages (/_gateway/, /readyz's failure texts)."""
    assert entry("GET", "/_gateway/", {"X-Forwarded-For": "127.0.0.1"}).status == 200  # a loopback client: shown
    assert entry("GET", "/_gateway/", {"X-Forwarded-For": forwarded}).status == 404
    assert entry("GET", "/_gateway/", {"X-Forwarded-For": "198.51.100.4"}).status == 404  # a remote client
    assert entry("GET", "/echo/x", {"X-Forwarded-For": forwarded}).status == 200  # the apps still answer it


@pytest.mark.parametrize(("host", "shown"), [
    pytest.param("localhost", True, id="an-allowed-host"), pytest.param("127.0.0.1:8000", True, id="an-address"),
    pytest.param("[::1]:8000", True, id="an-ipv6-address"), pytest.param("evil.example", False, id="rebinding"),
    pytest.param("evil.example:8000", False, id="rebinding-with-a-port"),
])
def test_the_operators_pages_answer_loopback_by_an_allowed_host_or_an_address(
        make: Callable[..., Send], echo_table: MountTable, host: str, shown: bool) -> None:
    """A page on evil.example, resolving to 127.0.0.1 (DNS rebinding), reaches the gateway from
    loopback with its own name as Host: the operators' pages are not for it."""
    entry = make(metrics=True)
    for path in ("/_gateway/", "/metrics"):
        answer = entry("GET", path, {"Host": host})
        assert answer.status == (200 if shown else 400), (path, answer.status)
    broken = MountTable([*echo_table, *MountTable.from_specs(["/broken=tests.thirdapp:failing_asgi_app"],
                                                            defaults=False)])
    for entry_point in ENTRIES.values():
        send, app = entry_point(broken, config_with())
        try:
            failure = send("GET", "/readyz", {"Host": host}).json()["checks"]["/broken"]
            assert failure.startswith("fail: answered 503") if shown else failure == "fail", failure
        finally:
            if hasattr(app, "executor"):
                app.executor.shutdown(wait=True)


def test_readiness_fails_on_a_database_never_migrated(table: MountTable, tmp_path: Any) -> None:
    # ``table`` sets up the demo apps, and so Django: the test runs alone too.
    import sqlite3

    from django.db import connections

    from gateway.adapters.health import check_migrations

    empty = tmp_path / "empty.sqlite3"
    sqlite3.connect(empty).close()
    settings = {**connections["default"].settings_dict, "NAME": str(empty), "OPTIONS": {}}
    connection = connections.create_connection("default").__class__(settings, "default")
    try:
        result = check_migrations(connection)
    finally:
        connection.close()
    assert result.startswith("fail: ") and "migration(s) not applied, e.g. " in result
    assert result.endswith(", e.g. contenttypes.0001_initial: run gateway migrate")  # the first to apply
    assert check_migrations(connections["default"]) == "ok"


def test_content_type_counts_toward_the_header_limit(make: Callable[..., Send]) -> None:
    entry = make(max_header_size=3000)
    assert entry("POST", "/echo/x", {"Content-Type": "text/plain; x=" + "a" * 3000}, b"").status == 431


@pytest.mark.parametrize(("size", "status"), [pytest.param(100, 200, id="within"), pytest.param(101, 413, id="past")])
def test_http2_body_without_a_length_is_held_to_the_limit(echo_table: MountTable, size: int, status: int) -> None:
    """HTTP/2 carries no Transfer-Encoding: a body without Content-Length is still one (WSGI side)."""
    import io

    app = create_wsgi_app(echo_table, config_with(max_body_sizes={"/echo": 100}))
    environ = {"REQUEST_METHOD": "POST", "SCRIPT_NAME": "", "PATH_INFO": "/echo/x", "QUERY_STRING": "",
               "SERVER_NAME": "localhost", "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/2",
               "HTTP_HOST": "localhost:8000", "REMOTE_ADDR": "127.0.0.1", "wsgi.url_scheme": "http",
               "wsgi.input": io.BytesIO(b"a" * size), "wsgi.input_terminated": True, "wsgi.errors": io.StringIO()}
    seen: list[str] = []
    result = app(environ, lambda line, headers, exc_info=None: seen.append(line))
    body = b"".join(result)
    getattr(result, "close", lambda: None)()  # closes the collected body too
    assert int(seen[0][:3]) == status
    if status == 200:
        assert json.loads(body)["CONTENT_LENGTH"] == str(size)


def test_an_asgi_mount_that_raises_is_still_logged(echo_table: MountTable) -> None:
    import logging

    from gateway.observe.logs import access

    async def boom(scope, receive, send):  # type: ignore[no-untyped-def]
        raise RuntimeError("boom")

    from gateway.core.mounts import Mount

    table = MountTable([Mount("/boom", "t:boom", "asgi", boom)])
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("gateway.access")
    saved = logger.handlers, logger.level, logger.propagate
    logger.handlers, logger.propagate = [Keep()], False
    logger.setLevel(logging.INFO)
    try:
        send, app = asgi_entry(table, config_with())
        with pytest.raises(RuntimeError, match="boom"):
            send("GET", "/boom/x")
        access.flush()
    finally:
        logger.handlers, logger.propagate = saved[0], saved[2]
        logger.setLevel(saved[1])
        app.executor.shutdown()
    assert [(r.status, r.mount, r.path) for r in records] == [(500, "/boom", "/boom/x")]  # type: ignore[attr-defined]


# -- Input that no page means: NUL in the URL, form charsets the apps cannot read --------


@pytest.mark.parametrize("path", ["/echo/x?q=%00", "/echo/x?q=a%00b", "/echo/%00", "/flask/?lang=%00", "/?x=%00"])
def test_nul_in_the_url_is_a_400(entry: Send, path: str) -> None:
    answer = entry("GET", path)
    assert answer.status == 400
    assert b"NUL" in answer.body


@pytest.mark.parametrize(("name", "value"), [
    ("Cookie", 'sessionid="\x00abcdefghijk"'),  # reached PostgreSQL: a 500 on the admin
    ("Cookie", "gateway_canary=\x00"),
    ("X-Anything", "a\x00b"),
    ("User-Agent", "\x00"),
    ("Content-Type", "text/plain\x00"),
])
def test_nul_in_a_header_value_is_a_400(entry: Send, name: str, value: str) -> None:
    answer = entry("GET", "/django/admin/", {name: value})
    assert answer.status == 400
    assert answer.body == b"Bad Request: a header value contains a NUL character (RFC 9110, 5.5).\n"


def test_an_escaped_zero_that_is_not_nul_passes(entry: Send) -> None:
    assert seen(entry, {}, "/echo/x?q=%2500")["QUERY_STRING"] == "q=%2500"


@pytest.mark.parametrize("content_type", [
    "application/x-www-form-urlencoded; charset=utf-16",
    "application/x-www-form-urlencoded; charset=UTF-32",
    "application/x-www-form-urlencoded;charset=\"utf-7\"",
    "application/x-www-form-urlencoded; charset=latin-1",
    "application/x-www-form-urlencoded; charset=utf8",
    "application/x-www-form-urlencoded; charset=utf-8; charset=utf-16",  # the last one counts, as in Django
    "application/x-www-form-urlencoded; charset*=utf-8''utf-16",
    "application/x-www-form-urlencoded; charset*=utf-8''utf-16; charset=utf-8",  # found by the fuzz target
    "application/x-www-form-urlencoded; x=\"a;charset=utf-8\"; charset=utf-16",
    "multipart/form-data; boundary=x; charset=utf-16le",
    "multipart/form-data; boundary=x; charset=utf-7",
    "multipart/form-data; boundary=XX; charset=idna",
])
def test_a_form_django_cannot_read_is_a_415(entry: Send, content_type: str) -> None:
    answer = entry("POST", "/django/admin/login/", {"Content-Type": content_type}, b"a=b")
    assert answer.status == 415
    assert b"UTF-8" in answer.body


@pytest.mark.parametrize("content_type", [
    "application/x-www-form-urlencoded; charset=utf-8",
    "application/x-www-form-urlencoded; charset=\"UTF-8\"",
    "application/x-www-form-urlencoded",
    "application/x-www-form-urlencoded; charset=no-such-charset",  # Django ignores a label it does not know
    "multipart/form-data; boundary=x; charset=ISO-8859-1",
    "application/json; charset=utf-16",  # not a form: the app decodes it itself
])
def test_other_content_types_and_charsets_reach_django(entry: Send, content_type: str) -> None:
    assert entry("POST", "/django/admin/login/", {"Content-Type": content_type}, b"a=b").status == 403  # CSRF


@pytest.mark.parametrize("content_type", [
    "application/x-www-form-urlencoded; charset=ISO-8859-1",  # Apache HttpClient 4's default
    "application/x-www-form-urlencoded; charset=utf-16",
])
def test_other_apps_get_their_forms_in_any_charset(entry: Send, content_type: str) -> None:
    assert entry("POST", "/echo/x", {"Content-Type": content_type}, b"a=b").status == 200


def test_a_get_with_a_form_content_type_and_no_body_passes(entry: Send) -> None:
    headers = {"Content-Type": "application/x-www-form-urlencoded; charset=ISO-8859-1"}
    assert entry("GET", "/django/", headers).status == 200



# -- Each policy written once, the same through both entry points ---------------------------

def test_a_header_sent_twice_reaches_the_app_as_one_joined_value(entry: Send) -> None:
    got = seen(entry, [("X-Thing", "a"), ("X-Thing", "b"), ("Cookie", "c=1"), ("Cookie", "d=2")])  # type: ignore[arg-type]
    assert (got["HTTP_X_THING"], got["HTTP_COOKIE"]) == ("a,b", "c=1; d=2")


def test_two_host_headers_are_refused(entry: Send) -> None:
    answer = entry("GET", "/echo/x", [("Host", "localhost"), ("Host", "localhost")])
    assert answer.status == 400 and b"Host" in answer.body


def test_many_repeated_forwarded_headers_get_their_431(entry: Send) -> None:
    # 100,000 X-Forwarded-For lines from a trusted proxy: joined once, in linear time (the
    # ASGI side added to a string per repeat), and refused by the header limit.
    answer = entry("GET", "/echo/x", [("X-Forwarded-For", "203.0.113.7")] * 100_000)
    assert answer.status == 431


def test_an_app_root_behind_a_proxy_prefix_keeps_its_session_cookie(entry: Send) -> None:
    # A Flask app with APPLICATION_ROOT="/echo" writes Path=/echo: behind X-Forwarded-Prefix
    # its mount is /apps/echo, and the cookie must reach it there (not /apps/echo/echo).
    answer = entry("GET", "/echo/x?cookie=" + quote("session=1; Path=/echo"), {"X-Forwarded-Prefix": "/apps"})
    assert answer.all("Set-Cookie") == ["session=1; Path=/apps/echo"]


def test_readyz_checks_the_same_apps(entry: Send) -> None:
    assert sorted(entry("GET", "/readyz").json()["checks"]) == [
        "/django", "/echo", "/flask", "/third", "database:default", "migrations"]


@pytest.mark.parametrize("path", ["/_gateway/", "/metrics"])
def test_the_operators_pages_answer_loopback_and_the_proxies_only(make: Callable[..., Send], path: str) -> None:
    entry = make(trusted_proxies=TRUSTED, metrics=True)
    assert entry("GET", path).status == 200  # loopback, the test clients' address
    assert entry("GET", path, {"X-Forwarded-For": "198.51.100.4"}).status == 404  # a remote client, via the proxy
    assert entry("GET", path, {"Host": "evil.example"}).status == 400  # a name not allowed (DNS rebinding)


@pytest.mark.parametrize("cookie", ["gateway_canary=0123456789abcdef0123456789abcdef; Path=/",
                                    "sessionid=fixed; Path=/", "csrftoken=fixed", "sessionid=fixed; Path=/echo"])
def test_a_mount_cannot_set_the_names_others_own(make: Callable[..., Send], cookie: str,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    # Session fixation: an app that is not Django setting Django's session or CSRF cookie,
    # or the gateway's canary ID. With one sign-in its sessionid was scoped to the site root.
    entry = make(shared_signin="sessionid")
    with caplog.at_level(logging.WARNING, logger="gateway"):
        answer = entry("GET", "/echo/x?cookie=" + quote(cookie) + "&cookie=" + quote("theme=dark"))
    assert answer.status == 200
    assert answer.all("Set-Cookie") == ["theme=dark; Path=/echo"]  # the app's own cookie stays
    name = cookie.partition("=")[0]
    assert f"The app at /echo set the cookie '{name}'" in caplog.text


def test_django_keeps_its_own_cookies(make: Callable[..., Send]) -> None:
    answer = make(shared_signin="sessionid")("GET", "/django/admin/login/")
    assert answer.status == 200
    assert [c.split(";")[0].partition("=")[0] for c in answer.all("Set-Cookie")] == ["csrftoken"]
    assert "Path=/django" in answer.get("Set-Cookie")


def test_a_mount_may_delete_the_shared_session_cookie(make: Callable[..., Send]) -> None:
    # A Flask sign-out (gateway.migration.signin.sign_out) deletes Django's session cookie.
    deleted = 'sessionid=""; expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0; Path=/'
    answer = make(shared_signin="sessionid")("GET", "/echo/x?cookie=" + quote(deleted))
    assert answer.all("Set-Cookie") == ['sessionid=""; expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0; Path=/']


async def cookie_app(scope, receive, send):  # type: ignore[no-untyped-def]
    """A bare ASGI app that answers the Cookie headers it was given, one a line."""
    cookies = b"\n".join(v for n, v in scope["headers"] if n == b"cookie")
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": cookies})


@pytest.mark.parametrize("kind", sorted(ENTRIES))
@pytest.mark.parametrize(("cookie", "kept"), [
    ("sessionid=abc; theme=dark; csrftoken=t", "theme=dark; csrftoken=t"),
    ("theme=dark;sessionid=abc", "theme=dark"),
    ("sessionid=abc", ""),
    ("sessionid=abc; sessionid=def; x=1", "x=1"),  # every one of the name
    ("mysessionid=abc; sessionid2=x", "mysessionid=abc; sessionid2=x"),  # other names that contain it
])
def test_the_shared_session_reaches_only_the_apps_that_read_it(kind: str, echo_table: MountTable, cookie: str,
                                                               kept: str) -> None:
    """With one sign-in, Django's session cookie is at the site root, so the browser sends
    it to every mount: the gateway hands it only to Django and to the Flask apps that read
    it (DjangoSignIn); any other app, WSGI or ASGI, could replay it."""
    from gateway.core.mounts import Mount

    table = MountTable([*echo_table, Mount("/cookies", "tests.integration.test_parity:cookie_app", "asgi", cookie_app)])
    build = builder(kind, table)
    try:
        shared = next(build)(shared_signin="sessionid")
        assert seen(shared, {"Cookie": cookie})["HTTP_COOKIE"] == kept
        assert shared("GET", "/cookies/x", {"Cookie": cookie}).body.decode() == kept
        unshared = next(builder(kind, table))()
        assert seen(unshared, {"Cookie": cookie})["HTTP_COOKIE"] == cookie  # no one sign-in: left alone
        assert unshared("GET", "/cookies/x", {"Cookie": cookie}).body.decode() == cookie
    finally:
        next(build, None)


def test_who_reads_the_shared_session(table: MountTable) -> None:
    from flask import Flask

    from gateway.core.pipeline import Pipeline, shares_signin
    from gateway.migration.rules import RouteSpec
    from gateway.migration.signin import DjangoSignIn

    signed = Flask("signed")
    DjangoSignIn(signed)
    django_app = table.mounts["/django"].app
    flask_app = table.mounts["/flask"].app
    assert shares_signin(django_app) and shares_signin(signed)
    assert not shares_signin(flask_app) and not shares_signin(cookie_app)
    # A rule's key reads it when any app it names does: its chain's, or its shadow's candidate.
    specs = [RouteSpec("/a", ("a", "b")), RouteSpec("/c", ("a", "c")), RouteSpec("/s", ("a",), shadow="b")]
    pipeline = Pipeline(rule_table(specs, {"a": flask_app, "b": signed, "c": cookie_app}), config_with())
    assert {spec.key for spec in specs} & pipeline.signin == {specs[0].key, specs[2].key}


class Middleware:
    """A WSGI middleware of the usual shape (WhiteNoise's, Sentry's): the app in an attribute."""

    def __init__(self, application: Any) -> None:
        self.application = application

    def __call__(self, environ: Any, start_response: Any) -> Any:
        return self.application(environ, start_response)


def closure_middleware(app: Any) -> Any:
    def middleware(environ: Any, start_response: Any) -> Any:
        return app(environ, start_response)

    return middleware


@pytest.mark.parametrize("kind", sorted(ENTRIES))
@pytest.mark.parametrize("wrap", [
    Middleware,
    closure_middleware,
    lambda app: Middleware(closure_middleware(Middleware(app))),  # three deep
    lambda app: functools.partial(Middleware.__call__, Middleware(app)),
], ids=["attribute", "closure", "three-deep", "partial"])
def test_django_wrapped_in_middleware_keeps_the_charset_check(kind: str, echo_table: MountTable,
                                                              wrap: Callable[[Any], Any]) -> None:
    """A Django app the user wraps in any WSGI middleware is still Django's: a form it cannot
    read is a 415 from the gateway, not a 500 from Django."""
    from gateway.core.mounts import Mount

    wrapped = wrap(echo_table.mounts["/django"].app)
    table = MountTable([*echo_table, Mount("/wrapped", "tests:wrapped", "wsgi", wrapped)])
    build = builder(kind, table)
    try:
        send = next(build)()
        form = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-16"}
        answer = send("POST", "/wrapped/admin/login/", form, b"a=b")
        assert answer.status == 415
        assert b"UTF-8" in answer.body
        plain = {"Content-Type": "application/x-www-form-urlencoded"}
        assert send("POST", "/wrapped/admin/login/", plain, b"a=b").status == 403  # Django's CSRF check
    finally:
        next(build, None)


def test_what_is_not_django_is_not_taken_for_it(echo_table: MountTable) -> None:
    from gateway.core.pipeline import is_django

    flask_app = echo_table.mounts["/flask"].app
    assert not any(is_django(app) for app in (flask_app, Middleware(flask_app), closure_middleware(flask_app),
                                              cookie_app, echo_table.mounts["/echo"].app))
    deep = echo_table.mounts["/django"].app
    for _ in range(5):  # past the depth looked at
        deep = Middleware(deep)
    assert not is_django(deep)


@pytest.fixture
def small_tmpdir(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Temporary files go to a tmpfs of its own with 256 KiB of room."""
    import subprocess
    import tempfile

    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"a tmpfs cannot be mounted here: {mounted.stderr.strip()}")
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.server  # it mounts a tmpfs (a subprocess)
@pytest.mark.parametrize("size", [300 * 1024, 2 * 1024 * 1024])
def test_a_body_the_disk_has_no_room_for_is_a_503_not_the_clients_fault(
        make: Callable[..., Send], small_tmpdir: Any, caplog: pytest.LogCaptureFixture, size: int) -> None:
    """A full TMPDIR while a body is stored: the server's failure, said in one line, never a
    400 (blaming the client) or a 500; no file is left behind."""
    entry = make()
    with caplog.at_level(logging.ERROR, logger="gateway"):
        answer = entry("POST", "/echo/x", {"Content-Type": "application/octet-stream"}, b"x" * size)
    assert answer.status == 503
    assert answer.body == b"Service Unavailable: there is no room to store this request body now; try again later.\n"
    assert answer.get("Retry-After") == "30"
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(lines) == 1
    assert lines[0].startswith("A request body could not be stored (No space left on device, after ")
    assert lines[0].endswith(f" in {small_tmpdir}): answered 503. Free space there, or point TMPDIR at a disk "
                             "with room.")
    assert list(small_tmpdir.iterdir()) == []
    assert entry("POST", "/echo/x", {"Content-Type": "text/plain"}, b"x" * 1024).status == 200  # small ones pass


@pytest.mark.server  # it mounts a tmpfs (a subprocess)
def test_a_chunked_body_the_disk_has_no_room_for_is_the_503_too(small_tmpdir: Any) -> None:
    import io

    from gateway.adapters.boundary import collect_body
    from gateway.replies import NO_SPACE

    environ = {"wsgi.input": io.BytesIO(b"x" * (300 * 1024)), "HTTP_TRANSFER_ENCODING": "chunked"}
    assert collect_body(environ, 10 * 1024 * 1024) is NO_SPACE
    assert environ["HTTP_TRANSFER_ENCODING"] == "chunked"  # the request was left as it came
    assert list(small_tmpdir.iterdir()) == []
