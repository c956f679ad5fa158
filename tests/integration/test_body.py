"""Request bodies: read whole on the event loop before a thread is spent on them
(:func:`gateway.adapters.boundary.read_body`), and held to their ``Content-Length`` on the WSGI
side (:class:`gateway.adapters.boundary.WSGIBoundary`)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from typing import Any

import pytest

from gateway.adapters.boundary import SPOOL_IN_MEMORY, ExactBody, read_body, read_exactly
from gateway.adapters.bridge import ClientDisconnected
from gateway.adapters.wsgi import create_wsgi_app
from gateway.core.config import Config
from gateway.core.mounts import MountTable
from gateway.replies import BODY_TIMED_OUT, Reply


def messages(*parts: bytes, end: bool = True, then: dict[str, Any] | None = None,
             waiting: asyncio.Event | None = None) -> Any:
    """A ``receive`` that gives ``parts`` as body messages, then waits forever (or ``then``);
    ``waiting`` is set as it begins to wait."""
    queue = [{"type": "http.request", "body": p, "more_body": True} for p in parts]
    if end:
        queue[-1]["more_body"] = False

    async def receive() -> dict[str, Any]:
        if queue:
            return queue.pop(0)
        if then is not None:
            return then
        if waiting is not None:
            waiting.set()
        await asyncio.Event().wait()  # a client that sends nothing more
        raise AssertionError("unreachable")

    return receive


def run(receive: Any, limit: int | None = 100 * SPOOL_IN_MEMORY, timeout: float = 5.0) -> Any:
    return asyncio.run(read_body(receive, limit, timeout))


def test_a_body_in_one_message_stays_in_memory() -> None:
    stream, size = run(messages(b"a=1&b=2"))
    assert (size, stream.read()) == (7, b"a=1&b=2")
    assert isinstance(stream, io.BytesIO)


def test_a_body_in_parts_is_joined() -> None:
    stream, size = run(messages(b"ab", b"", b"cde"))
    assert (size, stream.read()) == (5, b"abcde")


def test_a_body_past_the_memory_threshold_goes_to_a_file() -> None:
    part = b"x" * (SPOOL_IN_MEMORY // 2)
    stream, size = run(messages(part, part, b"end"))
    assert size == SPOOL_IN_MEMORY + 3
    assert not isinstance(stream, io.BytesIO)
    assert stream.fileno() >= 0  # a real temporary file
    assert stream.read() == part + part + b"end"
    stream.close()


def test_a_body_at_the_threshold_stays_in_memory() -> None:
    stream, size = run(messages(b"x" * SPOOL_IN_MEMORY))
    assert size == SPOOL_IN_MEMORY and isinstance(stream, io.BytesIO)


def test_a_body_over_the_limit_is_a_413() -> None:
    reply = run(messages(b"x" * 60, b"y" * 41), limit=100)
    assert isinstance(reply, Reply) and reply.status == 413
    assert ("Connection", "close") in reply.headers


def test_a_body_at_the_limit_is_whole() -> None:
    _, size = run(messages(b"x" * 60, b"y" * 40), limit=100)
    assert size == 100


def test_a_body_that_stops_arriving_is_a_408() -> None:
    reply = run(messages(b"abc", end=False), timeout=0.2)
    assert reply is BODY_TIMED_OUT
    assert reply.status == 408 and ("Connection", "close") in reply.headers


def test_the_timeout_is_per_pause_not_for_the_whole_body() -> None:
    async def trickle() -> Any:
        parts = [b"a", b"b", b"c", b"d", b"e"]

        async def receive() -> dict[str, Any]:
            await asyncio.sleep(0.05)  # time must pass: a client's pace, under the timeout each time
            part = parts.pop(0)
            return {"type": "http.request", "body": part, "more_body": bool(parts)}

        return await read_body(receive, None, 0.12)

    stream, size = asyncio.run(trickle())  # 0.25 s in all, no pause over 0.12 s
    assert (size, stream.read()) == (5, b"abcde")


def test_a_client_that_leaves_mid_body_gets_nothing_and_the_app_is_not_called() -> None:
    assert run(messages(b"abc", end=False, then={"type": "http.disconnect"})) is None


# -- The WSGI side: the body is as long as it said, or a 400 ---------------------------


def wsgi_call(app: Any, body: bytes, length: str, **extra: Any) -> tuple[str, bytes]:
    environ = {
        "REQUEST_METHOD": "POST", "SCRIPT_NAME": "", "PATH_INFO": "/echo/x", "QUERY_STRING": "",
        "SERVER_NAME": "localhost", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_HOST": "localhost",
        "REMOTE_ADDR": "127.0.0.1", "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body),
        "wsgi.errors": io.StringIO(), "CONTENT_LENGTH": length, "CONTENT_TYPE": "application/x-www-form-urlencoded",
        **extra,
    }
    status: list[str] = []
    result = app(environ, lambda s, h, e=None: status.append(s))
    data = b"".join(result)
    getattr(result, "close", lambda: None)()
    return status[0], data


@pytest.fixture(scope="module")
def echo_gateway() -> Any:
    table = MountTable.from_specs(["/echo=tests.apps.bodyecho:app"], defaults=False)
    return create_wsgi_app(table, Config.from_env({}))


def test_a_body_shorter_than_its_content_length_is_a_400(echo_gateway: Any, caplog: pytest.LogCaptureFixture
                                                          ) -> None:
    with caplog.at_level(logging.WARNING, "gateway"):
        status, body = wsgi_call(echo_gateway, b"key=tr96421&text=Hel", "150")
    assert status.startswith("400") and b"ended early" in body
    assert [r.getMessage() for r in caplog.records] == [
        "The request body ended 130 bytes short of its Content-Length of 150; answered 400."]


def test_a_whole_body_reaches_the_app(echo_gateway: Any) -> None:
    status, body = wsgi_call(echo_gateway, b"key=tr96421&text=Hello", "22")
    assert status.startswith("200")
    assert json.loads(body) == {"length": 22, "body": "key=tr96421&text=Hello"}


def test_the_app_reads_no_more_than_the_content_length(echo_gateway: Any) -> None:
    _, body = wsgi_call(echo_gateway, b"abcdefXXXX", "6")
    assert json.loads(body) == {"length": 6, "body": "abcdef"}


def test_read_exactly_spools_a_long_body_to_a_file() -> None:
    data = b"z" * (SPOOL_IN_MEMORY + 1)
    environ = {"wsgi.input": io.BytesIO(data)}
    spool = read_exactly(environ, len(data))
    assert spool is not None and not isinstance(spool, io.BytesIO)
    assert environ["wsgi.input"].read() == data
    spool.close()


def test_a_streaming_mount_sees_a_short_body_as_an_error() -> None:
    stream = ExactBody(io.BytesIO(b"abc"), 10)
    assert stream.read(3) == b"abc"
    with pytest.raises(ClientDisconnected):
        stream.read(7)
    assert isinstance(ClientDisconnected(), OSError)  # Django: UnreadablePostError


def test_a_streaming_mount_reads_an_exact_body_to_its_end() -> None:
    stream = ExactBody(io.BytesIO(b"abcdefXX"), 6)
    assert stream.read() == b"abcdef"
    assert stream.read() == b""


# -- The ASGI side, end to end through the gateway ------------------------------------


def asgi_call(gateway: Any, receive: Any, headers: list[tuple[bytes, bytes]]) -> list[dict[str, Any]]:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/echo/x", "raw_path": b"/echo/x", "query_string": b"", "root_path": "",
             "headers": [(b"host", b"localhost"), *headers], "client": ("127.0.0.1", 5000),
             "server": ("127.0.0.1", 8000)}
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(gateway(scope, receive, send))
    return sent


@pytest.fixture(scope="module")
def echo_asgi() -> Any:
    from gateway.adapters.asgi import create_asgi_app

    table = MountTable.from_specs(["/echo=tests.apps.bodyecho:app", "/echo2=tests.thirdapp:echo_app"],
                                  defaults=False)
    app = create_asgi_app(table, Config.from_env({"GATEWAY_BODY_TIMEOUT": "0.2"}), threads=2)
    yield app
    app.executor.shutdown(wait=True)


def test_asgi_a_chunked_body_reaches_the_app_whole_with_its_length(echo_asgi: Any) -> None:
    sent = asgi_call(echo_asgi, messages(b"ab", b"cde"), [(b"transfer-encoding", b"chunked")])
    assert sent[0]["status"] == 200
    assert json.loads(sent[1]["body"]) == {"length": 5, "body": "abcde"}


def test_asgi_a_client_that_leaves_mid_body_gets_no_app_call(echo_asgi: Any) -> None:
    sent = asgi_call(echo_asgi, messages(b"ab", end=False, then={"type": "http.disconnect"}),
                     [(b"content-length", b"10")])
    assert sent == []


def test_asgi_a_stalled_body_is_a_408_with_one_log_line(echo_asgi: Any, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "gateway"):
        sent = asgi_call(echo_asgi, messages(b"ab", end=False), [(b"content-length", b"10")])
    assert sent[0]["status"] == 408
    assert (b"connection", b"close") in sent[0]["headers"]
    assert [r.getMessage() for r in caplog.records if r.name == "gateway"] == [
        "The request body of POST /echo/x stopped arriving for 0.2 s; answered 408."]


def test_asgi_expect_100_continue_on_a_buffered_mount_is_read_on_the_loop_first(
    echo_asgi: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The limit was checked on the Content-Length: the body is read before a thread is
    spent on it, so a stalled one gets the 408 and the app is never called."""
    with caplog.at_level(logging.WARNING, "gateway"):
        sent = asgi_call(echo_asgi, messages(b"ab", end=False),
                         [(b"content-length", b"10"), (b"expect", b"100-continue")])
    assert sent[0]["status"] == 408
    whole = asgi_call(echo_asgi, messages(b"ab", b"cd"), [(b"content-length", b"4"), (b"expect", b"100-continue")])
    assert json.loads(whole[1]["body"]) == {"length": 4, "body": "abcd"}


@pytest.fixture(scope="module")
def streaming_asgi() -> Any:
    from gateway.adapters.asgi import create_asgi_app

    table = MountTable.from_specs(["/echo=tests.apps.bodyecho:app"], defaults=False)
    app = create_asgi_app(table, Config.from_env({"GATEWAY_BODY_TIMEOUT": "0.2", "GATEWAY_STREAM_BODIES": "/echo"}),
                          threads=2)
    yield app
    app.executor.shutdown(wait=True)


def test_asgi_a_streaming_mounts_stalled_body_fails_the_apps_read_after_the_body_timeout(
    streaming_asgi: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The app reads as the body arrives; a pause past the body timeout raises in its read
    (here a bare app that lets it through: a 500), so its thread waits no longer."""
    with caplog.at_level(logging.ERROR, "gateway.bridge"):
        sent = asgi_call(streaming_asgi, messages(b"ab", end=False), [(b"content-length", b"10")])
    assert sent[0]["status"] == 500
    [record] = [r for r in caplog.records if r.name == "gateway.bridge"]
    assert record.exc_info is not None
    error = record.exc_info[1]
    assert isinstance(error, ClientDisconnected)
    assert str(error.__cause__) == "400 Bad Request: The request body stopped arriving for 0.2 s."


# -- The WSGI side in process: every path of WSGIBoundary ------------------------------


@pytest.fixture(scope="module")
def streaming_gateway() -> Any:
    table = MountTable.from_specs(["/echo=tests.apps.bodyecho:app"], defaults=False)
    return create_wsgi_app(table, Config.from_env({"GATEWAY_STREAM_BODIES": "/echo"}))


def test_a_streaming_mount_reads_a_whole_body(streaming_gateway: Any) -> None:
    status, body = wsgi_call(streaming_gateway, b"abcdefXX", "6")
    assert status.startswith("200") and json.loads(body) == {"length": 6, "body": "abcdef"}


def test_a_streaming_mount_sees_a_short_body_as_an_error_in_its_read(streaming_gateway: Any) -> None:
    with pytest.raises(ClientDisconnected):
        wsgi_call(streaming_gateway, b"abc", "6")


def test_a_body_one_byte_short_is_a_400(echo_gateway: Any) -> None:
    status, _ = wsgi_call(echo_gateway, b"abcde", "6")
    assert status.startswith("400")


def test_a_body_read_whole_reaches_the_app_from_a_file_past_the_threshold(echo_gateway: Any) -> None:
    data = b"q" * (SPOOL_IN_MEMORY + 1)
    status, body = wsgi_call(echo_gateway, data, str(len(data)))
    assert status.startswith("200") and json.loads(body)["length"] == len(data)


def test_read_exactly_keeps_a_body_at_the_threshold_in_memory() -> None:
    environ = {"wsgi.input": io.BytesIO(b"m" * SPOOL_IN_MEMORY)}
    spool = read_exactly(environ, SPOOL_IN_MEMORY)
    assert isinstance(spool, io.BytesIO) and environ["wsgi.input"] is spool
    assert spool.read() == b"m" * SPOOL_IN_MEMORY


class Breaks(io.RawIOBase):
    """A ``wsgi.input`` whose client goes away after ``good`` bytes."""

    def __init__(self, good: bytes) -> None:
        self.good = good

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if self.good:
            data, self.good = self.good, b""
            return data
        raise OSError("client went away")


@pytest.mark.parametrize("extra", [
    pytest.param({"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input_terminated": True}, id="chunked"),
    pytest.param({"SERVER_PROTOCOL": "HTTP/2"}, id="http2-without-length"),
])
def test_a_body_of_unknown_length_is_collected_and_given_a_length(extra: dict[str, Any]) -> None:
    seen: dict[str, Any] = {}

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.update(environ)
        seen["body"] = environ["wsgi.input"].read()
        start_response("200 OK", [])
        return [b""]

    gateway = create_wsgi_app(MountTable.from_specs(["/echo=tests.apps.bodyecho:app"], defaults=False),
                              Config.from_env({}))
    gateway.apps["/echo"].app = app
    status, _ = wsgi_call(gateway, b"a=1&b=2", "", **extra)
    assert status.startswith("200")
    assert (seen["CONTENT_LENGTH"], seen["body"]) == ("7", b"a=1&b=2")
    assert "HTTP_TRANSFER_ENCODING" not in seen and "wsgi.input_terminated" not in seen


def test_a_chunked_body_past_the_limit_is_a_413() -> None:
    gateway = create_wsgi_app(MountTable.from_specs(["/echo=tests.apps.bodyecho:app"], defaults=False),
                              Config.from_env({"GATEWAY_MAX_BODY_SIZE": "10"}))
    status, body = wsgi_call(gateway, b"x" * 11, "", HTTP_TRANSFER_ENCODING="chunked")
    assert status.startswith("413") and b"10 bytes" in body
    assert wsgi_call(gateway, b"x" * 10, "", HTTP_TRANSFER_ENCODING="chunked")[0].startswith("200")


def test_a_chunked_body_cut_short_is_a_400(echo_gateway: Any) -> None:
    status, body = wsgi_call(echo_gateway, b"", "", HTTP_TRANSFER_ENCODING="chunked",
                             **{"wsgi.input": Breaks(b"abc")})
    assert status.startswith("400") and b"ended early" in body


def test_a_content_length_body_cut_short_by_an_error_is_a_400(echo_gateway: Any) -> None:
    status, _ = wsgi_call(echo_gateway, b"", "10", **{"wsgi.input": Breaks(b"abc")})
    assert status.startswith("400")


def test_a_chunked_body_under_granian_is_a_411(echo_gateway: Any, caplog: pytest.LogCaptureFixture) -> None:
    granian_body = type("WSGIBody", (io.BytesIO,), {"__module__": "granian._granian"})
    with caplog.at_level(logging.WARNING, "gateway"):
        status, body = wsgi_call(echo_gateway, b"", "", HTTP_TRANSFER_ENCODING="chunked",
                                 **{"wsgi.input": granian_body(b"5\r\nhello")})
    assert status.startswith("411") and b"Content-Length" in body
    assert [r.getMessage() for r in caplog.records if r.name == "gateway"] == [
        "A chunked request body under Granian was refused with 411: its WSGI stream cannot tell a malformed "
        "body from a whole one."]
    # With a Content-Length, Granian's stream is read and counted as any other.
    status, _ = wsgi_call(echo_gateway, b"", "5", **{"wsgi.input": granian_body(b"hello")})
    assert status.startswith("200")


def test_a_streaming_mount_gets_a_chunked_body_as_a_stream() -> None:
    seen: dict[str, Any] = {}

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.update(environ)
        start_response("200 OK", [])
        return [b""]

    gateway = create_wsgi_app(MountTable.from_specs(["/echo=tests.apps.bodyecho:app"], defaults=False),
                              Config.from_env({"GATEWAY_STREAM_BODIES": "/echo"}))
    gateway.apps["/echo"].app = app
    stream = io.BytesIO(b"abc")
    wsgi_call(gateway, b"", "", HTTP_TRANSFER_ENCODING="chunked", **{"wsgi.input": stream,
                                                                     "wsgi.input_terminated": True})
    assert seen["wsgi.input"] is stream and seen["wsgi.input_terminated"] is True
    assert "CONTENT_LENGTH" not in seen or seen["CONTENT_LENGTH"] == ""


def test_an_http2_request_without_a_body_under_granian_is_served(echo_gateway: Any) -> None:
    granian_body = type("WSGIBody", (io.BytesIO,), {"__module__": "granian._granian"})
    status, body = wsgi_call(echo_gateway, b"", "", SERVER_PROTOCOL="HTTP/2", REQUEST_METHOD="GET",
                             **{"wsgi.input": granian_body(b"")})
    assert status.startswith("200"), body


def test_read_body_closes_its_file_when_cancelled() -> None:
    opened: list[Any] = []
    import tempfile

    real = tempfile.TemporaryFile

    def tracked(*args: Any, **kwargs: Any) -> Any:
        opened.append(real(*args, **kwargs))
        return opened[-1]

    async def scenario() -> None:
        waiting = asyncio.Event()
        task = asyncio.ensure_future(read_body(messages(b"x" * (SPOOL_IN_MEMORY + 1), end=False, waiting=waiting),
                                               None, 10))
        await asyncio.wait_for(waiting.wait(), 5)  # the body is in its file, and read_body waits for more
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    tempfile.TemporaryFile = tracked  # type: ignore[assignment]
    try:
        asyncio.run(scenario())
    finally:
        tempfile.TemporaryFile = real  # type: ignore[assignment]
    assert len(opened) == 1 and opened[0].closed
