"""``gateway.adapters.bridge.WSGIBridge`` against PEP 3333 and the ASGI HTTP spec, item by item.

Most tests drive the bridge as an ASGI app with a hand-written ``receive``/``send`` pair
(:class:`Peer`); the last section serves it with uvicorn on loopback. Where a2wsgi's own
tests cover a behaviour (``tests/test_wsgi.py`` upstream) there is an equivalent here.
"""

from __future__ import annotations

import ast
import asyncio
import contextvars
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn
from a2wsgi.wsgi import build_environ as a2wsgi_build_environ
from werkzeug.exceptions import BadRequest
from werkzeug.wrappers import Request, Response

from gateway.adapters.bridge import DEFAULT_BUFFER_SIZE, ClientDisconnected, WSGIBridge, build_environ
from gateway.types import Environ, Message, Scope, StartResponse, WSGIApp

TIMEOUT = 5.0
REQUEST: Message = {"type": "http.request", "body": b"", "more_body": False}
T = TypeVar("T")
ERROR_HEADERS = [(b"content-type", b"text/plain"), (b"content-length", b"21")]


class Boom(Exception):
    """The failure the test apps raise."""


# -- the server's half of an ASGI call ----------------------------------------------------


class Peer:
    """Play the ASGI server for one call: hand out ``incoming``, record what is sent.

    Once ``incoming`` is used up, ``receive`` blocks until :meth:`disconnect`, as a server's
    does after the request body. ``on_send`` may be a coroutine function.
    """

    def __init__(
        self,
        incoming: Iterable[Message] = (REQUEST,),
        on_send: Callable[[Peer, Message], Any] | None = None,
    ) -> None:
        self.incoming = list(incoming)
        self.on_send = on_send
        self.sent: list[Message] = []
        self.pulled = 0
        self.calling_threads: set[int] = set()
        # Set once the bridge has taken the http.disconnect and acted on it.
        self.disconnect_taken = threading.Event()
        self._gone: asyncio.Event
        self._taken: asyncio.Event

    def run(self, app: Any, scope: Scope) -> list[Message]:
        """Call ``app`` with ``scope`` on a fresh event loop; return the messages sent."""
        asyncio.run(self.call(app, scope))
        return self.sent

    async def call(self, app: Any, scope: Scope) -> None:
        """Call ``app`` with ``scope`` on the running loop."""
        self._gone = asyncio.Event()
        self._taken = asyncio.Event()
        await asyncio.wait_for(app(scope, self.receive, self.send), TIMEOUT)

    def receive(self) -> Awaitable[Message]:
        # Plain methods that return awaitables, so that the calling thread shows.
        self.calling_threads.add(threading.get_ident())
        return self.awaitable(self._receive())

    def send(self, message: Message) -> Awaitable[None]:
        self.calling_threads.add(threading.get_ident())
        return self.awaitable(self._send(message))

    @staticmethod
    def awaitable(coroutine: Coroutine[Any, Any, T]) -> Awaitable[T]:
        """What ``receive`` and ``send`` return: here the coroutine itself."""
        return coroutine

    async def _receive(self) -> Message:
        if self.incoming:
            self.pulled += 1
            return self.incoming.pop(0)
        await self._gone.wait()
        # Runs after the caller's current step, i.e. after it has handled the message.
        asyncio.get_running_loop().call_soon(self._mark_taken)
        return {"type": "http.disconnect"}

    def _mark_taken(self) -> None:
        self._taken.set()
        self.disconnect_taken.set()

    async def _send(self, message: Message) -> None:
        self.sent.append(message)
        if self.on_send is not None:
            result = self.on_send(self, message)
            if asyncio.iscoroutine(result):
                await result

    def disconnect(self) -> None:
        """Let the client go: pending and later ``receive`` calls return http.disconnect."""
        self._gone.set()

    async def disconnect_handled(self) -> None:
        """Wait until the bridge has received the http.disconnect."""
        await asyncio.wait_for(self._taken.wait(), TIMEOUT)


def http_scope(
    path: str = "/",
    *,
    root_path: str = "",
    method: str = "GET",
    query_string: bytes = b"",
    headers: Iterable[tuple[bytes, bytes]] = (),
    **extra: Any,
) -> Scope:
    """An ASGI HTTP scope as uvicorn builds it (``path`` includes ``root_path``)."""
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("utf-8"),
        "query_string": query_string,
        "root_path": root_path,
        "headers": list(headers),
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    scope.update(extra)
    return scope


def body_chunks(sent: list[Message]) -> list[tuple[bytes, bool]]:
    """The (body, more_body) of each http.response.body message."""
    return [
        (m.get("body", b""), m.get("more_body", False))
        for m in sent
        if m["type"] == "http.response.body"
    ]


def body_request(*chunks: bytes) -> list[Message]:
    """The http.request messages of a body sent in ``chunks``."""
    last = len(chunks) - 1
    return [
        {"type": "http.request", "body": chunk, "more_body": i < last}
        for i, chunk in enumerate(chunks)
    ]


class Tracked:
    """A response iterable that records calls to ``close()`` (and closes what it wraps)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self.iterator = iter(chunks)
        self.closed = 0
        self.closed_event = threading.Event()

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        return next(self.iterator)

    def close(self) -> None:
        self.closed += 1
        close = getattr(self.iterator, "close", None)
        if close is not None:
            close()
        self.closed_event.set()


class ClosingList(list[bytes]):
    """A list response (the bridge's fast path) with a ``close()``."""

    closed = 0

    def close(self) -> None:
        self.closed += 1


def text_app(body: bytes = b"hello", status: str = "200 OK") -> WSGIApp:
    """An app answering ``body`` as a list, with a Content-Length."""

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    return app


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    """A small pool for the bridge; the test fails if a WSGI call is left running."""
    pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="test-wsgi")
    yield pool
    stopper = threading.Thread(target=pool.shutdown, daemon=True)
    stopper.start()
    stopper.join(TIMEOUT)
    assert not stopper.is_alive(), "a WSGI call was still running after the test"


@pytest.fixture
def make_bridge(executor: ThreadPoolExecutor) -> Callable[..., WSGIBridge]:
    """Build a ``WSGIBridge`` for an app on the test's pool."""

    def make(app: WSGIApp, **kwargs: Any) -> WSGIBridge:
        return WSGIBridge(app, executor, **kwargs)

    return make


@pytest.fixture
def environ_of(make_bridge: Callable[..., WSGIBridge]) -> Callable[..., Environ]:
    """Serve one request and return the environ the app was called with."""

    def serve(scope: Scope, incoming: Iterable[Message] = (REQUEST,)) -> Environ:
        seen: list[Environ] = []

        def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
            seen.append(dict(environ))
            start_response("204 No Content", [])
            return []

        Peer(incoming).run(make_bridge(app), scope)
        [environ] = seen
        return environ

    return serve


# -- environ (PEP 3333 "environ Variables") -------------------------------------------------


def test_environ_of_a_full_scope() -> None:
    # a2wsgi: test_build_environ. SERVER_PORT must be a str (PEP 3333: CGI variables are
    # native strings); REMOTE_PORT is extra; no wsgi.input_terminated with a length.
    scope = http_scope(
        "/中文",
        query_string=b"a=123&b=456",
        headers=[
            (b"host", b"www.example.org"),
            (b"content-type", b"application/json"),
            (b"content-length", b"18"),
            (b"accept", b"application/json"),
            (b"accept", b"text/plain"),
        ],
        scheme="https",
        client=("134.56.78.4", 1453),
        server=("www.example.org", 443),
    )
    stream = object()
    assert build_environ(scope, stream) == {
        "CONTENT_LENGTH": "18",
        "CONTENT_TYPE": "application/json",
        "HTTP_ACCEPT": "application/json,text/plain",
        "HTTP_HOST": "www.example.org",
        "PATH_INFO": "/中文".encode().decode("latin-1"),
        "QUERY_STRING": "a=123&b=456",
        "REMOTE_ADDR": "134.56.78.4",
        "REMOTE_PORT": "1453",
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "SERVER_NAME": "www.example.org",
        "SERVER_PORT": "443",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.errors": sys.stderr,
        "wsgi.input": stream,
        "wsgi.multiprocess": True,
        "wsgi.multithread": True,
        "wsgi.run_once": False,
        "wsgi.url_scheme": "https",
        "wsgi.version": (1, 0),
    }


def test_environ_types_follow_pep3333(environ_of: Callable[..., Environ]) -> None:
    environ = environ_of(
        http_scope("/ä", query_string=b"x=\xff", headers=[(b"x-name", b"caf\xe9")]),
    )
    for key in (
        "REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "SERVER_NAME",
        "SERVER_PORT", "SERVER_PROTOCOL",
    ):
        assert key in environ, key
    for key, value in environ.items():
        assert type(key) is str
        if not key.startswith("wsgi."):
            # "Native strings" holding bytes: every character is latin-1.
            assert type(value) is str, key
            value.encode("latin-1")
    assert environ["wsgi.version"] == (1, 0)
    assert environ["wsgi.url_scheme"] == "http"
    for key in ("wsgi.multithread", "wsgi.multiprocess", "wsgi.run_once"):
        assert type(environ[key]) is bool
    for method in ("read", "readline", "readlines", "__iter__"):
        assert callable(getattr(environ["wsgi.input"], method))
    for method in ("write", "writelines", "flush"):
        assert callable(getattr(environ["wsgi.errors"], method))
    assert environ["HTTP_X_NAME"] == "café"
    assert environ["QUERY_STRING"] == "x=\xff"


@pytest.mark.parametrize(
    ("root_path", "path", "script_name", "path_info"),
    [
        pytest.param("", "/", "", "/", id="root"),
        pytest.param("", "/a/b", "", "/a/b", id="unmounted"),
        pytest.param("/flask", "/flask/hello", "/flask", "/hello", id="mounted"),
        pytest.param("/flask", "/flask", "/flask", "", id="bare-prefix"),
        pytest.param("/flask", "/flask/", "/flask", "/", id="prefix-slash"),
        pytest.param("/a/b", "/a/b/c/d", "/a/b", "/c/d", id="deep-prefix"),
        pytest.param("/flask", "/hello", "/flask", "/hello", id="path-without-root-path"),
        # Not under the prefix: no "/" after it (Kludex/starlette#2599).
        pytest.param("/flask", "/flaskx/y", "/flask", "/flaskx/y", id="prefix-without-boundary"),
        pytest.param(
            "", "/café/中文", "", "/café/中文".encode().decode("latin-1"), id="non-ascii-path"
        ),
        pytest.param(
            "/ünï", "/ünï/ö", "/ünï".encode().decode("latin-1"), "/ö".encode().decode("latin-1"),
            id="non-ascii-prefix",
        ),
    ],
)
def test_script_name_and_path_info(
    environ_of: Callable[..., Environ], root_path: str, path: str, script_name: str, path_info: str
) -> None:
    environ = environ_of(http_scope(path, root_path=root_path))
    assert (environ["SCRIPT_NAME"], environ["PATH_INFO"]) == (script_name, path_info)


def test_non_ascii_path_is_utf8_bytes_as_latin1(environ_of: Callable[..., Environ]) -> None:
    environ = environ_of(http_scope("/中文"))
    assert environ["PATH_INFO"] == "/\xe4\xb8\xad\xe6\x96\x87"
    assert environ["PATH_INFO"].encode("latin-1").decode("utf-8") == "/中文"


def test_script_name_environment_variable_does_not_override_root_path(
    environ_of: Callable[..., Environ], monkeypatch: pytest.MonkeyPatch
) -> None:
    # a2wsgi: test_build_environ_with_env, where SCRIPT_NAME in os.environ wins. Here the
    # mount decides (docs/upstream.md).
    monkeypatch.setenv("SCRIPT_NAME", "/urlprefix")
    environ = environ_of(http_scope("/flask/x", root_path="/flask"))
    assert (environ["SCRIPT_NAME"], environ["PATH_INFO"]) == ("/flask", "/x")


@pytest.mark.parametrize(
    ("query_string", "expected"),
    [
        pytest.param(b"", "", id="empty"),
        pytest.param(b"a=1&b=2", "a=1&b=2", id="plain"),
        pytest.param(b"q=%E4%B8%AD&x=a+b", "q=%E4%B8%AD&x=a+b", id="left-encoded"),
        pytest.param(b"q=\xe4\xb8\xad", "q=\xe4\xb8\xad", id="raw-bytes-as-latin1"),
    ],
)
def test_query_string(
    environ_of: Callable[..., Environ], query_string: bytes, expected: str
) -> None:
    assert environ_of(http_scope(query_string=query_string))["QUERY_STRING"] == expected


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        pytest.param(
            {"server": ("10.0.0.1", 8443), "client": ("10.0.0.2", 4321)},
            {"SERVER_NAME": "10.0.0.1", "SERVER_PORT": "8443",
             "REMOTE_ADDR": "10.0.0.2", "REMOTE_PORT": "4321"},
            id="tcp",
        ),
        pytest.param(
            {"server": None, "client": None},
            {"SERVER_NAME": "localhost", "SERVER_PORT": "80",
             "REMOTE_ADDR": None, "REMOTE_PORT": None},
            id="unknown-peers",
        ),
        pytest.param(
            {"server": ("/run/app.sock", None)},
            # CGI wants a number: "0" for a unix socket, as a2wsgi has it.
            {"SERVER_NAME": "/run/app.sock", "SERVER_PORT": "0"},
            id="unix-socket",
        ),
        pytest.param(
            {"http_version": "2", "scheme": "https"},
            {"SERVER_PROTOCOL": "HTTP/2", "wsgi.url_scheme": "https"},
            id="http2-https",
        ),
    ],
)
def test_server_client_and_protocol(
    environ_of: Callable[..., Environ], extra: dict[str, Any], expected: dict[str, Any]
) -> None:
    environ = environ_of(http_scope(**extra))
    assert {key: environ.get(key) for key in expected} == expected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param(
            [(b"content-type", b"text/csv"), (b"content-length", b"0")],
            {"CONTENT_TYPE": "text/csv", "CONTENT_LENGTH": "0",
             "HTTP_CONTENT_TYPE": None, "HTTP_CONTENT_LENGTH": None},
            id="content-headers-without-http-prefix",
        ),
        pytest.param(
            [], {"CONTENT_TYPE": None, "CONTENT_LENGTH": None}, id="no-content-headers"
        ),
        pytest.param(
            [(b"x-request-id", b"abc"), (b"accept-language", b"de")],
            {"HTTP_X_REQUEST_ID": "abc", "HTTP_ACCEPT_LANGUAGE": "de"},
            id="dashes-to-underscores",
        ),
        pytest.param(
            [(b"accept", b"text/html"), (b"accept", b"*/*"), (b"x-a", b"1"), (b"x-a", b"2")],
            {"HTTP_ACCEPT": "text/html,*/*", "HTTP_X_A": "1,2"},
            id="duplicates-joined-with-comma",
        ),
        pytest.param(
            [(b"cookie", b"a=1"), (b"cookie", b"b=2; c=3")],
            {"HTTP_COOKIE": "a=1; b=2; c=3"},
            id="cookies-joined-with-semicolon",
        ),
        pytest.param(
            [(b"x_forwarded_for", b"6.6.6.6"), (b"x-forwarded-for", b"1.2.3.4"),
             (b"content_length", b"99")],
            {"HTTP_X_FORWARDED_FOR": "1.2.3.4", "CONTENT_LENGTH": None},
            id="underscore-names-dropped",
        ),
        pytest.param(
            [(b"x_only", b"spoof")], {"HTTP_X_ONLY": None}, id="underscore-name-alone-dropped"
        ),
        pytest.param(
            [(b"x-latin", b"caf\xe9")], {"HTTP_X_LATIN": "caf\xe9"}, id="value-latin1"
        ),
    ],
)
def test_request_headers(
    environ_of: Callable[..., Environ],
    headers: list[tuple[bytes, bytes]],
    expected: dict[str, str | None],
) -> None:
    environ = environ_of(http_scope(headers=headers))
    assert {key: environ.get(key) for key in expected} == expected


@pytest.mark.parametrize(
    ("name", "key", "separator"),
    [
        pytest.param(b"x-dup", "HTTP_X_DUP", ",", id="comma"),
        pytest.param(b"cookie", "HTTP_COOKIE", "; ", id="cookie"),
    ],
)
def test_many_repeated_headers_are_joined_in_order(name: bytes, key: str, separator: str) -> None:
    # A client chooses how often a header repeats: 64,000 once took seconds to join.
    values = [f"v{i}" for i in range(64_000)]
    headers = [(b"x-other", b"first"), *((name, v.encode()) for v in values), (b"x_dup", b"dropped")]
    environ = build_environ(http_scope(headers=headers), None)
    assert environ[key] == separator.join(values)
    assert environ["HTTP_X_OTHER"] == "first"


@pytest.mark.parametrize(
    ("headers", "incoming", "terminated"),
    [
        pytest.param([], [REQUEST], True, id="no-body"),
        pytest.param(
            [(b"transfer-encoding", b"chunked")], body_request(b"ab", b"cd"), True, id="chunked"
        ),
        pytest.param([(b"content-length", b"4")], body_request(b"ab", b"cd"), None, id="length"),
        pytest.param([(b"content-length", b"0")], [REQUEST], None, id="zero-length"),
    ],
)
def test_input_terminated_only_without_content_length(
    environ_of: Callable[..., Environ],
    headers: list[tuple[bytes, bytes]],
    incoming: list[Message],
    terminated: bool | None,
) -> None:
    environ = environ_of(http_scope(method="POST", headers=headers), incoming)
    assert environ.get("wsgi.input_terminated") is terminated


@pytest.mark.parametrize(
    "scope",
    [
        pytest.param(
            http_scope("/x/y", root_path="/x", query_string=b"a=1&a=2", method="POST",
                       headers=[(b"host", b"h"), (b"content-type", b"text/plain"),
                                (b"content-length", b"3"), (b"accept", b"a"), (b"accept", b"b")]),
            id="mounted-post",
        ),
        pytest.param(http_scope("/中文", scheme="https", server=("example.org", 443)), id="utf8"),
        pytest.param(http_scope("/", server=None, client=None), id="no-peers"),
    ],
)
def test_environ_agrees_with_a2wsgi(scope: Scope, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCRIPT_NAME", raising=False)
    ours = build_environ(scope, None)
    theirs = a2wsgi_build_environ(scope, None)  # type: ignore[arg-type]
    # Deliberate differences: a2wsgi writes errors to stdout, adds asgi.scope, and never
    # sets wsgi.input_terminated.
    for key in ("wsgi.errors", "wsgi.input_terminated", "asgi.scope"):
        ours.pop(key, None)
        theirs.pop(key, None)
    assert ours == theirs


# -- the response (PEP 3333 "The start_response() Callable", ASGI "Response Start/Body") ---


def generator_with_length_app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    yield b"he"
    yield b""
    yield b"llo"


def lazy_start_app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
    # start_response is called on the first iteration, not by the call itself.
    start_response("200 OK", [("Content-Length", "5")])
    yield b"hello"


@pytest.mark.parametrize(
    ("app", "body"),
    [
        pytest.param(text_app(), b"hello", id="list"),
        pytest.param(
            lambda e, s: (s("200 OK", [("Content-Type", "text/plain")]), (b"hel", b"lo"))[1],
            b"hello", id="tuple-without-length",
        ),
        pytest.param(generator_with_length_app, b"hello", id="generator-with-small-length"),
        pytest.param(lazy_start_app, b"hello", id="start-response-on-first-iteration"),
        pytest.param(
            lambda e, s: (s("204 No Content", []), iter([]))[1], b"", id="empty-generator"
        ),
        pytest.param(
            lambda e, s: (s("200 OK", []), iter([b"", b""]))[1], b"", id="only-empty-chunks"
        ),
        pytest.param(Response("hello"), b"hello", id="werkzeug-response"),
    ],
)
def test_small_response_is_one_start_and_one_body(
    make_bridge: Callable[..., WSGIBridge], app: WSGIApp, body: bytes
) -> None:
    sent = Peer().run(make_bridge(app), http_scope())
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert body_chunks(sent) == [(body, False)]


def test_response_start_carries_int_status_and_byte_headers(
    make_bridge: Callable[..., WSGIBridge],
) -> None:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        start_response(
            "201 Created",
            [("Content-Type", "text/plain"), ("X-Tag", "a"), ("X-Tag", "b"),
             ("Content-Length", "2")],
        )
        return [b"ok"]

    start, _ = Peer().run(make_bridge(app), http_scope())
    assert start == {
        "type": "http.response.start",
        "status": 201,
        "headers": [
            (b"content-type", b"text/plain"), (b"x-tag", b"a"), (b"x-tag", b"b"),
            (b"content-length", b"2"),
        ],
    }


def test_list_larger_than_buffer_is_sent_in_buffer_sized_pieces(
    make_bridge: Callable[..., WSGIBridge],
) -> None:
    sent = Peer().run(make_bridge(text_app(b"0123456789"), buffer_size=4), http_scope())
    assert sent[0]["type"] == "http.response.start"
    assert body_chunks(sent) == [
        (b"0123", True), (b"4567", True), (b"89", True), (b"", False),
    ]


@pytest.mark.parametrize(
    ("headers", "buffer_size"),
    [
        pytest.param([("Content-Type", "text/plain")], 65536, id="no-content-length"),
        pytest.param([("Content-Length", "10")], 8, id="content-length-above-buffer"),
    ],
)
def test_generator_response_streams_chunk_by_chunk(
    make_bridge: Callable[..., WSGIBridge], headers: list[tuple[str, str]], buffer_size: int
) -> None:
    first_sent = threading.Event()
    waited: list[bool] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", headers)
        yield b"first"
        # The test's send sets the event when it sees the first chunk: the last chunk is
        # only produced once the first one has gone out.
        waited.append(first_sent.wait(TIMEOUT))
        yield b"last!"

    def on_send(peer: Peer, message: Message) -> None:
        if message.get("body") == b"first":
            first_sent.set()

    sent = Peer(on_send=on_send).run(make_bridge(app, buffer_size=buffer_size), http_scope())
    assert waited == [True]
    assert body_chunks(sent) == [(b"first", True), (b"last!", True), (b"", False)]


def test_headers_wait_for_the_first_non_empty_chunk(make_bridge: Callable[..., WSGIBridge]) -> None:
    peer = Peer()
    sent_before: list[list[str]] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b""
        sent_before.append([m["type"] for m in peer.sent])
        yield b"data"

    peer.run(make_bridge(app), http_scope())
    # PEP 3333: no headers until the first non-empty chunk (or the end of the iterable).
    assert sent_before == [[]]
    assert body_chunks(peer.sent) == [(b"data", True), (b"", False)]


@pytest.mark.parametrize(("stream_response", "expected"), [
    # A streamed response: while a chunk is being sent, the app is not asked for the next.
    pytest.param(True, [1, 2, 3], id="streamed"),
    # A buffered one: the app's thread runs ahead of the client, to the end.
    pytest.param(False, [3, 3, 3], id="buffered"),
])
def test_a_streamed_response_waits_for_the_server_to_take_each_chunk(
    make_bridge: Callable[..., WSGIBridge], stream_response: bool, expected: list[int],
) -> None:
    produced: list[int] = []
    seen_while_sending: list[int] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [])
        for i in range(3):
            produced.append(i)
            yield b"x"

    async def slow_send(peer: Peer, message: Message) -> None:
        if message.get("body"):
            await asyncio.sleep(0.05)
            seen_while_sending.append(len(produced))

    Peer(on_send=slow_send).run(make_bridge(app, stream_response=stream_response), http_scope())
    assert seen_while_sending == expected


# -- Content-Length (PEP 3333: "should not" send more than the header declares) -----------


OVERRUN_CHUNKS = [b"0123", b"45", b"6789"]
OVERRUN_WARNING = "The app at {} sent more than its Content-Length of 8 bytes; the rest was dropped."


def bridge_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The messages logged at WARNING on ``gateway.adapters.bridge``."""
    return [r.getMessage() for r in caplog.records if r.name == "gateway.bridge" and r.levelno == logging.WARNING]


@pytest.mark.parametrize(
    ("result", "buffer_size", "expected"),
    [
        pytest.param(
            lambda: iter(OVERRUN_CHUNKS), DEFAULT_BUFFER_SIZE, [(b"01234567", False)],
            id="generator-buffered",
        ),
        pytest.param(
            lambda: iter(OVERRUN_CHUNKS), 4,
            [(b"0123", True), (b"45", True), (b"67", True), (b"", False)],
            id="generator-streamed",
        ),
        pytest.param(lambda: list(OVERRUN_CHUNKS), DEFAULT_BUFFER_SIZE, [(b"01234567", False)], id="list-buffered"),
        pytest.param(
            lambda: list(OVERRUN_CHUNKS), 4, [(b"0123", True), (b"4567", True), (b"", False)],
            id="list-streamed",
        ),
        pytest.param(lambda: tuple(OVERRUN_CHUNKS), DEFAULT_BUFFER_SIZE, [(b"01234567", False)], id="tuple"),
    ],
)
def test_body_longer_than_content_length_is_cut_and_completed(
    make_bridge: Callable[..., WSGIBridge],
    caplog: pytest.LogCaptureFixture,
    result: Callable[[], Iterable[bytes]],
    buffer_size: int,
    expected: list[tuple[bytes, bool]],
) -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "8")])
        return result()

    bridge = make_bridge(app, buffer_size=buffer_size, name="/flask")
    with caplog.at_level(logging.DEBUG, logger="gateway.bridge"):
        sent = Peer().run(bridge, http_scope("/flask/x", root_path="/flask"))
    assert sent[0]["status"] == 200
    assert (b"content-length", b"8") in sent[0]["headers"]
    # Exactly the declared bytes, and a last message that ends the response.
    assert body_chunks(sent) == expected
    assert bridge_warnings(caplog) == [OVERRUN_WARNING.format("/flask")]


def test_overrun_stops_the_iteration_and_closes(
    make_bridge: Callable[..., WSGIBridge], caplog: pytest.LogCaptureFixture
) -> None:
    produced: list[int] = []

    def endless() -> Iterator[bytes]:
        for i in range(1000):
            produced.append(i)
            yield b"012"

    result = Tracked(endless())

    def app(environ: Environ, start_response: StartResponse) -> Tracked:
        start_response("200 OK", [("Content-Length", "8")])
        return result

    with caplog.at_level(logging.DEBUG, logger="gateway.bridge"):
        sent = Peer().run(make_bridge(app), http_scope("/endless"))
    assert body_chunks(sent) == [(b"01201201", False)]
    # The third chunk is the first one past the length: nothing more is asked for.
    assert produced == [0, 1, 2]
    assert result.closed == 1
    assert bridge_warnings(caplog) == [OVERRUN_WARNING.format("/endless")]


def test_overrun_through_write(make_bridge: Callable[..., WSGIBridge], caplog: pytest.LogCaptureFixture) -> None:
    iterated: list[bytes] = []

    def rest() -> Iterator[bytes]:
        iterated.append(b"more")
        yield b"more"

    result = Tracked(rest())

    def app(environ: Environ, start_response: StartResponse) -> Tracked:
        write = start_response("200 OK", [("Content-Length", "8")])
        write(b"012345")
        write(b"6789")
        write(b"ab")
        return result

    with caplog.at_level(logging.DEBUG, logger="gateway.bridge"):
        sent = Peer().run(make_bridge(app, name="/django"), http_scope("/django/w", root_path="/django"))
    assert body_chunks(sent) == [(b"012345", True), (b"67", True), (b"", False)]
    assert iterated == []
    assert result.closed == 1
    assert bridge_warnings(caplog) == [OVERRUN_WARNING.format("/django")]


@pytest.mark.parametrize(
    "chunks",
    [
        pytest.param([b"0123", b"4567"], id="exact"),
        pytest.param([b"0123", b"4567", b"", b""], id="exact-then-empty-chunks"),
    ],
)
def test_body_of_exactly_content_length_is_no_overrun(
    make_bridge: Callable[..., WSGIBridge], caplog: pytest.LogCaptureFixture, chunks: list[bytes]
) -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Length", "8")])
        return iter(chunks)

    with caplog.at_level(logging.DEBUG, logger="gateway.bridge"):
        sent = Peer().run(make_bridge(app, buffer_size=4), http_scope())
    assert body_chunks(sent) == [(b"0123", True), (b"4567", True), (b"", False)]
    assert bridge_warnings(caplog) == []


class FuturePeer(Peer):
    """A server whose ``receive`` and ``send`` return futures, not coroutines (ASGI allows any
    awaitable); like asyncio's own objects they may only be used on the loop's thread."""

    @staticmethod
    def awaitable(coroutine: Coroutine[Any, Any, T]) -> Awaitable[T]:
        return asyncio.get_running_loop().create_task(coroutine)


@pytest.mark.parametrize("peer_class", [pytest.param(Peer, id="coroutines"),
                                        pytest.param(FuturePeer, id="futures")])
def test_receive_and_send_are_called_on_the_event_loop_thread(
    make_bridge: Callable[..., WSGIBridge], peer_class: type[Peer]
) -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        data = environ["wsgi.input"].read()
        write = start_response("200 OK", [])
        write(data[:2])
        yield data[2:]

    peer = peer_class(body_request(b"ab", b"cd", b"ef"))
    loop_threads: set[int] = set()

    async def main() -> None:
        loop_threads.add(threading.get_ident())
        await peer.call(make_bridge(app), http_scope(method="POST"))

    asyncio.run(main())
    assert body_chunks(peer.sent) == [(b"ab", True), (b"cdef", True), (b"", False)]
    assert peer.calling_threads == loop_threads


# -- the request body (PEP 3333 "Input and Error Streams", ASGI "Request") ----------------


LINES_BODY = body_request(b"first li", b"ne\nsecond", b"", b" line\n", b"third")
LINES = [b"first line\n", b"second line\n", b"third"]


def read_all(stream: Any) -> list[bytes]:
    return [stream.read()]


def read_in_threes(stream: Any) -> list[bytes]:
    parts = []
    while chunk := stream.read(3):
        parts.append(chunk)
    assert {len(part) for part in parts[:-1]} == {3}
    return [b"".join(parts)]


def read_lines(stream: Any) -> list[bytes]:
    lines = []
    while line := stream.readline():
        lines.append(line)
    return lines


@pytest.mark.parametrize(
    ("reader", "expected"),
    [
        pytest.param(read_all, [b"".join(LINES)], id="read"),
        pytest.param(read_in_threes, [b"".join(LINES)], id="read-n"),
        pytest.param(read_lines, LINES, id="readline"),
        pytest.param(lambda s: list(s), LINES, id="iterate"),
        pytest.param(lambda s: s.readlines(), LINES, id="readlines"),
        pytest.param(
            lambda s: [s.readline(4), s.readline(100), s.readline(0), s.read(2), s.read()],
            [b"firs", b"t line\n", b"", b"se", b"cond line\nthird"],
            id="readline-limit",
        ),
        pytest.param(
            lambda s: [s.read(0), s.read(100), s.read(), s.readline(), s.read(1)],
            [b"", b"".join(LINES), b"", b"", b""],
            id="past-the-end",
        ),
    ],
)
def test_request_body_in_several_messages(
    make_bridge: Callable[..., WSGIBridge],
    reader: Callable[[Any], list[bytes]],
    expected: list[bytes],
) -> None:
    # a2wsgi: test_body and test_wsgi_post.
    got: list[list[bytes]] = []

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        got.append(reader(environ["wsgi.input"]))
        start_response("200 OK", [])
        return []

    Peer(LINES_BODY).run(make_bridge(app), http_scope(method="POST"))
    assert got == [expected]


def test_request_body_is_received_ahead_of_the_app_up_to_the_read_ahead(
    make_bridge: Callable[..., WSGIBridge],
) -> None:
    pulled: list[int] = []
    peer = Peer(body_request(b"aaa", b"bbb", b"ccc"))

    def wait_pulled(count: int) -> None:
        deadline = time.monotonic() + TIMEOUT
        while peer.pulled < count and time.monotonic() < deadline:
            time.sleep(0.005)

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        stream = environ["wsgi.input"]
        wait_pulled(2)  # "aaa" and "bbb": 6 bytes, past the read-ahead of 5: no more
        pulled.append(peer.pulled)
        assert stream.read(3) == b"aaa"  # 3 left: room again
        wait_pulled(3)
        assert stream.read(4) == b"bbbc"
        assert stream.read() == b"cc"
        pulled.append(peer.pulled)
        start_response("200 OK", [])
        return []

    peer.run(make_bridge(app, read_ahead=5), http_scope(method="POST"))
    assert pulled == [2, 3]


def test_an_unread_body_is_received_no_further_than_the_read_ahead(make_bridge: Callable[..., WSGIBridge]) -> None:
    peer = Peer(body_request(b"a" * 10, b"b" * 10, b"c" * 10))
    sent = peer.run(make_bridge(text_app(), read_ahead=15), http_scope(method="POST"))
    assert body_chunks(sent) == [(b"hello", False)]
    assert peer.pulled <= 2


def test_body_with_content_length_in_several_messages(
    make_bridge: Callable[..., WSGIBridge],
) -> None:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        data = environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))
        start_response("200 OK", [("Content-Length", str(len(data)))])
        return [data]

    scope = http_scope(method="PUT", headers=[(b"content-length", b"6")])
    sent = Peer(body_request(b"ab", b"cd", b"ef")).run(make_bridge(app), scope)
    assert body_chunks(sent) == [(b"abcdef", False)]


def test_body_read_after_the_response_started(make_bridge: Callable[..., WSGIBridge]) -> None:
    # Full duplex: nothing but the app may take the body messages, even once streaming.
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        write = start_response("200 OK", [])
        write(b"reading:")
        return [environ["wsgi.input"].read()]

    peer = Peer(body_request(b"ab", b"cd", b"ef"))
    sent = peer.run(make_bridge(app), http_scope(method="POST"))
    assert body_chunks(sent) == [(b"reading:", True), (b"abcdef", True), (b"", False)]


MULTIPART = (
    b'--X\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n'
    b'--X\r\nContent-Disposition: form-data; name="f"; filename="f.txt"\r\n\r\nfile!\r\n'
    b"--X--\r\n"
)


@pytest.mark.parametrize(
    "with_length", [pytest.param(True, id="content-length"), pytest.param(False, id="chunked")]
)
@pytest.mark.parametrize(
    ("content_type", "body", "expected"),
    [
        pytest.param(
            b"application/x-www-form-urlencoded", b"a=1&b=%C3%A9", ({"a": "1", "b": "é"}, {}),
            id="urlencoded",
        ),
        pytest.param(
            b"multipart/form-data; boundary=X", MULTIPART, ({"a": "1"}, {"f": b"file!"}),
            id="multipart",
        ),
    ],
)
def test_werkzeug_parses_a_body_sent_in_pieces(
    make_bridge: Callable[..., WSGIBridge],
    with_length: bool,
    content_type: bytes,
    body: bytes,
    expected: tuple[dict[str, str], dict[str, bytes]],
) -> None:
    parsed: list[tuple[dict[str, str], dict[str, bytes]]] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        with Request(environ) as request:  # closes the uploaded files
            parsed.append((dict(request.form), {k: f.read() for k, f in request.files.items()}))
        return Response("ok")(environ, start_response)

    headers = [(b"content-type", content_type)]
    if with_length:
        headers.append((b"content-length", str(len(body)).encode()))
    pieces = [body[i : i + 5] for i in range(0, len(body), 5)]
    Peer(body_request(*pieces)).run(make_bridge(app), http_scope(method="POST", headers=headers))
    assert parsed == [expected]


def test_client_leaving_while_the_app_reads_the_body(
    make_bridge: Callable[..., WSGIBridge],
) -> None:
    errors: list[BaseException] = []
    peer = Peer([{"type": "http.request", "body": b"part", "more_body": True},
                 {"type": "http.disconnect"}])

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        try:
            environ["wsgi.input"].read()
        except ClientDisconnected as exc:
            errors.append(exc)
        start_response("400 Bad Request", [("Content-Length", "0")])
        return []

    peer.run(make_bridge(app), http_scope(method="POST"))
    [error] = errors
    # Flask answers a BadRequest with a 400; Django turns an OSError into UnreadablePostError.
    assert isinstance(error, BadRequest) and isinstance(error, OSError)


def test_client_gone_before_the_body_means_no_call(make_bridge: Callable[..., WSGIBridge]) -> None:
    calls: list[Environ] = []

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        calls.append(environ)
        return text_app()(environ, start_response)

    sent = Peer([{"type": "http.disconnect"}]).run(make_bridge(app), http_scope())
    assert (calls, sent) == ([], [])


# -- close() (PEP 3333: "must call that method upon completion of the current request") ----


@pytest.mark.parametrize(
    "iterable",
    [
        pytest.param(lambda: ClosingList([b"small"]), id="small-list"),
        pytest.param(lambda: ClosingList([b"x" * 10]), id="large-list"),
        pytest.param(lambda: Tracked([b"a", b"b"]), id="small-iterable"),
        pytest.param(lambda: Tracked([b"x" * 10, b"y" * 10]), id="streamed-iterable"),
    ],
)
def test_close_is_called_once_after_a_normal_response(
    make_bridge: Callable[..., WSGIBridge], iterable: Callable[[], ClosingList | Tracked]
) -> None:
    result = iterable()

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [])
        return result

    sent = Peer().run(make_bridge(app, buffer_size=8), http_scope())
    assert result.closed == 1
    assert body_chunks(sent)[-1][1] is False


def test_close_is_called_when_the_server_fails_a_send(
    make_bridge: Callable[..., WSGIBridge],
) -> None:
    result = Tracked([b"x" * 10, b"y" * 10, b"z" * 10])

    def app(environ: Environ, start_response: StartResponse) -> Tracked:
        start_response("200 OK", [])
        return result

    def on_send(peer: Peer, message: Message) -> None:
        if message.get("body", b"").startswith(b"y"):
            raise ConnectionResetError("the server could not write")

    with pytest.raises(ConnectionResetError):
        Peer(on_send=on_send).run(make_bridge(app), http_scope())
    assert result.closed == 1


def test_close_is_called_when_iteration_fails_before_the_headers(
    make_bridge: Callable[..., WSGIBridge], caplog: pytest.LogCaptureFixture
) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"a"
        raise Boom("mid-iteration")

    result = Tracked(chunks())

    def app(environ: Environ, start_response: StartResponse) -> Tracked:
        start_response("200 OK", [("Content-Length", "2")])
        return result

    with caplog.at_level(logging.ERROR, logger="gateway.bridge"):
        sent = Peer().run(make_bridge(app), http_scope())
    assert sent[0]["status"] == 500
    assert result.closed == 1


# -- errors ------------------------------------------------------------------------------


def raise_in_call(environ: Environ, start_response: StartResponse) -> list[bytes]:
    raise Boom("secret detail")


def raise_after_start_response(environ: Environ, start_response: StartResponse) -> list[bytes]:
    start_response("200 OK", [("X-Leak", "1")])
    raise Boom("secret detail")


def raise_before_first_chunk(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
    start_response("200 OK", [])
    raise Boom("secret detail")
    yield b"never"


def never_start(environ: Environ, start_response: StartResponse) -> list[bytes]:
    return [b"no headers"]


def start_twice(environ: Environ, start_response: StartResponse) -> list[bytes]:
    start_response("200 OK", [])
    start_response("201 Created", [])  # PEP 3333: a fatal error without exc_info
    return [b""]


@pytest.mark.parametrize(
    ("app", "error"),
    [
        pytest.param(raise_in_call, Boom, id="raise-in-call"),
        pytest.param(raise_after_start_response, Boom, id="raise-after-start-response"),
        pytest.param(raise_before_first_chunk, Boom, id="raise-before-first-chunk"),
        pytest.param(never_start, RuntimeError, id="start-response-never-called"),
        pytest.param(start_twice, RuntimeError, id="start-response-twice"),
    ],
)
def test_app_error_before_the_headers_is_a_plain_500_logged_once(
    make_bridge: Callable[..., WSGIBridge],
    caplog: pytest.LogCaptureFixture,
    app: WSGIApp,
    error: type[Exception],
) -> None:
    # a2wsgi (test_wsgi_exception) lets the error reach the server; the bridge answers
    # the 500 itself so that the log has the WSGI path.
    with caplog.at_level(logging.DEBUG, logger="gateway.bridge"):
        sent = Peer().run(make_bridge(app), http_scope("/fails"))
    assert sent == [
        {"type": "http.response.start", "status": 500, "headers": ERROR_HEADERS},
        {"type": "http.response.body", "body": b"Internal Server Error"},
    ]
    [record] = [r for r in caplog.records if r.name == "gateway.bridge"]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None and record.exc_info[0] is error
    assert "/fails" in record.getMessage()


def test_error_after_the_headers_went_out_propagates(
    make_bridge: Callable[..., WSGIBridge], caplog: pytest.LogCaptureFixture
) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"partial"
        raise Boom("too late")

    result = Tracked(chunks())

    def app(environ: Environ, start_response: StartResponse) -> Tracked:
        start_response("200 OK", [])
        return result

    peer = Peer()
    with caplog.at_level(logging.DEBUG, logger="gateway.bridge"), pytest.raises(Boom):
        peer.run(make_bridge(app), http_scope())
    # The server sees the exception and aborts the connection: the body never ends.
    assert peer.sent[0]["status"] == 200
    assert body_chunks(peer.sent) == [(b"partial", True)]
    assert result.closed == 1
    assert [r for r in caplog.records if r.name == "gateway.bridge"] == []


# -- exc_info (PEP 3333 "Error Handling") -------------------------------------------------


def replace_headers_app(environ: Environ, start_response: StartResponse) -> list[bytes]:
    start_response("200 OK", [("X-Old", "1"), ("Content-Length", "2")])
    try:
        raise Boom("handled")
    except Boom:
        start_response(
            "503 Service Unavailable",
            [("Content-Type", "text/plain"), ("Content-Length", "5")],
            sys.exc_info(),
        )
    return [b"sorry"]


def first_call_with_exc_info_app(environ: Environ, start_response: StartResponse) -> list[bytes]:
    # a2wsgi: test_wsgi_exc_info (the app's own error page gets through).
    try:
        raise Boom("handled")
    except Boom:
        start_response(
            "503 Service Unavailable",
            [("Content-Type", "text/plain"), ("Content-Length", "5")],
            sys.exc_info(),
        )
    return [b"sorry"]


@pytest.mark.parametrize(
    "app",
    [
        pytest.param(replace_headers_app, id="replaces-earlier-headers"),
        pytest.param(first_call_with_exc_info_app, id="first-call"),
    ],
)
def test_exc_info_before_the_headers_went_out_replaces_them(
    make_bridge: Callable[..., WSGIBridge], caplog: pytest.LogCaptureFixture, app: WSGIApp
) -> None:
    with caplog.at_level(logging.DEBUG, logger="gateway.bridge"):
        sent = Peer().run(make_bridge(app), http_scope())
    assert sent == [
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"5")],
        },
        {"type": "http.response.body", "body": b"sorry"},
    ]
    assert [r for r in caplog.records if r.name == "gateway.bridge"] == []


@pytest.mark.parametrize(
    "via_write", [pytest.param(False, id="yield"), pytest.param(True, id="write")]
)
def test_exc_info_after_the_headers_went_out_reraises(
    make_bridge: Callable[..., WSGIBridge], via_write: bool
) -> None:
    original = Boom("late")
    reraised: list[BaseException] = []

    def chunks(start_response: StartResponse) -> Iterator[bytes]:
        write = start_response("200 OK", [])
        if via_write:
            write(b"partial")
        else:
            yield b"partial"
        try:
            raise original
        except Boom:
            try:
                start_response("500 Internal Server Error", [], sys.exc_info())
            except BaseException as exc:
                reraised.append(exc)
                raise
        yield b"never"

    result: list[Tracked] = []

    def app(environ: Environ, start_response: StartResponse) -> Tracked:
        result.append(Tracked(chunks(start_response)))
        return result[0]

    peer = Peer()
    with pytest.raises(Boom) as raised:
        peer.run(make_bridge(app), http_scope())
    assert raised.value is original
    assert reraised == [original]
    assert [m.get("status") for m in peer.sent if m["type"] == "http.response.start"] == [200]
    assert body_chunks(peer.sent) == [(b"partial", True)]
    assert result[0].closed == 1


# -- write() (PEP 3333 "The write() Callable") --------------------------------------------


def test_write_sends_before_the_app_returns(make_bridge: Callable[..., WSGIBridge]) -> None:
    peer = Peer()
    during: list[list[tuple[bytes, bool]]] = []

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"one")
        write(b"")
        write(b"two")
        during.append(body_chunks(peer.sent))
        return [b"three"]

    # Streamed: write() returns once its data is sent (PEP 3333 lets a buffered one return
    # once the data is queued).
    sent = peer.run(make_bridge(app, stream_response=True), http_scope())
    assert during == [[(b"one", True), (b"two", True)]]
    assert sent[0] == {
        "type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")],
    }
    assert body_chunks(sent) == [(b"one", True), (b"two", True), (b"three", True), (b"", False)]


def test_error_after_write_propagates(make_bridge: Callable[..., WSGIBridge]) -> None:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [])(b"partial")
        raise Boom("after write")

    peer = Peer()
    with pytest.raises(Boom):
        peer.run(make_bridge(app), http_scope())
    assert body_chunks(peer.sent) == [(b"partial", True)]


# -- the end of the declared length (PEP 3333: stop iterating) ----------------------------


@pytest.mark.parametrize("buffer_size", [pytest.param(DEFAULT_BUFFER_SIZE, id="whole"),
                                         pytest.param(1, id="handed-over")])
def test_the_response_ends_once_its_content_length_is_out(
    make_bridge: Callable[..., WSGIBridge], buffer_size: int
) -> None:
    """An app that yields b"ok" for Content-Length 2 and then blocks: the answer is not held
    back, and the app is not asked for more (PEP 3333)."""
    release = threading.Event()
    tail_started = threading.Event()
    ended_before_the_tail: list[bool] = []

    def slow_tail() -> Iterator[bytes]:
        yield b"ok"
        tail_started.set()
        release.wait(TIMEOUT)  # the app's slow work after its body
        yield b""

    result = Tracked(slow_tail())

    def app(environ: Environ, start_response: StartResponse) -> Tracked:
        start_response("200 OK", [("Content-Length", "2")])
        return result

    def on_send(peer: Peer, message: Message) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            ended_before_the_tail.append(not tail_started.is_set())
            release.set()

    sent = Peer(on_send=on_send).run(make_bridge(app, buffer_size=buffer_size), http_scope())
    assert ended_before_the_tail == [True]
    assert b"".join(body for body, _ in body_chunks(sent)) == b"ok"
    assert body_chunks(sent)[-1][1] is False
    assert result.closed == 1


# -- a response waits for its client on the loop, not in a thread --------------------------


def chunked_app(result: Iterable[bytes]) -> WSGIApp:
    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return result

    return app


CHUNKS = [bytes([65 + i]) * 10 for i in range(10)]  # b"AAAAAAAAAA", b"BBBBBBBBBB", ...


def open_files() -> int:
    """How many file descriptors this process has open."""
    return len(os.listdir("/proc/self/fd"))


def files_back_to(count: int) -> bool:
    """Wait until no more than ``count`` descriptors are open (the thread closes its last
    after the response's iterable); False if some stay open."""
    deadline = time.monotonic() + TIMEOUT
    while open_files() > count and time.monotonic() < deadline:
        time.sleep(0.005)
    return open_files() <= count


@pytest.mark.parametrize("memory_size", [pytest.param(DEFAULT_BUFFER_SIZE, id="in-memory"),
                                         pytest.param(25, id="spilled-to-a-file")])
def test_a_slow_client_holds_no_thread(make_bridge: Callable[..., WSGIBridge], memory_size: int) -> None:
    """The client takes nothing until the app is done with the whole response: its thread
    returned (and closed the iterable) while the client had not read a byte."""
    result = Tracked(iter(CHUNKS))
    closed_before_the_client_read: list[bool] = []
    files = open_files()

    def on_send(peer: Peer, message: Message) -> None:
        if message["type"] == "http.response.start":
            closed_before_the_client_read.append(result.closed_event.wait(TIMEOUT))

    sent = Peer(on_send=on_send).run(make_bridge(chunked_app(result), memory_size=memory_size), http_scope())
    assert closed_before_the_client_read == [True]
    assert body_chunks(sent) == [*((c, True) for c in CHUNKS), (b"", False)]
    assert files_back_to(files)  # the temporary file is closed


def test_a_spilled_chunk_goes_out_in_buffer_sized_pieces(make_bridge: Callable[..., WSGIBridge]) -> None:
    result = Tracked(iter([b"0123456789", b"ab"]))
    sent = Peer().run(make_bridge(chunked_app(result), memory_size=4, buffer_size=4), http_scope())
    assert body_chunks(sent) == [(b"0123", True), (b"4567", True), (b"89", True), (b"ab", True), (b"", False)]


def test_past_the_buffer_limit_the_thread_waits_for_the_client(make_bridge: Callable[..., WSGIBridge]) -> None:
    """``max_buffer`` 25: the app's thread is held after the third chunk (30 bytes waiting)."""
    produced: list[int] = []

    def chunks() -> Iterator[bytes]:
        for i, chunk in enumerate(CHUNKS):
            produced.append(i)
            yield chunk

    result = Tracked(chunks())
    at_first_send: list[list[int]] = []

    def on_send(peer: Peer, message: Message) -> None:
        if message["type"] == "http.response.start":
            deadline = time.monotonic() + TIMEOUT
            while len(produced) < 3 and time.monotonic() < deadline:
                time.sleep(0.005)
            # Evidence of a wait cannot come sooner than a wait: the thread is given time
            # to run ahead, and must not.
            assert not result.closed_event.wait(0.2)
            at_first_send.append(list(produced))

    sent = Peer(on_send=on_send).run(
        make_bridge(chunked_app(result), memory_size=10, max_buffer=25), http_scope())
    assert at_first_send == [[0, 1, 2]]
    assert body_chunks(sent) == [*((c, True) for c in CHUNKS), (b"", False)]
    assert result.closed == 1


def test_a_client_that_takes_nothing_is_cut_off_after_the_send_timeout(
    make_bridge: Callable[..., WSGIBridge], caplog: pytest.LogCaptureFixture
) -> None:
    """One warning; the server's abort extension is called; the app's thread is freed."""
    aborted: list[bool] = []

    async def abort() -> None:
        aborted.append(True)

    async def never_taken(peer: Peer, message: Message) -> None:
        if message.get("body"):
            await asyncio.Event().wait()  # a reader that stopped: the server's send waits

    result = Tracked(iter(CHUNKS))
    files = open_files()
    bridge = make_bridge(chunked_app(result), memory_size=10, max_buffer=15, send_timeout=0.2, name="/slow")
    with caplog.at_level(logging.DEBUG, logger="gateway.bridge"):
        sent = Peer(on_send=never_taken).run(bridge, http_scope(extensions={"gateway.abort": abort}))
    assert aborted == [True]
    assert files_back_to(files)
    assert result.closed == 1  # the thread, held by the buffer limit, was let go
    assert body_chunks(sent) == [(CHUNKS[0], True)]
    assert bridge_warnings(caplog) == [
        "A client of /slow took nothing of its response for 0.2 s (GATEWAY_SEND_TIMEOUT); the connection was cut off."]


def test_a_request_cancelled_while_its_thread_waits_for_room_frees_the_thread(
    make_bridge: Callable[..., WSGIBridge],
) -> None:
    """The server's graceful shutdown cancels the request: the thread held by the limit returns."""
    result = Tracked(iter(CHUNKS))

    async def never_taken(peer: Peer, message: Message) -> None:
        if message.get("body"):
            await asyncio.Event().wait()

    async def main() -> None:
        peer = Peer(on_send=never_taken)
        task = asyncio.ensure_future(peer.call(make_bridge(chunked_app(result), max_buffer=15), http_scope()))
        while not peer.sent:
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    files = open_files()
    asyncio.run(main())
    assert result.closed_event.wait(TIMEOUT)
    assert files_back_to(files)


def test_a_request_cancelled_before_its_response_begins_sends_nothing_and_closes_its_file(
    make_bridge: Callable[..., WSGIBridge],
) -> None:
    """Cancelled while the app still works: the response it begins later is dropped."""
    called = threading.Event()
    release = threading.Event()

    def late() -> Iterator[bytes]:
        called.set()
        release.wait(TIMEOUT)
        yield from CHUNKS

    result = Tracked(late())
    peer = Peer()
    files = open_files()

    async def main() -> None:
        task = asyncio.ensure_future(peer.call(make_bridge(chunked_app(result), memory_size=10), http_scope()))
        while not called.is_set():
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()
        # The thread begins its response and ends while the loop still runs: the loop
        # drops what the thread hands it. (Its file is counted after the loop is gone:
        # the loop's own descriptors would keep the count above ``files`` until then.)
        deadline = time.monotonic() + TIMEOUT
        while not result.closed_event.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.005)

    asyncio.run(main())
    assert [m["type"] for m in peer.sent] == ["http.response.start", "http.response.body"]  # the 503
    assert peer.sent[0]["status"] == 503
    assert files_back_to(files)


def test_an_error_after_buffered_chunks_sends_them_then_propagates(make_bridge: Callable[..., WSGIBridge]) -> None:
    def chunks() -> Iterator[bytes]:
        yield from CHUNKS[:3]
        raise Boom("late")

    peer = Peer()
    with pytest.raises(Boom):
        peer.run(make_bridge(chunked_app(chunks()), memory_size=15), http_scope())
    assert body_chunks(peer.sent) == [(c, True) for c in CHUNKS[:3]]  # and no end: the server aborts


# -- a streaming mount's body is received on the loop, ahead of the app --------------------


def test_a_body_that_stops_arriving_fails_the_apps_read_after_the_body_timeout(
    make_bridge: Callable[..., WSGIBridge],
) -> None:
    errors: list[BaseException] = []

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        stream = environ["wsgi.input"]
        assert stream.read(3) == b"abc"
        try:
            stream.read(3)
        except ClientDisconnected as exc:
            errors.append(exc)
        start_response("400 Bad Request", [("Content-Length", "0")])
        return []

    # The rest of the body never comes (the client stays; receive waits).
    peer = Peer([{"type": "http.request", "body": b"abc", "more_body": True}])
    sent = peer.run(make_bridge(app, body_timeout=0.2), http_scope(method="POST"))
    assert sent[0]["status"] == 400
    assert [str(e) for e in errors] == ["400 Bad Request: The request body stopped arriving for 0.2 s."]


@pytest.mark.parametrize("reads", [pytest.param(False, id="refused"), pytest.param(True, id="read")])
def test_expect_100_continue_receives_nothing_before_the_app_reads(
    make_bridge: Callable[..., WSGIBridge], reads: bool
) -> None:
    pulled_at_call: list[int] = []
    peer = Peer(body_request(b"abc", b"def"))

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        pulled_at_call.append(peer.pulled)
        if not reads:
            start_response("413 Content Too Large", [("Content-Length", "0")])
            return []
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    scope = http_scope(method="POST", headers=[(b"expect", b"100-continue"), (b"content-length", b"6")])
    sent = peer.run(make_bridge(app), scope)
    assert pulled_at_call == [0]
    if reads:
        assert body_chunks(sent) == [(b"abcdef", False)]
    else:
        assert sent[0]["status"] == 413
        assert peer.pulled == 0


# -- client disconnect ------------------------------------------------------------------


def test_streaming_generator_stops_after_disconnect(make_bridge: Callable[..., WSGIBridge]) -> None:
    def on_send(peer: Peer, message: Message) -> None:
        if message.get("body"):
            peer.disconnect()

    peer = Peer(on_send=on_send)
    produced: list[int] = []

    def endless() -> Iterator[bytes]:
        for i in range(1000):
            if i == 1:
                # Go on only once the bridge has seen the client leave.
                assert peer.disconnect_taken.wait(TIMEOUT)
            produced.append(i)
            yield b"chunk"

    result = Tracked(endless())

    def app(environ: Environ, start_response: StartResponse) -> Tracked:
        start_response("200 OK", [("Content-Type", "text/event-stream")])
        return result

    sent = peer.run(make_bridge(app), http_scope())
    assert produced == [0, 1]
    assert body_chunks(sent) == [(b"chunk", True)]
    assert result.closed == 1


def test_large_list_stops_after_disconnect(make_bridge: Callable[..., WSGIBridge]) -> None:
    result = ClosingList([b"x" * 40])

    def app(environ: Environ, start_response: StartResponse) -> ClosingList:
        start_response("200 OK", [("Content-Length", "40")])
        return result

    async def on_send(peer: Peer, message: Message) -> None:
        if message.get("body"):
            peer.disconnect()
            await peer.disconnect_handled()

    sent = Peer(on_send=on_send).run(make_bridge(app, buffer_size=4), http_scope())
    assert body_chunks(sent) == [(b"xxxx", True)]
    assert result.closed == 1


# -- the rest of the protocol -------------------------------------------------------------


def test_context_variables_of_the_caller_reach_the_app(
    make_bridge: Callable[..., WSGIBridge],
) -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    seen: list[str] = []

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        seen.append(var.get())
        var.set("changed by the app")
        return text_app()(environ, start_response)

    async def main() -> str:
        var.set("set by the server")
        await Peer().call(make_bridge(app), http_scope())
        return var.get()

    after = asyncio.run(main())
    assert seen == ["set by the server"]
    assert after == "set by the server"


def test_head_is_passed_to_the_app(make_bridge: Callable[..., WSGIBridge]) -> None:
    methods: list[str] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        methods.append(environ["REQUEST_METHOD"])
        return Response("hello")(environ, start_response)

    sent = Peer().run(make_bridge(app), http_scope(method="HEAD"))
    assert methods == ["HEAD"]
    assert (b"content-length", b"5") in sent[0]["headers"]
    # Werkzeug sends no body for HEAD; the server drops any that an app sends.
    assert body_chunks(sent) == [(b"", False)]


def test_websocket_is_refused_with_close(make_bridge: Callable[..., WSGIBridge]) -> None:
    calls: list[Environ] = []

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        calls.append(environ)
        return []

    scope = {"type": "websocket", "asgi": {"version": "3.0"}, "path": "/ws", "headers": []}
    sent = Peer([{"type": "websocket.connect"}]).run(make_bridge(app), scope)
    assert sent == [{"type": "websocket.close", "code": 1008}]  # policy violation: every refusal by the gateway
    assert calls == []


def test_lifespan_is_answered(make_bridge: Callable[..., WSGIBridge]) -> None:
    peer = Peer([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent = peer.run(make_bridge(text_app()), {"type": "lifespan", "asgi": {"version": "3.0"}})
    assert sent == [{"type": "lifespan.startup.complete"}, {"type": "lifespan.shutdown.complete"}]


def test_requests_run_concurrently_on_the_pool() -> None:
    """20 slow requests hold a thread each until released: all 20 are in the app at once,
    and a quick one sent meanwhile is answered while they still wait."""
    started: list[float] = []
    slow: list[tuple[float, float]] = []
    quick: list[tuple[float, float]] = []
    release = threading.Event()

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        began = time.monotonic()
        if environ["PATH_INFO"] == "/slow":
            started.append(began)
            release.wait(TIMEOUT)
            slow.append((began, time.monotonic()))
        else:
            quick.append((began, time.monotonic()))
        return text_app()(environ, start_response)

    async def main(bridge: WSGIBridge) -> None:
        calls = [Peer().call(bridge, http_scope("/slow")) for _ in range(20)]
        tasks = [asyncio.create_task(call) for call in calls]
        try:
            deadline = time.monotonic() + TIMEOUT
            while len(started) < 20 and time.monotonic() < deadline:  # all 20 in the app at once
                await asyncio.sleep(0.005)
            await asyncio.wait_for(Peer().call(bridge, http_scope("/quick")), TIMEOUT)
        finally:
            release.set()
        await asyncio.gather(*tasks)

    with ThreadPoolExecutor(max_workers=21) as pool:
        asyncio.run(main(WSGIBridge(app, pool)))
    assert len(slow) == 20
    # Every slow request started before any of them finished: all 20 ran at once ...
    assert max(start for start, _ in slow) < min(end for _, end in slow)
    # ... and a quick one sent meanwhile did not wait for them.
    [(_, quick_end)] = quick
    assert quick_end < min(end for _, end in slow)


# -- over real HTTP with uvicorn ----------------------------------------------------------


class Served:
    """What the module's uvicorn serves: a ``WSGIBridge`` over the app a test installs.

    Lifespan messages the bridge sends are recorded on their way to uvicorn.
    """

    def __init__(self, executor: ThreadPoolExecutor) -> None:
        self.app: WSGIApp = text_app()
        self.bridge = WSGIBridge(self.forward, executor)
        self.lifespan: list[str] = []
        self.port = 0

    def forward(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        return self.app(environ, start_response)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.bridge(scope, receive, send)
            return

        async def record(message: Message) -> None:
            self.lifespan.append(message["type"])
            await send(message)

        await self.bridge(scope, receive, record)


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    """One uvicorn (in a thread, on a free loopback port) for this module's HTTP tests."""
    pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="uvicorn-wsgi")
    target = Served(pool)
    config = uvicorn.Config(
        target, lifespan="on", log_config=None, access_log=False, ws="websockets-sansio",
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    target.port = sock.getsockname()[1]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + TIMEOUT
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        assert server.started, "uvicorn did not start"
        yield target
    finally:
        server.should_exit = True
        thread.join(TIMEOUT)
        sock.close()
        pool.shutdown(wait=True, cancel_futures=True)
    assert not thread.is_alive(), "uvicorn did not stop"
    assert target.lifespan == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


@pytest.fixture
def serve(served: Served) -> Iterator[Callable[[WSGIApp], httpx.Client]]:
    """Install an app on the module's uvicorn and return an httpx client for it."""
    clients: list[httpx.Client] = []

    def install(app: WSGIApp) -> httpx.Client:
        served.app = app
        client = httpx.Client(
            base_url=f"http://127.0.0.1:{served.port}", timeout=TIMEOUT, trust_env=False
        )
        clients.append(client)
        return client

    yield install
    for client in clients:
        client.close()
    served.app = text_app()


def read_until(conn: socket.socket, marker: bytes) -> bytes:
    """Read from ``conn`` until ``marker`` has arrived (or the peer closed)."""
    data = b""
    while marker not in data and (chunk := conn.recv(4096)):
        data += chunk
    return data


def test_http_lifespan_startup_was_answered(served: Served) -> None:
    # The shutdown answer is checked when the fixture stops the server.
    assert served.lifespan == ["lifespan.startup.complete"]


def test_http_environ(serve: Callable[[WSGIApp], httpx.Client]) -> None:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        keys = ("SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "SERVER_NAME", "REMOTE_ADDR",
                "HTTP_X_A", "HTTP_COOKIE", "wsgi.input_terminated")
        body = repr({key: environ.get(key) for key in keys}).encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    client = serve(app)
    response = client.get(
        "/中文?q=%C3%A9",
        headers=[("X-A", "1"), ("X-A", "2"), ("Cookie", "a=1"), ("X_A", "spoof")],
    )
    assert response.status_code == 200
    assert ast.literal_eval(response.text) == {
        "SCRIPT_NAME": "",
        "PATH_INFO": "/中文".encode().decode("latin-1"),
        "QUERY_STRING": "q=%C3%A9",
        "SERVER_NAME": "127.0.0.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_X_A": "1,2",
        "HTTP_COOKIE": "a=1",
        "wsgi.input_terminated": True,
    }


def test_http_expect_100_continue_lets_the_app_refuse_first(served: Served,
                                                           serve: Callable[[WSGIApp], httpx.Client]) -> None:
    """With Expect: 100-continue, an app that refuses the body answers before any 100 Continue."""
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        start_response("413 Content Too Large", [("Content-Length", "0"), ("Connection", "close")])
        return [b""]

    serve(app)
    with socket.create_connection(("127.0.0.1", served.port), timeout=TIMEOUT) as conn:
        conn.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 104857600\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        answer = read_until(conn, b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"100 Continue" not in answer


def test_http_chunked_request_body_reaches_the_app_as_it_arrives(
    serve: Callable[[WSGIApp], httpx.Client],
) -> None:
    first_read = threading.Event()
    waited: list[bool] = []

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        stream = environ["wsgi.input"]
        head = stream.read(3)
        first_read.set()
        body = head + stream.read()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    def upload() -> Iterator[bytes]:
        yield b"one"
        # The rest is sent only once the app has read the first part.
        waited.append(first_read.wait(TIMEOUT))
        yield b"two"

    response = serve(app).post("/upload", content=upload())
    assert (response.status_code, response.content) == (200, b"onetwo")
    assert waited == [True]


def test_http_streamed_response_arrives_chunk_by_chunk(
    serve: Callable[[WSGIApp], httpx.Client],
) -> None:
    first_received = threading.Event()
    waited: list[bool] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"first"
        waited.append(first_received.wait(TIMEOUT))
        yield b"last"

    received = []
    with serve(app).stream("GET", "/stream") as response:
        assert response.headers["transfer-encoding"] == "chunked"
        for chunk in response.iter_raw():
            received.append(chunk)
            first_received.set()
    assert b"".join(received) == b"firstlast"
    assert waited == [True]


def test_http_client_disconnect_stops_the_stream_and_closes(
    serve: Callable[[WSGIApp], httpx.Client], served: Served
) -> None:
    produced: list[int] = []

    def endless() -> Iterator[bytes]:
        for i in range(500):
            produced.append(i)
            yield b"data: %d\n\n" % i
            time.sleep(0.01)

    result = Tracked(endless())

    def app(environ: Environ, start_response: StartResponse) -> Tracked:
        start_response("200 OK", [("Content-Type", "text/event-stream")])
        return result

    serve(app)
    with socket.create_connection(("127.0.0.1", served.port), timeout=TIMEOUT) as conn:
        conn.sendall(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert b"data: 0" in read_until(conn, b"data: 0")
    assert result.closed_event.wait(TIMEOUT)
    assert len(produced) < 500
    assert result.closed == 1


def test_http_head(serve: Callable[[WSGIApp], httpx.Client]) -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if environ["PATH_INFO"] == "/stream":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return iter([b"streamed ", b"body"])
        return text_app()(environ, start_response)

    client = serve(app)
    head = client.head("/small")
    assert (head.status_code, head.headers["content-length"], head.content) == (200, "5", b"")
    streamed = client.head("/stream")
    assert (streamed.status_code, streamed.content) == (200, b"")
    # The connection is in a clean state for the next request.
    assert client.get("/small").content == b"hello"


def test_http_app_error_is_a_500(
    serve: Callable[[WSGIApp], httpx.Client], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="gateway.bridge"):
        response = serve(raise_in_call).get("/fails")
    assert (response.status_code, response.text) == (500, "Internal Server Error")
    assert len([r for r in caplog.records if r.name == "gateway.bridge"]) == 1


def test_http_websocket_handshake_is_refused(served: Served) -> None:
    with socket.create_connection(("127.0.0.1", served.port), timeout=TIMEOUT) as conn:
        conn.sendall(
            b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        assert read_until(conn, b"\r\n").startswith(b"HTTP/1.1 403")


# -- what mutation testing found unpinned (docs/testing.md) ---------------------------------


def environ_app(seen: list[Environ], status: str = "200 OK") -> WSGIApp:
    """An app that keeps its environ and its body as read, and answers ``ok``."""

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        seen.append({**environ, "body": environ["wsgi.input"].read()})
        start_response(status, [("Content-Length", "2")])
        return [b"ok"]

    return app


def test_a_scope_with_only_the_required_keys_gets_the_defaults(make_bridge: Callable[..., WSGIBridge]) -> None:
    """ASGI makes ``root_path``, ``query_string``, ``http_version``, ``scheme`` and ``headers``
    optional: the environ has their defaults, and a message without ``body`` or
    ``more_body`` is an empty, complete body."""
    seen: list[Environ] = []
    scope = {"type": "http", "method": "GET", "path": "/x"}
    sent = Peer([{"type": "http.request"}]).run(make_bridge(environ_app(seen)), scope)
    assert body_chunks(sent) == [(b"ok", False)]
    [environ] = seen
    assert (environ["SCRIPT_NAME"], environ["PATH_INFO"], environ["QUERY_STRING"]) == ("", "/x", "")
    assert (environ["SERVER_PROTOCOL"], environ["wsgi.url_scheme"]) == ("HTTP/1.1", "http")
    assert environ["body"] == b""
    assert not [key for key in environ if key.startswith("HTTP_")]


def test_a_body_read_whole_before_the_call_is_the_apps_with_its_length(
    make_bridge: Callable[..., WSGIBridge],
) -> None:
    """``handle(body=...)``: a chunked body the gateway read on the loop reaches the app as
    one with a Content-Length, no longer chunked, and its file is closed afterwards."""
    import io

    seen: list[Environ] = []
    stream = io.BytesIO(b"abcde")
    scope = http_scope("/up", method="POST", headers=[(b"transfer-encoding", b"chunked")])

    async def main() -> list[Message]:
        peer = Peer()
        peer._gone, peer._taken = asyncio.Event(), asyncio.Event()
        bridge = make_bridge(environ_app(seen))
        await bridge.handle(scope, peer.receive, peer.send, (stream, 5),
                            prepare=lambda environ: environ.update(HTTP_X_DECIDED="yes"))
        return peer.sent

    sent = asyncio.run(main())
    assert body_chunks(sent) == [(b"ok", False)]
    [environ] = seen
    assert environ["CONTENT_LENGTH"] == "5" and environ["body"] == b"abcde"
    assert "HTTP_TRANSFER_ENCODING" not in environ and "wsgi.input_terminated" not in environ
    assert environ["HTTP_X_DECIDED"] == "yes"
    assert stream.closed


def test_a_first_message_of_the_whole_body_is_read_as_sent(make_bridge: Callable[..., WSGIBridge]) -> None:
    seen: list[Environ] = []
    Peer([{"type": "http.request", "body": b"whole"}]).run(make_bridge(environ_app(seen)), http_scope(method="POST"))
    assert seen[0]["body"] == b"whole"


def test_a_bridge_without_a_pool_runs_the_app_on_threads_named_wsgi() -> None:
    names: list[str] = []

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        names.append(threading.current_thread().name)
        start_response("204 No Content", [])
        return []

    bridge = WSGIBridge(app)
    try:
        Peer().run(bridge, http_scope())
    finally:
        bridge.executor.shutdown(wait=True)
    assert [name.partition("_")[0] for name in names] == ["wsgi"]


def test_the_observer_is_told_of_each_thread_taken_and_given_back(make_bridge: Callable[..., WSGIBridge]) -> None:
    """What the metrics read: the wait for a thread (in seconds), then the thread's release."""
    told: list[tuple[str, Any]] = []

    class Observer:
        def thread_started(self, waited: float) -> None:
            told.append(("started", waited))

        def thread_done(self) -> None:
            told.append(("done", None))

    seen: list[Environ] = []
    sent = Peer().run(make_bridge(environ_app(seen), observer=Observer()), http_scope("/observed"))
    assert body_chunks(sent) == [(b"ok", False)]
    assert seen[0]["PATH_INFO"] == "/observed"
    assert [event for event, _ in told] == ["started", "done"]
    assert isinstance(told[0][1], float) and 0 <= told[0][1] < TIMEOUT


def test_a_request_cut_off_at_shutdown_is_a_503_and_one_warning(
    make_bridge: Callable[..., WSGIBridge], caplog: pytest.LogCaptureFixture,
) -> None:
    called = threading.Event()
    release = threading.Event()

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        called.set()
        release.wait(TIMEOUT)
        start_response("200 OK", [("Content-Length", "0")])
        return []

    peer = Peer()

    async def main() -> None:
        task = asyncio.ensure_future(peer.call(make_bridge(app), http_scope("/slow/x", method="PUT")))
        while not called.is_set():
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with caplog.at_level(logging.WARNING, logger="gateway.bridge"):
        try:
            asyncio.run(main())
        finally:
            release.set()
    assert peer.sent == [
        {"type": "http.response.start", "status": 503, "headers": [
            (b"content-type", b"text/plain"), (b"connection", b"close"), (b"content-length", b"20")]},
        {"type": "http.response.body", "body": b"Service Unavailable\n"},
    ]
    assert bridge_warnings(caplog) == ["Request PUT '/slow/x' was still running at shutdown and was cut off."]


def test_a_request_cut_off_while_its_response_streams_sends_no_more(
    make_bridge: Callable[..., WSGIBridge], caplog: pytest.LogCaptureFixture,
) -> None:
    """Cancelled while the app still yields and the loop sends: the sending stops, the app's
    iterable is closed, and no 503 follows the response already begun."""
    release = threading.Event()

    def chunks() -> Iterator[bytes]:
        yield b"first"
        release.wait(TIMEOUT)
        yield b"second"

    result = Tracked(chunks())
    peer = Peer()

    async def main() -> None:
        task = asyncio.ensure_future(peer.call(make_bridge(chunked_app(result), buffer_size=4), http_scope("/s")))
        while not any(m.get("body") for m in peer.sent):
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with caplog.at_level(logging.WARNING, logger="gateway.bridge"):
        try:
            asyncio.run(main())
        finally:
            release.set()
    assert result.closed_event.wait(TIMEOUT)
    assert [m.get("status") for m in peer.sent if m["type"] == "http.response.start"] == [200]
    assert b"first".startswith(b"".join(chunk for chunk, _ in body_chunks(peer.sent)))
    assert bridge_warnings(caplog) == ["Request GET '/s' was still running at shutdown and was cut off."]


def test_a_client_that_never_takes_the_headers_is_cut_off_without_the_abort_extension(
    make_bridge: Callable[..., WSGIBridge], caplog: pytest.LogCaptureFixture,
) -> None:
    """Under a server without ``gateway.abort`` (no ``extensions`` in the scope), a client
    that takes not even the headers is cut off after the send timeout, with one warning."""

    async def never_taken(peer: Peer, message: Message) -> None:
        await asyncio.Event().wait()

    scope = http_scope("/slow")
    with caplog.at_level(logging.WARNING, logger="gateway.bridge"):
        sent = Peer(on_send=never_taken).run(make_bridge(chunked_app(iter(CHUNKS)), send_timeout=0.2), scope)
    assert [m["type"] for m in sent] == ["http.response.start"]
    assert bridge_warnings(caplog) == [
        "A client of /slow took nothing of its response for 0.2 s (GATEWAY_SEND_TIMEOUT); the connection was cut off."]


@pytest.mark.parametrize(("length", "body"), [
    pytest.param("abc", b"hello", id="not-digits"),
    pytest.param("\xb2", b"hello", id="unicode-digit"),
])
def test_a_content_length_that_is_no_number_is_no_length(
    make_bridge: Callable[..., WSGIBridge], length: str, body: bytes,
) -> None:
    """The app's own header goes out as it set it; the body is not cut to any length."""

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [("Content-Length", length)])
        return [body]

    sent = Peer().run(make_bridge(app), http_scope())
    assert sent[0]["status"] == 200
    assert b"".join(chunk for chunk, _ in body_chunks(sent)) == body


@pytest.mark.parametrize("result", [pytest.param(lambda: iter([b"ab", b"cd"]), id="generator"),
                                    pytest.param(lambda: [b"ab", b"cd"], id="list")])
def test_a_response_of_exactly_the_buffer_size_is_sent_whole(
    make_bridge: Callable[..., WSGIBridge], result: Callable[[], Iterable[bytes]],
) -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Length", "4")])
        return result()

    sent = Peer().run(make_bridge(app, buffer_size=4), http_scope())
    assert body_chunks(sent) == [(b"abcd", False)]


def never_started(environ: Environ, start_response: StartResponse) -> list[bytes]:
    return [b"no headers"]


def body_first(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
    yield b"no headers yet"
    start_response("200 OK", [])


def started_twice(environ: Environ, start_response: StartResponse) -> list[bytes]:
    start_response("200 OK", [])
    start_response("200 OK", [])
    return []


@pytest.mark.parametrize(("app", "said"), [
    pytest.param(never_started, "The WSGI application returned without calling start_response().",
                 id="never-started"),
    pytest.param(body_first, "The WSGI application sent a body before calling start_response().", id="body-first"),
    pytest.param(started_twice, "start_response() was called twice without exc_info.", id="started-twice"),
])
def test_a_broken_app_is_a_500_whose_log_says_what_it_did_wrong(
    make_bridge: Callable[..., WSGIBridge], caplog: pytest.LogCaptureFixture, app: WSGIApp, said: str,
) -> None:
    with caplog.at_level(logging.ERROR, logger="gateway.bridge"):
        sent = Peer().run(make_bridge(app), http_scope("/broken"))
    assert sent[0]["status"] == 500
    [record] = [r for r in caplog.records if r.name == "gateway.bridge"]
    assert record.getMessage() == "Exception in WSGI application '/broken'"
    assert record.exc_info is not None and str(record.exc_info[1]) == said


def test_an_http2_body_read_whole_gets_its_length(make_bridge: Callable[..., WSGIBridge]) -> None:
    """HTTP/2 frames a body with no Content-Length and no Transfer-Encoding."""
    import io

    seen: list[Environ] = []

    async def main() -> None:
        peer = Peer()
        peer._gone, peer._taken = asyncio.Event(), asyncio.Event()
        await make_bridge(environ_app(seen)).handle(http_scope(method="POST", http_version="2"), peer.receive,
                                                    peer.send, (io.BytesIO(b"abc"), 3))

    asyncio.run(main())
    assert (seen[0]["CONTENT_LENGTH"], seen[0]["body"]) == ("3", b"abc")
    assert "wsgi.input_terminated" not in seen[0]


def test_a_body_after_100_continue_that_stops_arriving_fails_the_apps_read(
    make_bridge: Callable[..., WSGIBridge],
) -> None:
    errors: list[str] = []

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        try:
            environ["wsgi.input"].read()
        except ClientDisconnected as exc:
            errors.append(str(exc))
        start_response("400 Bad Request", [("Content-Length", "0")])
        return []

    peer = Peer([{"type": "http.request", "body": b"abc", "more_body": True}])
    scope = http_scope(method="POST", headers=[(b"expect", b"100-continue"), (b"content-length", b"10")])
    assert peer.run(make_bridge(app, body_timeout=0.2), scope)[0]["status"] == 400
    assert errors == ["400 Bad Request: The request body stopped arriving for 0.2 s."]


def fail_here() -> None:
    raise Boom("late")


def test_exc_info_after_the_headers_went_out_keeps_the_original_traceback(
    make_bridge: Callable[..., WSGIBridge],
) -> None:
    """The error the server sees (and logs) still shows where the app failed."""
    import traceback

    def chunks(start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"partial"
        try:
            fail_here()
        except Boom:
            start_response("500 Internal Server Error", [], sys.exc_info())

    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        return chunks(start_response)

    with pytest.raises(Boom) as raised:
        Peer().run(make_bridge(app), http_scope())
    assert "fail_here" in [frame.name for frame in traceback.extract_tb(raised.value.__traceback__)]
