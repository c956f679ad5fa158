"""The ASGI entry point (:mod:`gateway.adapters.asgi`): what mutation testing found that no
other test held (docs/testing.md): the scope an ASGI mount's app is given, the draining
on SIGTERM, and the refusal of a websocket the pipeline answered.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from gateway.adapters.asgi import ASGIGateway, create_asgi_app
from gateway.core.config import Config
from gateway.core.mounts import MountTable

TIMEOUT = 5.0
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{CLIENT_TRACE}-00f067aa0ba902b7-01"


@pytest.fixture
def tracer_provider() -> None:
    """An SDK tracer provider, unless one is set already (``tests/integration/test_tracing.py`` sets its
    own, with its exporter, when it is collected: this runs later, and leaves it)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(TracerProvider())


async def scope_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An ASGI app that answers, as JSON, the scope it was given."""
    seen = {"headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in scope["headers"]],
            **{key: scope.get(key) for key in ("server", "scheme", "client", "root_path", "path")}}
    body = json.dumps(seen).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body[:10], "more_body": True})
    await send({"type": "http.response.body", "body": body[10:]})


@pytest.fixture(scope="module")
def small_table() -> MountTable:
    return MountTable.from_specs(["/scope=tests.integration.test_asgi_mutants:scope_app",
                                  "/third=tests.thirdapp:asgi_app", "/env=tests.thirdapp:echo_app"], defaults=False)


TRUSTED = Config.from_env({"GATEWAY_TRUSTED_PROXIES": "127.0.0.1"}).trusted_proxies


@pytest.fixture
def build(small_table: MountTable) -> Iterator[Any]:
    """Build ASGI gateways over the table, each with its own config; stop their pools after."""
    built: list[ASGIGateway] = []

    def make(**changes: Any) -> ASGIGateway:
        built.append(create_asgi_app(small_table, replace(Config.from_env({}), **changes), threads=2))
        return built[-1]

    yield make
    for gateway in built:
        gateway.executor.shutdown(wait=True)


def call(gateway: Any, path: str, headers: list[tuple[bytes, bytes]] = (), **scope: Any) -> list[dict[str, Any]]:
    """A GET of ``path`` from 127.0.0.1:5000; what the gateway sent."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    full = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
            "headers": [(b"host", b"localhost"), *headers], "client": ("127.0.0.1", 5000),
            "server": ("127.0.0.1", 8000), **scope}
    asyncio.run(asyncio.wait_for(gateway(full, receive, send), TIMEOUT))
    return sent


def seen(gateway: Any, headers: list[tuple[bytes, bytes]] = (), **scope: Any) -> dict[str, Any]:
    """The scope ``scope_app`` was given for a GET of /scope/x."""
    sent = call(gateway, "/scope/x", headers, **scope)
    assert sent[0]["status"] == 200
    return dict(json.loads(b"".join(m.get("body", b"") for m in sent[1:])))


def test_the_app_is_given_the_mounts_root_path_and_the_request_id(build: Any) -> None:
    got = seen(build(), [(b"accept", b"*/*")])
    assert (got["root_path"], got["path"], got["scheme"]) == ("/scope", "/scope/x", "http")
    assert got["headers"][:2] == [["host", "localhost"], ["accept", "*/*"]]  # in the order sent
    assert got["headers"][2][0] == "x-request-id" and len(got["headers"][2][1]) == 32


def test_a_non_ascii_path_reaches_the_app_as_text(build: Any) -> None:
    sent = call(build(), "/scope/caf\xe9", raw_path=b"/scope/caf%C3%A9")
    got = json.loads(b"".join(m.get("body", b"") for m in sent[1:]))
    assert (got["root_path"], got["path"]) == ("/scope", "/scope/caf\xe9")


def test_the_clients_request_id_is_the_only_one_the_app_sees(build: Any) -> None:
    got = seen(build(), [(b"x-request-id", b"client-id-1"), (b"accept", b"*/*")])
    assert got["headers"] == [["accept", "*/*"], ["host", "localhost"], ["x-request-id", "client-id-1"]]


def test_what_a_trusted_proxy_says_is_the_apps_scope(build: Any) -> None:
    got = seen(build(trusted_proxies=TRUSTED, allowed_hosts=("localhost", "example.org")),
               [(b"x-forwarded-for", b"203.0.113.9"), (b"x-forwarded-proto", b"https"),
                                                (b"x-forwarded-host", b"example.org")])
    assert (got["client"], got["scheme"], got["server"]) == (["203.0.113.9", 5000], "https", ["example.org", 443])
    hosts = [value for name, value in got["headers"] if name == "host"]
    assert hosts == ["example.org"]
    assert [name for name, _ in got["headers"]][-1] == "x-request-id"


def test_a_proxy_that_names_only_the_client_leaves_the_host(build: Any) -> None:
    got = seen(build(trusted_proxies=TRUSTED), [(b"x-forwarded-for", b"203.0.113.9")])
    assert got["headers"][0] == ["host", "localhost"]  # left in its place
    assert [value for name, value in got["headers"] if name == "host"] == ["localhost"]
    assert (got["client"], got["scheme"]) == (["203.0.113.9", 5000], "http")


@pytest.mark.usefixtures("tracer_provider")
def test_the_app_is_given_the_gateways_span_as_its_parent_once(build: Any) -> None:
    got = seen(build(tracing=True), [(b"traceparent", TRACEPARENT.encode()), (b"accept", b"*/*")])
    parents = [value for name, value in got["headers"] if name == "traceparent"]
    assert len(parents) == 1 and parents[0] != TRACEPARENT
    assert parents[0].startswith(f"00-{CLIENT_TRACE}-")
    assert ["accept", "*/*"] in got["headers"]


def test_the_shared_session_is_taken_out_of_the_cookies_of_an_app_that_may_not_read_it(build: Any) -> None:
    got = seen(build(shared_signin="sessionid"), [(b"cookie", b"sessionid=secret; theme=dark"),
                                                  (b"x-note", b"a=1; sessionid=2")])
    assert [value for name, value in got["headers"] if name == "cookie"] == ["theme=dark"]
    assert ["x-note", "a=1; sessionid=2"] in got["headers"]  # only the Cookie header is filtered


def test_a_websocket_the_pipeline_refuses_is_closed_before_the_app(build: Any) -> None:
    """A refusal (400: a Host not allowed) closes the handshake; a redirect would not be
    one, but the app is never reached either way here."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/third/ws", "root_path": "", "query_string": b"", "scheme": "ws",
             "headers": [(b"host", b"evil.example")], "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000)}
    gateway = build(allowed_hosts=("localhost",))
    asyncio.run(asyncio.wait_for(gateway(scope, receive, send), TIMEOUT))
    assert sent == [{"type": "websocket.close", "code": 1008}]
    sent.clear()
    scope["headers"] = [(b"host", b"localhost")]
    asyncio.run(asyncio.wait_for(gateway(scope, receive, send), TIMEOUT))
    assert sent[:2] == [{"type": "websocket.accept"}, {"type": "websocket.send", "text": "root_path=/third"}]


# -- draining on SIGTERM ---------------------------------------------------------------------


@pytest.fixture
def sigterm_handler() -> Iterator[list[int]]:
    """A server's SIGTERM handler that records its calls, put back as it was afterwards."""
    calls: list[int] = []
    before = signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))
    yield calls
    signal.signal(signal.SIGTERM, before)


def test_sigterm_drains_for_the_delay_then_hands_over_to_the_server(
    build: Any, sigterm_handler: list[int], caplog: pytest.LogCaptureFixture,
) -> None:
    gateway = build(drain_delay=0.05)

    async def main() -> tuple[list[int], list[int], bool]:
        gateway.drain_on_sigterm()
        ours = signal.getsignal(signal.SIGTERM)
        assert callable(ours)
        ours(signal.SIGTERM, None)
        during = list(sigterm_handler)
        while not sigterm_handler:  # the server's handler runs after the delay, on the loop
            await asyncio.sleep(0.01)
        return during, list(sigterm_handler), gateway.pipeline.draining

    with caplog.at_level(logging.INFO, "gateway"):
        during, after, draining = asyncio.run(asyncio.wait_for(main(), TIMEOUT))
    assert (during, after, draining) == ([], [signal.SIGTERM], True)
    assert "SIGTERM: draining for 0.1 s before shutting down." in [r.getMessage() for r in caplog.records]
    # While draining, every response asks the client to close its connection.
    sent = call(gateway, "/scope/x")
    assert (b"connection", b"close") in sent[0]["headers"]
    # A second SIGTERM does not wait.
    signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)  # type: ignore[operator]
    assert sigterm_handler == [signal.SIGTERM, signal.SIGTERM]


def test_without_a_drain_delay_sigterm_is_the_servers(build: Any, sigterm_handler: list[int]) -> None:
    handler = signal.getsignal(signal.SIGTERM)

    async def main() -> None:
        build(drain_delay=0).drain_on_sigterm()

    asyncio.run(main())
    assert signal.getsignal(signal.SIGTERM) is handler


# -- reloading the route rules ------------------------------------------------------------

RULES = """
[apps]
items = "tests.thirdapp:asgi_items"

[[route]]
rule = "/items/<n>"
app = "items"
"""


@pytest.fixture
def sighup_handler() -> Iterator[list[int]]:
    """A SIGHUP handler that records the signals the loop's handler did not take."""
    calls: list[int] = []
    before = signal.signal(signal.SIGHUP, lambda signum, frame: calls.append(signum))
    yield calls
    signal.signal(signal.SIGHUP, before)


def test_without_a_gateway_toml_a_reload_says_so(build: Any, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "gateway"):
        assert build().reload() is False
    assert [r.getMessage() for r in caplog.records] == [
        "SIGHUP: there is no gateway.toml to re-read (--config, GATEWAY_CONFIG)."]


def test_sighup_reloads_the_rules_off_the_loop_and_says_so(
    small_table: MountTable, tmp_path: Any, sighup_handler: list[int], caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text("[apps]\n")
    prepared: list[Any] = []
    gateway = ASGIGateway(small_table, Config.from_env({}).with_file(path), threads=2,
                          set_up=lambda config: prepared.append(config.config_file))

    async def main() -> None:
        gateway.reload_on_sighup()
        try:
            path.write_text(RULES)
            os.kill(os.getpid(), signal.SIGHUP)
            while not any(r.getMessage().startswith("Reloaded") for r in caplog.records):
                await asyncio.sleep(0.01)
        finally:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)

    try:
        with caplog.at_level(logging.INFO, "gateway"):
            asyncio.run(asyncio.wait_for(main(), TIMEOUT))
        assert sighup_handler == []  # the loop's handler took it
        assert f"Reloaded {path}: 1 route rule(s)." in [r.getMessage() for r in caplog.records]
        assert prepared == [path]  # the frameworks were set up for the new file first
        assert gateway.reloads == set()  # the reload's task, held until done, is let go
        sent = call(gateway, "/items/3")
        assert (sent[0]["status"], sent[1]["body"]) == (200, b"asgi item 3")
    finally:
        gateway.executor.shutdown(wait=True)


# -- the request head, and the access line ---------------------------------------------------

ASGI_HEADERS = [(b"host", b"localhost"), (b"x-a", b"12345"), (b"content-type", b"text/plain")]
ASGI_SIZE = sum(len(name) + len(value) for name, value in ASGI_HEADERS)


@pytest.mark.parametrize(("limit", "status"), [pytest.param(ASGI_SIZE, 200, id="at-the-limit"),
                                               pytest.param(ASGI_SIZE - 1, 431, id="one-past")])
def test_the_header_limit_counts_each_name_and_value_as_sent(build: Any, limit: int, status: int) -> None:
    sent = call(build(max_header_size=limit), "/scope/x", headers=ASGI_HEADERS[1:])
    assert sent[0]["status"] == status


def test_a_scope_with_only_the_required_keys_is_served(build: Any) -> None:
    """ASGI makes ``root_path``, ``query_string``, ``headers`` and the body's keys optional;
    without a Host the answer is the 400 that says so, not a 500."""
    gateway = build()
    got: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request"}

    async def send(message: dict[str, Any]) -> None:
        got.append(message)

    bare = {"type": "http", "method": "GET", "path": "/scope/x"}
    asyncio.run(asyncio.wait_for(gateway(bare, receive, send), TIMEOUT))
    assert got[0]["status"] == 400
    got.clear()
    asyncio.run(asyncio.wait_for(gateway({**bare, "headers": [(b"host", b"localhost")]}, receive, send), TIMEOUT))
    assert got[0]["status"] == 200
    assert json.loads(b"".join(m.get("body", b"") for m in got[1:]))["root_path"] == "/scope"
    got.clear()
    asyncio.run(asyncio.wait_for(gateway({**bare, "path": "/env/x", "headers": [(b"host", b"localhost")]},
                                         receive, send), TIMEOUT))
    assert got[0]["status"] == 200  # a WSGI mount, through the bridge
    assert json.loads(b"".join(m.get("body", b"") for m in got[1:]))["SCRIPT_NAME"] == "/env"


@pytest.fixture
def access_records() -> Iterator[list[logging.LogRecord]]:
    """The access log's records, kept while the test runs."""
    from gateway.observe.logs import access

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("gateway.access")
    saved = logger.handlers, logger.level, logger.propagate
    logger.handlers, logger.propagate = [Keep()], False
    logger.setLevel(logging.INFO)
    try:
        yield records
    finally:
        access.flush()
        logger.handlers, logger.propagate = saved[0], saved[2]
        logger.setLevel(saved[1])


def test_an_asgi_apps_response_is_logged_with_its_status_and_size(
    build: Any, access_records: list[logging.LogRecord],
) -> None:
    from gateway.observe.logs import access

    sent = call(build(), "/third/x")
    body = b"asgi root_path=/third path=/third/x"
    assert (sent[0]["status"], sent[1]["body"]) == (200, body)
    access.flush()
    logged = [(r.status, r.bytes, r.mount) for r in access_records]  # type: ignore[attr-defined]
    assert logged == [(200, len(body), "/third")]


def test_a_websocket_to_no_mount_is_refused(build: Any) -> None:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/nowhere", "root_path": "", "query_string": b"", "scheme": "ws",
             "headers": [(b"host", b"localhost")], "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000)}
    asyncio.run(asyncio.wait_for(build()(scope, receive, send), TIMEOUT))
    assert sent == [{"type": "websocket.close", "code": 1008}]


def test_an_apps_response_in_several_messages_is_logged_whole_with_its_protocol(
    build: Any, access_records: list[logging.LogRecord],
) -> None:
    from gateway.observe.logs import access

    sent = call(build(), "/scope/x", http_version="2")
    size = sum(len(m.get("body", b"")) for m in sent[1:])
    access.flush()
    assert [(r.status, r.bytes) for r in access_records] == [(200, size)]  # type: ignore[attr-defined]
    assert '"GET /scope/x HTTP/2"' in access_records[0].getMessage()


def test_https_from_the_server_gets_hsts(build: Any) -> None:
    sent = call(build(https=True), "/scope/x", scheme="https")
    assert (b"strict-transport-security", b"max-age=31536000; includeSubDomains") in sent[0]["headers"]


def test_without_a_gateway_toml_sighup_stays_the_servers(build: Any, sighup_handler: list[int]) -> None:
    handler = signal.getsignal(signal.SIGHUP)

    async def main() -> None:
        build().reload_on_sighup()

    asyncio.run(main())
    assert signal.getsignal(signal.SIGHUP) is handler
