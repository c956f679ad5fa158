"""Probes of issue 21's fifth round that need a real server: request framing by
``Transfer-Encoding`` on uvicorn (``gateway serve``), Granian (``--server granian``) and
gunicorn behind the gateway's settings (docs/hardening.md, "Fifth round").

Each server read some of these its own way before the gateway looked: httptools passed
``gzip, chunked`` and chunked HTTP/1.0 on to the app, Granian ``chunked, chunked`` and a
``Content-Length`` beside ``chunked``, so the echo app got a body read one way or another
(a coded body taken for the form). Now each is refused the same way on every server, and
a chunked body alone still arrives whole.

One exception, RFC 9112's own (6.3): Granian (hyper) drops a ``Content-Length`` sent
beside ``chunked`` before the gateway sees the request, reads the body by its chunks and
closes the connection after the response, so nothing can follow the body on it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.apps import SERVE_ARGS, apps_env
from tests.apps.rawhttp import request
from tests.support import GATEWAY, ServerProcess, free_port, server_env

pytestmark = pytest.mark.server

HEAD = b"POST /faults/echo HTTP/1.1\r\nHost: localhost\r\n"
ABC = b"3\r\nabc\r\n0\r\n\r\n"  # "abc", in chunks


@pytest.fixture(scope="module", params=["uvicorn", "granian", "gunicorn"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The test apps on one server: uvicorn, Granian, or gunicorn with the gateway's settings."""
    directory: Path = tmp_path_factory.mktemp(request.param)
    port = free_port()
    env = server_env(directory, **apps_env(directory))
    if request.param == "gunicorn":
        mounts = " ".join(SERVE_ARGS[i + 1] for i in range(0, len(SERVE_ARGS), 2))
        env.update(GATEWAY_MOUNTS=mounts, GATEWAY_BUFFERING_PROXY="1")
        command = [sys.executable, "-m", "gunicorn", "-c", "python:gateway.serve.gunicorn_conf",
                   "gateway.wsgi:application", "--bind", f"127.0.0.1:{port}", "--worker-class", "gthread"]
    else:
        command = [*GATEWAY, "serve", "--port", str(port), *SERVE_ARGS,
                   *(["--server", "granian"] if request.param == "granian" else [])]
    started = ServerProcess(command, port=port, env=env, log_path=directory / "server.log", ready_path="/healthz")
    started.name = request.param  # type: ignore[attr-defined]
    yield started
    started.stop()


@pytest.mark.parametrize(("head", "body", "statuses"), [
    pytest.param(b"Transfer-Encoding: gzip, chunked\r\n", ABC, {501}, id="gzip-then-chunked"),
    pytest.param(b"Transfer-Encoding: chunked, chunked\r\n", ABC, {400}, id="chunked-twice"),
    pytest.param(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", ABC, {400}, id="two-lines"),
    pytest.param(b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n", b"0\r\n\r\n", {400}, id="with-length"),
    pytest.param(b"Transfer-Encoding: gzip\r\n", b"abc", {400}, id="no-chunked"),
])
def test_a_framing_that_cannot_be_read_one_way_never_reaches_the_app(server: ServerProcess, head: bytes,
                                                                     body: bytes, statuses: set[int]) -> None:
    response = request(server.port, HEAD + head + b"\r\n" + body)
    if server.name == "granian" and b"Content-Length" in head:  # type: ignore[attr-defined]
        # hyper kept the chunks and dropped the length (see above): an empty body, then the end.
        assert (response.status, json.loads(response.body)["length"]) == (200, 0), response
        assert ("connection", "close") in response.headers
        return
    assert response.status in statuses, response
    assert b"sha256" not in response.body  # the echo app never ran
    assert "Traceback" not in server.log


def test_chunked_in_http_1_0_never_reaches_the_app(server: ServerProcess) -> None:
    response = request(server.port, HEAD.replace(b"HTTP/1.1", b"HTTP/1.0") + b"Transfer-Encoding: chunked\r\n\r\n"
                       + ABC)
    assert response.status == 400, response
    assert b"sha256" not in response.body


@pytest.mark.parametrize("coding", [b"chunked", b"Chunked", b" chunked "])
def test_a_chunked_body_alone_arrives_whole(server: ServerProcess, coding: bytes) -> None:
    response = request(server.port, HEAD + b"Transfer-Encoding: " + coding + b"\r\n\r\n" + ABC)
    assert response.status == 200, response
    assert json.loads(response.body)["length"] == 3
