"""The bridge on a real server (tests/integration/test_bridge.py has the rest): an app that
writes past its Content-Length leaves the connection usable for the next request."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from gateway.adapters.bridge import DEFAULT_BUFFER_SIZE
from tests.apps.rawhttp import Connection, http_request
from tests.support import ServerProcess, free_port, server_env

pytestmark = pytest.mark.server


TIMEOUT = 5.0

OVERRUN_WARNING = "The app at {} sent more than its Content-Length of 8 bytes; the rest was dropped."

OVERRUN_SERVER = """
import sys

import uvicorn

from gateway.adapters.bridge import WSGIBridge


def app(environ, start_response):
    if environ["PATH_INFO"] == "/overrun":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "8")])
        return iter([b"0123", b"45", b"6789"])
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "6")])
    return [b"second"]


port, buffer_size = int(sys.argv[1]), int(sys.argv[2])
bridge = WSGIBridge(app, name="/mounted", buffer_size=buffer_size)
uvicorn.run(bridge, host="127.0.0.1", port=port, http="httptools", lifespan="on")
"""


@pytest.mark.parametrize(
    "buffer_size", [pytest.param(DEFAULT_BUFFER_SIZE, id="buffered"), pytest.param(4, id="streamed")]
)
def test_http_overrun_keeps_the_connection_for_the_next_request(tmp_path: Path, buffer_size: int) -> None:
    port = free_port()
    server = ServerProcess(
        [sys.executable, "-c", OVERRUN_SERVER, str(port), str(buffer_size)], port=port,
        env=server_env(tmp_path), log_path=tmp_path / "uvicorn.log", ready_path="/ready",
    )
    try:
        with Connection(port, timeout=TIMEOUT) as conn:
            # Both requests in one write: the second waits behind the first on the connection.
            conn.send(
                http_request("GET", "/overrun", headers=[(b"Connection", b"keep-alive")])
                + http_request("GET", "/second")
            )
            first = conn.read_response(timeout=TIMEOUT)
            second = conn.read_response(timeout=TIMEOUT)
            rest = conn.read_rest(TIMEOUT)
        assert (first.status, first.header("content-length"), first.body) == (200, "8", b"01234567")
        assert (second.status, second.body) == (200, b"second")
        assert rest == b""  # nothing past the declared length reached the wire
        warning = OVERRUN_WARNING.format("/mounted")
        log = server.wait_for(warning)
    finally:
        server.stop()
    assert log.count(warning) == 1
    assert "Response content longer than Content-Length" not in log
