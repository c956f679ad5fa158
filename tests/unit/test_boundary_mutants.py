"""The mount boundary (:mod:`gateway.adapters.boundary`) through the entry points: what
mutation testing found that no other test held (docs/testing.md).

The WSGI gateway is called with a hand-made environ, the ASGI gateway with a hand-made
scope and ``receive``, so that each test chooses how the body arrives: in one piece or
several, with a ``Content-Length`` or chunked, cut short, or never.
"""

from __future__ import annotations

import asyncio
import errno
import io
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from werkzeug.test import Client

from gateway.adapters.asgi import ASGIGateway, create_asgi_app
from gateway.adapters.boundary import SPOOL_IN_MEMORY
from gateway.adapters.wsgi import WSGIGateway, create_wsgi_app
from gateway.core.config import Config
from gateway.core.mounts import MountTable

TIMEOUT = 5.0
KIB = 1024


async def body_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An ASGI app that reads its body and answers how much came and how it ended; its
    ``http.response.start`` has no ``headers`` (ASGI makes them optional)."""
    got, ended = 0, "complete"
    while True:
        message = await receive()
        if message["type"] != "http.request":
            ended = message["type"]
            break
        got += len(message.get("body", b""))
        if not message.get("more_body", False):
            break
    await send({"type": "http.response.start", "status": 200})
    await send({"type": "http.response.body", "body": f"{got} {ended}".encode()})


def reader_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """A WSGI app of a streaming mount: reads nothing, then 10 bytes, then the rest, and
    answers what each read gave (or the error it raised)."""
    stream = environ["wsgi.input"]
    reads: list[str] = []
    for size in (0, 10, -1):
        try:
            reads.append(stream.read(size).decode())
        except OSError as error:
            reads.append(f"{type(error).__name__}: {error}")
    body = json.dumps(reads).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


SPECS = ["/body=tests.unit.test_boundary_mutants:body_app", "/echo=tests.apps.bodyecho:app",
         "/env=tests.thirdapp:echo_app", "/third=tests.thirdapp:asgi_app",
         "/reader=tests.unit.test_boundary_mutants:reader_app"]


@pytest.fixture(scope="module")
def small_table() -> MountTable:
    return MountTable.from_specs(SPECS, defaults=False)


def configured(**changes: Any) -> Config:
    return replace(Config.from_env({}), **changes)


@pytest.fixture
def asgi(small_table: MountTable) -> Iterator[Any]:
    """Build ASGI gateways over the table, each with its own config; stop their pools after."""
    built: list[ASGIGateway] = []

    def build(**changes: Any) -> ASGIGateway:
        built.append(create_asgi_app(small_table, configured(**changes), threads=2))
        return built[-1]

    yield build
    for gateway in built:
        gateway.executor.shutdown(wait=True)


def wsgi(small_table: MountTable, **changes: Any) -> WSGIGateway:
    return create_wsgi_app(small_table, configured(**changes))


def asgi_call(gateway: Any, path: str, incoming: list[dict[str, Any]] | None,
              headers: list[tuple[bytes, bytes]] = (), **scope: Any) -> list[dict[str, Any]]:
    """Call ``gateway`` with a POST to ``path`` whose body comes as ``incoming`` (None: it
    never comes); the client stays until the response is out."""
    queue = list(incoming or ())

    async def receive() -> dict[str, Any]:
        if queue:
            return queue.pop(0)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    full = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
            "headers": [(b"host", b"localhost"), *headers], "client": ("127.0.0.1", 5000),
            "server": ("127.0.0.1", 8000), **scope}
    asyncio.run(asyncio.wait_for(gateway(full, receive, send), TIMEOUT))
    return sent


def answer(sent: list[dict[str, Any]]) -> tuple[int, dict[bytes, bytes], bytes]:
    """Status, headers and body of what an ASGI app sent."""
    return (sent[0]["status"], dict(sent[0]["headers"]),
            b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))


def parts(*chunks: bytes) -> list[dict[str, Any]]:
    """The http.request messages of a body sent in ``chunks``."""
    return [{"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
            for i, chunk in enumerate(chunks)]


def wsgi_call(gateway: Any, path: str, stream: Any, length: str = "", **extra: Any) -> tuple[str, bytes]:
    environ = {
        "REQUEST_METHOD": "POST", "SCRIPT_NAME": "", "PATH_INFO": path, "QUERY_STRING": "",
        "SERVER_NAME": "localhost", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_HOST": "localhost",
        "REMOTE_ADDR": "127.0.0.1", "wsgi.url_scheme": "http", "wsgi.input": stream,
        "wsgi.errors": io.StringIO(), "CONTENT_LENGTH": length, "CONTENT_TYPE": "text/plain", **extra,
    }
    status: list[str] = []
    result = gateway(environ, lambda s, h, e=None: status.append(s))
    try:
        return status[0], b"".join(result)
    finally:
        getattr(result, "close", lambda: None)()


CHUNKED = {"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input_terminated": True}


# -- an ASGI mount's body limit, and its headers ------------------------------------------


@pytest.mark.parametrize(("chunks", "said"), [
    pytest.param((b"12345", b"67890", b""), b"10 complete", id="at-the-limit"),
    pytest.param((b"12345", b"67890", b"x", b""), b"10 http.disconnect", id="one-past"),
])
def test_an_asgi_mounts_body_past_its_limit_ends_in_a_disconnect(asgi: Any, chunks: tuple[bytes, ...],
                                                                 said: bytes) -> None:
    gateway = asgi(max_body_sizes={"/body": 10})
    status, headers, body = answer(asgi_call(gateway, "/body/x", parts(*chunks), [(b"transfer-encoding", b"chunked")]))
    assert (status, body) == (200, said)
    # A response start without headers gets the gateway's all the same.
    assert headers[b"x-content-type-options"] == b"nosniff" and len(headers[b"x-request-id"]) == 32


def test_a_websocket_reaches_an_asgi_mount_through_its_boundary(asgi: Any) -> None:
    inbox = [{"type": "websocket.connect"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return inbox.pop(0) if inbox else {"type": "websocket.disconnect", "code": 1000}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/third/ws", "root_path": "", "query_string": b"", "scheme": "ws",
             "headers": [(b"host", b"localhost")], "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000)}
    asyncio.run(asyncio.wait_for(asgi()(scope, receive, send), TIMEOUT))
    assert sent == [{"type": "websocket.accept"}, {"type": "websocket.send", "text": "root_path=/third"},
                    {"type": "websocket.close", "code": 1000}]


# -- the gateway's own replies -----------------------------------------------------------


def test_a_wsgi_reply_has_the_reason_phrase_of_its_status(small_table: MountTable) -> None:
    response = Client(wsgi(small_table)).get("/nowhere", headers={"Host": "localhost"})
    assert response.status == "404 Not Found"


# -- a body read whole on the event loop (ASGI) ------------------------------------------


def test_asgi_a_body_message_without_body_or_more_body_is_read_as_empty_and_last(asgi: Any) -> None:
    incoming = [{"type": "http.request", "more_body": True}, {"type": "http.request", "body": b"abc"}]
    status, _, body = answer(asgi_call(asgi(), "/echo/x", incoming, [(b"transfer-encoding", b"chunked")]))
    assert (status, json.loads(body)) == (200, {"length": 3, "body": "abc"})


def test_asgi_a_body_spilled_to_a_file_over_several_messages_reaches_the_app_whole(asgi: Any) -> None:
    chunks = [bytes([65 + i]) * (40 * KIB) for i in range(3)]
    status, _, body = answer(asgi_call(asgi(), "/echo/x", parts(*chunks, b""),
                                       [(b"content-length", str(120 * KIB).encode())]))
    assert (status, json.loads(body)) == (200, {"length": 120 * KIB, "body": b"".join(chunks).decode()})


def test_asgi_a_chunked_body_past_the_limit_is_a_413_that_names_it(asgi: Any) -> None:
    status, _, body = answer(asgi_call(asgi(max_body_size=10), "/echo/x", parts(b"123456", b"78901", b""),
                                       [(b"transfer-encoding", b"chunked")]))
    assert (status, body) == (413, b"Request body too large: the limit here is 10 bytes.\n")


def test_asgi_a_body_that_never_starts_is_a_408(asgi: Any, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "gateway"):
        sent = asgi_call(asgi(body_timeout=0.2), "/echo/x", None, [(b"content-length", b"10")])
    assert answer(sent)[0] == 408
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        "The request body of POST /echo/x stopped arriving for 0.2 s; answered 408."]


# -- a disk with no room for a body ---------------------------------------------------------


class FullDisk(io.BytesIO):
    """A temporary file on a disk with room for ``room`` bytes: past it, writes fail as
    on a full disk (``ENOSPC``)."""

    def __init__(self, room: int) -> None:
        super().__init__()
        self.room = room

    def write(self, data: Any) -> int:
        if self.tell() + len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> list[FullDisk]:
    """Temporary files (the only files the boundary writes) on a disk with room for 64 KiB;
    the files made so far."""
    made: list[FullDisk] = []

    def temporary_file(*args: Any, **kwargs: Any) -> FullDisk:
        made.append(FullDisk(SPOOL_IN_MEMORY))
        return made[-1]

    monkeypatch.setattr(tempfile, "TemporaryFile", temporary_file)
    return made


def no_room_line(after: int) -> str:
    return (f"A request body could not be stored (No space left on device, after {after} bytes, in "
            f"{tempfile.gettempdir()}): answered 503. Free space there, or point TMPDIR at a disk with room.")


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize(("extra", "after"), [
    pytest.param({"CONTENT_LENGTH": str(100 * KIB)}, 64 * KIB, id="content-length"),
    pytest.param(CHUNKED, 100 * KIB, id="chunked"),
])
def test_wsgi_a_body_the_disk_has_no_room_for_is_a_503_with_one_line(
    small_table: MountTable, full_disk: list[FullDisk], caplog: pytest.LogCaptureFixture, extra: dict[str, Any],
    after: int,
) -> None:
    with caplog.at_level(logging.WARNING, "gateway"):
        status, body = wsgi_call(wsgi(small_table), "/echo/x", io.BytesIO(b"x" * (100 * KIB)), **extra)
    assert status == "503 Service Unavailable" and body.startswith(b"Service Unavailable: there is no room")
    assert errors(caplog) == [no_room_line(after)]
    assert [f.closed for f in full_disk] == [True]


def test_wsgi_a_temporary_file_that_cannot_be_made_is_a_503(
    small_table: MountTable, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    def no_file(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(tempfile, "TemporaryFile", no_file)
    with caplog.at_level(logging.WARNING, "gateway"):
        status, _ = wsgi_call(wsgi(small_table), "/echo/x", io.BytesIO(b"x" * (100 * KIB)), str(100 * KIB))
    assert status == "503 Service Unavailable"
    assert errors(caplog) == [no_room_line(0)]


def test_asgi_a_body_the_disk_has_no_room_for_is_a_503_with_one_line(
    asgi: Any, full_disk: list[FullDisk], caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, "gateway"):
        sent = asgi_call(asgi(), "/echo/x", parts(b"x" * (40 * KIB), b"x" * (40 * KIB), b""),
                         [(b"content-length", str(80 * KIB).encode())])
    status, headers, _ = answer(sent)
    assert (status, headers[b"retry-after"]) == (503, b"30")
    assert errors(caplog) == [no_room_line(80 * KIB)]
    assert [f.closed for f in full_disk] == [True]


# -- a body read whole in the server's thread (WSGI) ------------------------------------


def test_wsgi_a_chunked_body_is_held_to_the_limit_over_all_its_reads(small_table: MountTable) -> None:
    """The limit counts the whole body, not each 64 KiB read of it."""
    gateway = wsgi(small_table, max_body_size=100_000)
    status, body = wsgi_call(gateway, "/echo/x", io.BytesIO(b"x" * 100_000), **CHUNKED)
    assert (status, json.loads(body)["length"]) == ("200 OK", 100_000)
    status, body = wsgi_call(gateway, "/echo/x", io.BytesIO(b"x" * 100_001), **CHUNKED)
    assert (status, body) == ("413 Request Entity Too Large",
                              b"Request body too large: the limit here is 100000 bytes.\n")


class Failing(io.RawIOBase):
    """A server's ``wsgi.input`` whose client went away after ``good``."""

    def __init__(self, good: bytes) -> None:
        self.good = good

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if self.good:
            data, self.good = self.good, b""
            return data
        raise OSError("client went away")


def test_wsgi_a_body_whose_client_went_away_is_a_400_with_one_line(
    small_table: MountTable, caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, "gateway"):
        status, _ = wsgi_call(wsgi(small_table), "/echo/x", Failing(b"abc"), "10")
    assert status == "400 Bad Request"
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        "The request body ended 7 bytes short of its Content-Length of 10; answered 400."]


class Trickle(io.RawIOBase):
    """A server's ``wsgi.input`` that hands over at most 3 bytes a read, as a socket may."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        size = min(len(buffer), 3, len(self.data))
        buffer[:size], self.data = self.data[:size], self.data[size:]
        return size


def test_wsgi_a_streaming_mounts_reads_are_whole_and_a_short_body_is_an_error(small_table: MountTable) -> None:
    gateway = wsgi(small_table, stream_bodies=("/reader",))
    status, body = wsgi_call(gateway, "/reader/x", Trickle(b"abcdefghijkl"), "14")
    assert status == "200 OK"
    assert json.loads(body) == [
        "", "abcdefghij", "ClientDisconnected: 400 Bad Request: The request body ended before its Content-Length."]


# -- what a trusted proxy says, as the WSGI app sees it ----------------------------------


def test_a_proxied_request_to_a_server_on_a_unix_socket_has_no_port(asgi: Any) -> None:
    """uvicorn on a Unix socket gives the scope a server without a port."""
    trusted = Config.from_env({"GATEWAY_TRUSTED_PROXIES": "127.0.0.1"}).trusted_proxies
    sent = asgi_call(asgi(trusted_proxies=trusted), "/env/x", parts(b""), [(b"x-forwarded-for", b"203.0.113.9")],
                     method="GET", server=("/run/gateway.sock", None))
    seen = json.loads(answer(sent)[2])
    assert (seen["REMOTE_ADDR"], seen["SERVER_PORT"]) == ("203.0.113.9", "")
