"""``gateway serve --server granian``: Granian's ASGI interface under the probes that froze or
broke its WSGI interface (issue 21).

Under Granian's WSGI interface each request held one of Granian's threads while its body
arrived and while its response left, and Granian read chunked bodies itself. On its ASGI
interface the gateway reads bodies and buffers responses on the event loop, as on uvicorn:

- 300 uploads trickling one byte a second, 120 slow views on 100 threads, 300 clients
  reading 5 MiB pages at 1 KiB/s: ``/healthz`` (and the apps, where a thread is free)
  still answer within a second;
- chunked request bodies reach the apps whole; a broken chunked framing (an overflowing
  chunk size) is a 400;
- an ASGI mount's and a lazy WSGI app's response headers arrive;
- a connection that sends nothing is closed at the header timeout (Granian serves
  HTTP/1.1 only, as uvicorn);
- ``trace`` in lower case is refused as ``TRACE``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.apps import SERVE_ARGS, apps_env, events
from tests.apps.rawhttp import Connection, LogWatch, Response, chunked, http_request, request
from tests.support import GATEWAY, ServerProcess, free_port, metric, server_env, until

pytestmark = pytest.mark.server

#: A bound on answers that must not wait behind slow clients: generous for a hello page on a
#: loaded 2-core machine, far below the 18-30 s the WSGI interface took.
PROMPT = 1.0
#: What the server's memory may grow by while 300 clients read a 5 MiB page slowly (the
#: bound docs/hardening.md's "Slow clients" gives for uvicorn).
SLOW_READERS_RSS = 64 * 1024 * 1024
EXTRA_MOUNTS = ("--mount", "/third=tests.thirdapp:asgi_app", "--mount", "/lazy=tests.thirdapp:lazy_app")


@pytest.fixture(scope="module")
def granian(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One ``gateway serve --server granian`` with the test apps and ``/metrics``, for the module."""
    directory = tmp_path_factory.mktemp("granian")
    metrics = directory / "metrics"
    metrics.mkdir()
    port = free_port()
    server = ServerProcess(
        [*GATEWAY, "serve", "--server", "granian", "--port", str(port), "--metrics", *SERVE_ARGS, *EXTRA_MOUNTS],
        port=port, env=server_env(directory, **apps_env(directory), PROMETHEUS_MULTIPROC_DIR=str(metrics)),
        log_path=directory / "granian.log")
    yield server
    server.stop()


def prompt_get(port: int, path: str) -> Response:
    """GET ``path``; a response later than :data:`PROMPT` counts as none."""
    return request(port, http_request("GET", path), timeout=PROMPT)


def wait_until(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    until(check, timeout, f"not within {timeout} s: {what}", interval=0.05)


def granian_worker(server: ServerProcess) -> int:
    """The PID of the Granian worker that serves (the command's only child serving Python)."""
    children = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text().split()
    workers = [int(pid) for pid in children
               if "gateway" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")]
    assert len(workers) == 1, workers
    return workers[0]


def rss(pid: int) -> int:
    """The resident memory of process ``pid``, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


# --- What Granian's WSGI interface got wrong, each request alone ----------------------------


@pytest.mark.parametrize("method", ["trace", "track", "connect", "Trace"])
@pytest.mark.parametrize("path", ["/", "/flask/", "/django/"])
def test_methods_in_lower_case_are_refused_as_in_upper_case(granian: ServerProcess, method: str, path: str) -> None:
    response = request(granian.port, f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                                     f"Cookie: secret=1\r\n\r\n".encode())
    assert response.status == 405, response
    assert b"secret" not in response.body


@pytest.mark.parametrize("framing", [
    pytest.param(b"10000000000000005\r\nhello\r\n0\r\n\r\n", id="overflowing-size"),
    pytest.param(b"5\r\nhello\r\nzz\r\nworld\r\n0\r\n\r\n", id="bad-size"),
    pytest.param(b"5\r\nhello\r\n-5\r\nworld\r\n0\r\n\r\n", id="negative-size"),
    pytest.param(b"5\r\nhello\r\n3\r\nworld\r\n0\r\n\r\n", id="data-longer-than-size"),
    pytest.param(b"5\nhello\n0\n\n", id="bare-lf"),
])
def test_a_broken_chunked_framing_is_a_400_logged_as_one(granian: ServerProcess, framing: bytes) -> None:
    """Granian ends such a body as if the client had left, and answers 500 for an app that
    then sends nothing: the gateway answers 400 (and no app sees the body)."""
    watch = LogWatch(granian)
    called = events(granian.log_path.parent).count("flask-echo-called")
    response = request(granian.port, b"POST /faults/echo HTTP/1.1\r\nHost: localhost\r\n"
                                     b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + framing)
    assert response.status == 400, response
    assert response.body == b"Bad Request: the request body ended early.\n"
    assert watch.wait_for('"POST /faults/echo HTTP/1.1" 400 ')
    text = watch.assert_clean()
    # One access line, the gateway's (Granian's own access log is off).
    assert sum('"POST /faults/echo HTTP/1.1"' in line for line in text.splitlines()) == 1, text
    assert events(granian.log_path.parent).count("flask-echo-called") == called  # no app saw it


@pytest.mark.parametrize("sizes", [[65536], [1], [10, 1000], [70000, 3]], ids=str)
@pytest.mark.parametrize("path", ["/faults/echo", "/django/test/echo/"])
def test_a_chunked_body_reaches_the_app_whole(granian: ServerProcess, sizes: list[int], path: str) -> None:
    data = bytes(range(256)) * 1200  # 300 kB
    if sizes == [1]:
        data = data[:3000]  # a chunk a byte: 3,000 of them
    response = request(granian.port, f"POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                                     "Transfer-Encoding: chunked\r\n\r\n".encode() + chunked(data, sizes))
    assert response.status == 200, response
    answer = json.loads(response.body)
    assert (answer["length"], answer["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())


def test_an_asgi_mount_keeps_its_response_headers(granian: ServerProcess) -> None:
    response = request(granian.port, http_request("GET", "/third/x"))
    assert response.status == 200, response
    assert response.body == b"asgi root_path=/third path=/third/x"
    assert response.header("content-type") == "text/plain"
    assert (response.header("set-cookie") or "").startswith("third=1;")
    assert response.header("x-request-id")
    assert response.header("x-content-type-options") == "nosniff"


def test_a_connection_that_sends_nothing_is_closed_at_the_header_timeout(granian: ServerProcess) -> None:
    # With HTTP/2 detection on (Granian's default), no timer ran until a first byte came: such
    # a connection stayed open for good. HTTP/1.1 alone, the header timeout (5 s) closes it.
    started = time.monotonic()
    with Connection(granian.port) as conn:
        assert conn.wait_closed(15), "a connection that sent nothing is still open after 15 s"
    assert time.monotonic() - started >= 4.5  # by the header timeout, not at once


def test_a_wsgi_app_that_starts_its_response_lazily_keeps_its_headers(granian: ServerProcess) -> None:
    """start_response called as the first chunk is made (PEP 3333): under Granian's WSGI
    interface the status came and none of the headers."""
    response = request(granian.port, http_request("GET", "/lazy/thing"))
    assert response.status == 201, response
    assert response.body == b"made /thing"
    assert (response.header("location") or "").endswith("/made")
    assert response.header("content-type") == "text/plain"
    assert response.header("x-request-id")


# --- Slow clients and slow views: /healthz answers meanwhile --------------------------------


def test_300_uploads_trickling_a_byte_a_second_leave_the_gateway_answering(granian: ServerProcess) -> None:
    """Under Granian's WSGI interface these left /healthz unanswered for 30 s: each upload
    held one of its threads. The gateway reads them on the event loop."""
    for path in ("/flask/", "/django/", "/django/admin/login/"):
        assert request(granian.port, http_request("GET", path)).status == 200  # warm
    body = b"x" * 100
    uploads: list[Connection] = []
    try:
        for _ in range(300):
            conn = Connection(granian.port)
            conn.send(b"POST /faults/echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n" + body[:1])
            uploads.append(conn)
        sent = 1
        stop = threading.Event()

        def trickle() -> None:  # a byte a second on each
            nonlocal sent
            while not stop.wait(1.0) and sent < len(body) - 1:
                for conn in uploads:
                    conn.send(body[sent:sent + 1])
                sent += 1

        trickler = threading.Thread(target=trickle, daemon=True)
        trickler.start()
        try:
            wait_until(lambda: metric(granian.port, "gateway_requests_in_flight") >= 300,
                       "the 300 uploads are in the gateway")
            for _ in range(3):
                for path in ("/healthz", "/flask/", "/django/", "/readyz"):
                    response = prompt_get(granian.port, path)  # a deadline of PROMPT: fails if later
                    assert response.status == 200, (path, response)
        finally:
            stop.set()
            trickler.join()
        # The rest of each body: every upload reaches the app whole.
        for conn in uploads:
            assert conn.send(body[sent:]), "an upload was closed while it trickled"
        for conn in uploads:
            answer = conn.read_response(timeout=30)
            assert answer.status == 200, answer
            assert json.loads(answer.body)["length"] == len(body)
    finally:
        for conn in uploads:
            conn.close()


def test_300_slow_readers_of_large_pages_leave_the_gateway_answering(granian: ServerProcess) -> None:
    """300 clients (three times the threads) each read a 5 MiB page at about 1 KiB/s: the
    health check and both apps answer within a second, and memory stays bounded; then all
    hang up at once, and the health check still answers within a second."""
    for path in ("/flask/", "/django/", "/faults/large"):
        assert request(granian.port, http_request("GET", path)).status == 200  # warm, and the page made
    worker = granian_worker(granian)
    before = rss(worker)
    slow: list[socket.socket] = []
    try:
        for _ in range(300):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
            sock.settimeout(10)
            sock.connect(("127.0.0.1", granian.port))
            sock.sendall(http_request("GET", "/faults/large"))
            slow.append(sock)
        for sock in slow:  # every response has begun
            assert sock.recv(1024).startswith(b"HTTP/1.1 200 "), "a large page did not begin"
        # ... and every app's thread has put all of its page: a response begins before.
        # Until then the threads are the apps' (300 pages for 100 threads), and /flask/
        # waits its turn on any server; from then on only slow readers are left.
        wait_until(lambda: metric(granian.port, "gateway_wsgi_threads_busy") == 0, "every page produced")
        stop = threading.Event()

        def read_slowly() -> None:  # about 1 KiB a second from each
            while not stop.wait(1.0):
                for sock in slow:
                    with contextlib.suppress(BlockingIOError):
                        sock.recv(1024, socket.MSG_DONTWAIT)

        reader = threading.Thread(target=read_slowly, daemon=True)
        reader.start()
        try:
            for _ in range(3):
                for path in ("/healthz", "/flask/", "/django/"):
                    response = prompt_get(granian.port, path)  # a deadline of PROMPT: fails if later
                    assert response.status == 200, (path, response)
            grown = rss(worker) - before
            assert grown < SLOW_READERS_RSS, f"RSS grew by {grown / 2**20:.0f} MiB"
        finally:
            stop.set()
            reader.join()
        # All 300 hang up. Granian takes what is sent to a closed connection at once, with
        # an INFO line each: the loop read out the rest of every file before a disconnect
        # could stop it (/healthz waited 2.1 s), and wrote 37,000 lines.
        watch = LogWatch(granian)
        for sock in slow:
            sock.close()
        assert prompt_get(granian.port, "/healthz").status == 200
        assert "ASGI transport error" not in watch.settle()
    finally:
        for sock in slow:
            sock.close()


def test_120_slow_views_on_100_threads_leave_healthz_answering(granian: ServerProcess) -> None:
    """Under Granian's WSGI interface /healthz waited 18.5 s behind them (it needed one of
    Granian's threads); here it is answered on the event loop, and /readyz on its own thread."""
    answers: list[Response] = []

    def slow_view() -> None:
        answers.append(request(granian.port, http_request("GET", "/faults/slow?seconds=3"), timeout=30))

    views = [threading.Thread(target=slow_view) for _ in range(120)]
    for view in views:
        view.start()
    try:
        wait_until(lambda: metric(granian.port, "gateway_wsgi_threads_busy") >= 100
                   and metric(granian.port, "gateway_requests_in_flight") >= 120,
                   "100 slow views running and 20 waiting for a thread")
        for _ in range(3):
            assert prompt_get(granian.port, "/healthz").status == 200
        ready = request(granian.port, http_request("GET", "/readyz"), timeout=PROMPT + 2)
        assert ready.status == 200, ready
    finally:
        for view in views:
            view.join()
    assert [a.status for a in answers] == [200] * 120


# --- Reloads -------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [
    pytest.param('[mounts]\n"/a" = "tests.no_such_module:app"\n', id="an app that cannot be imported"),
    pytest.param('[mounts]\n"/a" = "tests.thirdapp:wsgi_app"\n[[rules]]\npath = "/a/<int(min=abc):n>"\n'
                 'app = "/a"\n', id="a converter argument that is not a number"),
])
def test_a_reload_with_a_file_that_cannot_work_keeps_the_site_up(tmp_path: Path, bad: str) -> None:
    """SIGHUP with a gateway.toml that cannot work (before: Granian's new worker failed to
    start, and its main process shut the whole site down, with a traceback): the file is
    checked first, one line says why it was not reloaded, the same worker goes on serving
    the old rules, and a good file on the next SIGHUP is served."""
    import signal

    config_file = tmp_path / "gateway.toml"
    config_file.write_text('[mounts]\n"/a" = "tests.thirdapp:wsgi_app"\n')
    port = free_port()
    server = ServerProcess([*GATEWAY, "serve", "--server", "granian", "--port", str(port), "--config",
                            str(config_file)], port=port, env=server_env(tmp_path), log_path=tmp_path / "server.log",
                           ready_path="/a/")
    try:
        worker = granian_worker(server)
        config_file.write_text(bad)
        server.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "was not reloaded" in server.log or server.proc.poll() is not None,
                   "the refusal in the log, or the server's exit")
        assert server.proc.poll() is None, server.log
        refusals = [line for line in server.log.splitlines() if "was not reloaded" in line]
        assert len(refusals) == 1, server.log
        assert refusals[0].endswith("; the workers keep serving what they had."), refusals[0]
        assert "gateway.toml" in refusals[0] or "no_such_module" in refusals[0], refusals[0]
        assert granian_worker(server) == worker
        answer = request(port, http_request("GET", "/a/x"), timeout=10)
        assert (answer.status, answer.body) == (200, b"wsgi script_name=/a path_info=/x")

        config_file.write_text('[mounts]\n"/a" = "tests.thirdapp:wsgi_app"\n"/b" = "tests.thirdapp:wsgi_app"\n')
        server.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: request(port, http_request("GET", "/b/x"), timeout=10).status == 200, "/b served")
        # Granian stops the old worker 3.5 s after the new one starts (its respawn_interval).
        children = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children")
        wait_until(lambda: str(worker) not in children.read_text().split(), "the old worker stopped")
        assert granian_worker(server) != worker
    finally:
        server.stop()
    assert "Traceback" not in server.log, server.log


def test_a_worker_signalled_before_it_set_its_handlers_ends_and_the_main_process_still_stops() -> None:
    """A Granian worker is forked with the main process's SIGTERM handler and keeps it until
    it sets its own, after the gateway is built. Before, a SIGTERM meanwhile set a flag of
    the main process's copy and was lost: the worker served on, and the main process waited
    for it for ever (4 runs of 8 beside two busy loops). Now, in a forked worker, the
    handler ends the process as the signal does by default; in the main process it still
    starts Granian's shutdown."""
    import os
    import signal

    from gateway.core.config import Config
    from gateway.serve.runners import granian_class

    server = granian_class(Config.from_env({}))("gateway.asgi:application", port=free_port())
    child = os.fork()
    if child == 0:  # as a worker before its own handlers: only the signal may end it
        try:
            server.signal_handler_interrupt(signal.SIGTERM, None)
        finally:
            os._exit(3)
    _, status = os.waitpid(child, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM, status
    assert not server.interrupt_signal
    server.signal_handler_interrupt(signal.SIGTERM, None)  # the main process: Granian's own handling
    assert server.interrupt_signal and server.main_loop_interrupt.is_set()


PICKY_APP = """
import multiprocessing

# Imports in the reload's check process (named gateway-check), fails in a worker: as a
# gateway.toml or an app's module that changed between the check and the new worker would.
if multiprocessing.current_process().name != "gateway-check":
    raise RuntimeError("changed since the check")


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"picky"]
"""


def test_a_worker_that_fails_after_the_reload_check_passed_keeps_the_site_up(tmp_path: Path) -> None:
    """T10: SIGHUP with a file whose new worker fails though the check built it (the file or
    a module changed in between: seen with SIGHUPs 0.3 s apart while the file went from a
    good one to a FIFO, under wrk). Granian's main process shut down: every request after
    it failed. A bad file, whenever it comes, must not take the site down."""
    import signal

    (tmp_path / "round3_picky.py").write_text(PICKY_APP)
    config_file = tmp_path / "gateway.toml"
    config_file.write_text('[mounts]\n"/a" = "tests.thirdapp:wsgi_app"\n')
    port = free_port()
    env = server_env(tmp_path, PYTHONPATH=f"{tmp_path}")
    server = ServerProcess([*GATEWAY, "serve", "--server", "granian", "--port", str(port), "--config",
                            str(config_file)], port=port, env=env, log_path=tmp_path / "server.log", ready_path="/a/")
    try:
        config_file.write_text('[mounts]\n"/a" = "tests.thirdapp:wsgi_app"\n"/p" = "round3_picky:app"\n')
        server.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: server.proc.poll() is not None or "replacement exited" in server.log,
                   "the new worker's failure, or the server's exit")
        assert server.proc.poll() is None, server.log
        refusals = [line for line in server.log.splitlines() if "was not reloaded" in line]
        assert len(refusals) == 1 and refusals[0].endswith(
            "replacement exited with status 1 as it started; the old worker keeps serving what it had."), server.log
        assert request(port, http_request("GET", "/p/"), timeout=10).status == 404  # the old rules
        answer = request(port, http_request("GET", "/a/x"), timeout=10)
        assert answer.status == 200, server.log
    finally:
        server.stop()
