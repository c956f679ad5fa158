"""The WSGI entry point (:mod:`gateway.adapters.wsgi`): what mutation testing found that no
other test held (docs/testing.md): the request head read from a sparse environ, the
header-size limit counted exactly, the access line of a response, and ``StartFirst``.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import Any

import pytest

from gateway.adapters.wsgi import StartFirst, WSGIGateway, create_wsgi_app
from gateway.core.config import Config
from gateway.core.mounts import Mount, MountTable
from gateway.observe.logs import access


class Tracked:
    """A response iterable that keeps whether it was closed."""

    closed = 0

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self.chunks = iter(chunks)

    def __iter__(self) -> Iterator[bytes]:
        return self.chunks

    def close(self) -> None:
        Tracked.closed += 1


def chunks_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """A WSGI app that answers 5 bytes in two chunks, through an iterable with ``close()``."""
    if environ["PATH_INFO"] == "/fail":
        raise RuntimeError("the view failed")
    start_response("201 Created", [("Content-Type", "text/plain")])
    return Tracked([b"abc", b"de"])


@pytest.fixture(scope="module")
def small_table() -> MountTable:
    return MountTable([*MountTable.from_specs(["/env=tests.thirdapp:echo_app"], defaults=False),
                       Mount("/gen", "tests.unit.test_wsgi_mutants:chunks_app", "wsgi", chunks_app)])


def gateway(small_table: MountTable, **changes: Any) -> WSGIGateway:
    return create_wsgi_app(small_table, replace(Config.from_env({}), **changes))


def call(app: Any, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
    """Call a WSGI ``app`` with ``environ`` as a server would: read the body, then close it."""
    said: list[Any] = []
    result = app({"wsgi.input": io.BytesIO(b""), "wsgi.errors": io.StringIO(), **environ},
                 lambda status, headers, exc_info=None: said.append((status, headers)))
    try:
        body = b"".join(result)
    finally:
        getattr(result, "close", lambda: None)()
    return said[0][0], said[0][1], body


BARE = {"HTTP_HOST": "localhost", "wsgi.url_scheme": "http"}


def test_a_sparse_environ_reads_as_a_get_of_the_root_over_http_1_1(small_table: MountTable) -> None:
    """PEP 3333 requires more, but a server that leaves out the method, script name, path,
    port and protocol gets the defaults: the gateway's index, not a 500."""
    status, _, body = call(gateway(small_table), BARE)
    assert status == "200 OK" and b"/env" in body


def test_the_servers_script_name_and_scheme_reach_the_app(small_table: MountTable) -> None:
    status, headers, body = call(gateway(small_table, https=True), {
        **BARE, "REQUEST_METHOD": "GET", "SCRIPT_NAME": "/srv", "PATH_INFO": "/env/x", "wsgi.url_scheme": "https"})
    assert status == "200 OK"
    seen = json.loads(body)
    assert (seen["SCRIPT_NAME"], seen["PATH_INFO"]) == ("/srv/env", "/x")
    assert ("Strict-Transport-Security", "max-age=31536000; includeSubDomains") in headers


HEADERS = {"HTTP_HOST": "localhost", "HTTP_X_A": "12345", "CONTENT_TYPE": "text/plain", "CONTENT_LENGTH": "0",
           "HTTPS": "on"}  # mod_wsgi's HTTPS is no header
SIZE = len("host" + "localhost" + "x-a" + "12345" + "content-type" + "text/plain" + "content-length" + "0")


@pytest.mark.parametrize(("limit", "status"), [pytest.param(SIZE, "200 OK", id="at-the-limit"),
                                               pytest.param(SIZE - 1, "431 Request Header Fields Too Large",
                                                            id="one-past")])
def test_the_header_limit_counts_each_name_and_value_as_sent(small_table: MountTable, limit: int, status: str) -> None:
    environ = {**HEADERS, "REQUEST_METHOD": "GET", "PATH_INFO": "/env/x", "SERVER_PORT": "80",
               "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http"}
    assert call(gateway(small_table, max_header_size=limit), environ)[0] == status


@pytest.fixture
def access_records() -> Iterator[list[logging.LogRecord]]:
    """The access log's records, kept while the test runs."""
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


def logged(records: list[logging.LogRecord]) -> list[tuple[Any, ...]]:
    access.flush()
    return [(r.method, r.path, r.status, r.bytes, r.mount) for r in records]  # type: ignore[attr-defined]


def test_a_response_is_logged_with_its_status_and_size_once_closed(
    small_table: MountTable, access_records: list[logging.LogRecord],
) -> None:
    closed = Tracked.closed
    status, headers, body = call(gateway(small_table), {**BARE, "PATH_INFO": "/gen/x", "SERVER_PROTOCOL": "HTTP/1.0"})
    assert (status, body) == ("201 Created", b"abcde")
    assert ("Content-Type", "text/plain") in headers
    assert Tracked.closed == closed + 1  # the app's close(), through the logged iterable
    # A list has no close(); a server that names no protocol is logged with "-".
    status, _, body = call(gateway(small_table), {**BARE, "PATH_INFO": "/env/x"})
    assert status == "200 OK"
    assert logged(access_records) == [("GET", "/gen/x", 201, 5, "/gen"), ("GET", "/env/x", 200, len(body), "/env")]
    assert [r.getMessage().split('"')[1] for r in access_records] == ["GET /gen/x HTTP/1.0", "GET /env/x -"]


def test_an_app_that_raises_is_logged_as_a_500(small_table: MountTable,
                                                access_records: list[logging.LogRecord]) -> None:
    with pytest.raises(RuntimeError, match="the view failed"):
        call(gateway(small_table), {**BARE, "REQUEST_METHOD": "POST", "PATH_INFO": "/gen/fail"})
    assert logged(access_records) == [("POST", "/gen/fail", 500, 0, "/gen")]


# -- StartFirst: the headers before the first chunk, for Granian's WSGI interface ----------


def lazy(chunks: list[bytes], fail: bool = False) -> Any:
    """A generator view: it calls start_response at its first chunk (or fails there)."""

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        if fail:
            raise RuntimeError("failed before its headers")
        start_response("201 Created", [("Location", environ["PATH_INFO"])])
        yield from chunks

    return app


@pytest.mark.parametrize("chunks", [pytest.param([b"made ", b"it"], id="two-chunks"),
                                    pytest.param([], id="no-chunk")])
def test_start_first_calls_start_response_before_returning(chunks: list[bytes]) -> None:
    said: list[tuple[str, Any]] = []
    result = StartFirst(lazy(chunks))({"PATH_INFO": "/made"},
                                      lambda status, headers, exc_info=None: said.append((status, headers)))
    assert said == [("201 Created", [("Location", "/made")])]  # before the server iterates
    assert b"".join(result) == b"".join(chunks)
    result.close()


def test_start_first_closes_the_apps_iterable_with_its_own() -> None:
    closed: list[bool] = []

    def gen() -> Iterator[bytes]:
        try:
            yield b"one"
            yield b"two"
        finally:
            closed.append(True)

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        return gen()

    result = StartFirst(app)({}, lambda *args: None)
    assert next(iter(result)) == b"one"
    result.close()
    assert closed == [True]


def test_start_first_closes_an_app_that_fails_at_its_first_chunk() -> None:
    closed: list[bool] = []

    class Failing:
        def __iter__(self) -> Iterator[bytes]:
            return self

        def __next__(self) -> bytes:
            raise RuntimeError("failed before its headers")

        def close(self) -> None:
            closed.append(True)

    with pytest.raises(RuntimeError, match="failed before its headers"):
        StartFirst(lambda environ, start_response: Failing())({}, lambda *args: None)
    assert closed == [True]


def test_start_first_serves_a_list_as_it_is() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"whole"]

    result = StartFirst(app)({}, lambda *args: None)
    assert b"".join(result) == b"whole"
    result.close()


def test_a_chunked_body_without_a_content_type_is_held_to_the_limit(small_table: MountTable) -> None:
    environ = {**BARE, "REQUEST_METHOD": "POST", "PATH_INFO": "/env/x", "SERVER_PROTOCOL": "HTTP/1.1",
               "HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input_terminated": True, "wsgi.input": io.BytesIO(b"x" * 11)}
    status, _, body = call(gateway(small_table, max_body_size=10), environ)
    assert (status, body) == ("413 Request Entity Too Large", b"Request body too large: the limit here is 10 bytes.\n")
