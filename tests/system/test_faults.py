"""Faults over real HTTP: failing and blocking views, a broken database, clients that
leave, and shutdown with requests in flight.

The server runs the default mounts plus the test-only apps of ``tests/apps``; what
happens inside it that a client cannot see (a response closed, a stream stopped) is
read from the events file those apps write. The table of rows is ``docs/hardening.md``.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.apps import SERVE_ARGS, apps_env, events
from tests.apps.rawhttp import Connection, LogWatch, Response, error_lines, http_request, request
from tests.support import GATEWAY, ServerProcess, free_port, server_env, unread, until

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The gateway with its default settings, plus the test apps."""
    directory = tmp_path_factory.mktemp("faults")
    port = free_port()
    process = ServerProcess(
        [*GATEWAY, "serve", "--port", str(port), *SERVE_ARGS], port=port,
        env=server_env(directory, **apps_env(directory)), log_path=directory / "server.log",
    )
    yield process
    process.stop()


@pytest.fixture
def start(start_gateway, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Start a gateway of its own with the test apps; returns the server and its data dir."""

    def go(*args: str, **env: str) -> tuple[ServerProcess, Path]:
        directory = tmp_path_factory.mktemp("own")
        return start_gateway(*SERVE_ARGS, *args, data_dir=directory, env={**apps_env(directory), **env}), directory

    return go


def get(port: int, target: str, *, timeout: float = 15.0) -> Response:
    return request(port, http_request("GET", target), timeout=timeout)


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


# --- 13. An exception in a view -----------------------------------------------------


@pytest.mark.parametrize(
    ("path", "page", "message", "other"),
    [
        pytest.param("/faults/boom", b"Internal Server Error", "boom from the Flask test view",
                     "/django/", id="flask"),
        pytest.param("/django/test/boom/", b"Server Error (500)", "boom from the Django test view",
                     "/flask/", id="django"),
    ],
)
def test_view_exception_gives_the_app_500_page_and_one_logged_traceback(
    server: ServerProcess, path: str, page: bytes, message: str, other: str
) -> None:
    watch = LogWatch(server)
    response = get(server.port, path)
    assert response.status == 500, response
    assert page in response.body
    for leak in (b"Traceback", b"RuntimeError", message.encode(), b".py"):
        assert leak not in response.body
    assert get(server.port, other).status == 200
    text = watch.settle()
    assert text.count("Traceback (most recent call last)") == 1, text
    assert len(error_lines(text)) == 1, text
    assert f"RuntimeError: {message}" in text


# --- 14. Blocking requests in one app do not delay the other ------------------------


def latency(port: int, path: str) -> float:
    started = time.monotonic()
    response = get(port, path)
    elapsed = time.monotonic() - started
    assert response.status == 200, response
    return elapsed


@pytest.mark.parametrize(
    ("slow", "quick"),
    [
        pytest.param("/faults/slow?seconds=2", "/django/", id="flask-blocks"),
        pytest.param("/django/test/slow/?seconds=2", "/flask/", id="django-blocks"),
    ],
)
def test_blocking_requests_do_not_delay_the_other_app(server: ServerProcess, slow: str, quick: str) -> None:
    for _ in range(3):
        latency(server.port, quick)  # warm up
    alone = statistics.median(latency(server.port, quick) for _ in range(9))
    started = "flask-slow-started" if slow.startswith("/faults") else "django-slow-started"
    directory = server.log_path.parent
    before = events(directory).count(started)
    with ThreadPoolExecutor(max_workers=8) as pool:
        blocked = [pool.submit(get, server.port, slow) for _ in range(8)]
        until(lambda: events(directory).count(started) == before + 8, 10, "the eight did not all start")
        loaded = statistics.median(latency(server.port, quick) for _ in range(9))
        measured = time.monotonic()
        results = [future.result(timeout=20) for future in blocked]
    assert all(r.status == 200 for r in results), results
    # The eight were still running while the quick requests were timed (one clock on Linux).
    assert min(json.loads(r.body)["end"] for r in results) > measured
    report = f"{quick}: {alone * 1000:.1f} ms alone, {loaded * 1000:.1f} ms with {slow} x8 in flight"
    print(report)
    assert loaded - alone < 0.05, report


# --- 15. The database locked or missing ---------------------------------------------

DB_VIEW = "/django/test/db/"
QUICK = 4.0  # seconds: above the busy timeout the locked-database test sets (2 s)


def test_locked_database_gives_503_while_flask_answers(start) -> None:  # type: ignore[no-untyped-def]
    server, directory = start(DJANGO_SQLITE_TIMEOUT="2")
    assert get(server.port, DB_VIEW).status == 200
    lock = sqlite3.connect(directory / "django.sqlite3", timeout=0, isolation_level=None)
    # In WAL mode a writer's lock lets readers through; exclusive locking mode keeps them out too.
    lock.execute("PRAGMA locking_mode=EXCLUSIVE")
    lock.execute("BEGIN EXCLUSIVE")
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            started = time.monotonic()
            waiting = pool.submit(get, server.port, DB_VIEW)
            until(lambda: events(directory).count("django-db-read-started") == 2, 10, "the view did not start")
            assert latency(server.port, "/flask/") < 1.0  # while Django waits on the lock
            response = waiting.result(timeout=20)
            elapsed = time.monotonic() - started
    finally:
        lock.rollback()
        lock.close()
    assert response.status == 503, response
    assert elapsed < QUICK
    assert b"Traceback" not in response.body
    assert get(server.port, DB_VIEW).status == 200  # and it recovers


def test_missing_database_gives_503_and_is_not_recreated(start) -> None:  # type: ignore[no-untyped-def]
    server, directory = start()
    database = directory / "django.sqlite3"
    assert get(server.port, DB_VIEW).status == 200
    for path in directory.glob("django.sqlite3*"):
        path.unlink()
    started = time.monotonic()
    response = get(server.port, DB_VIEW)
    assert response.status == 503, response
    assert time.monotonic() - started < QUICK
    assert b"Traceback" not in response.body
    assert not database.exists(), "a request created an empty database"
    assert get(server.port, "/flask/").status == 200
    assert get(server.port, DB_VIEW).status == 503
    assert not database.exists()


# --- 16. Clients that leave mid-upload or mid-stream --------------------------------


def new_events(directory: Path, before: int) -> list[str]:
    return events(directory)[before:]


@pytest.mark.parametrize(
    ("path", "closed"),
    [pytest.param("/faults/echo", "flask-closed /echo", id="flask"),
     pytest.param("/django/test/echo/", "django-closed", id="django")],
)
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_client_leaving_mid_upload(server: ServerProcess, path: str, closed: str, framing: str) -> None:
    directory = server.log_path.parent
    before = len(events(directory))
    watch = LogWatch(server)
    with Connection(server.port) as conn:
        if framing == "content-length":
            conn.send(http_request("POST", path, headers=[(b"Content-Length", b"1048576")]) + b"u" * 100_000)
        else:
            conn.send(http_request("POST", path, headers=[(b"Transfer-Encoding", b"chunked")])
                      + b"10000\r\n" + b"u" * 0x10000 + b"\r\n" + b"100\r\nuu")
        # The client leaves once the server has read all it sent, and waits for the rest.
        client_port = conn.sock.getsockname()[1]
        until(lambda: unread(server.port, client_port) == 0, 10, "the server did not read the upload")
    # The server has seen the client go once the request shows in the access log, as
    # nginx logs it: 499, client closed request.
    assert watch.wait_for(f"POST {path}"), watch.text()
    assert f'"POST {path} HTTP/1.1" 499' in watch.text()
    # The body is read whole before the app is called: the app never ran.
    app = "flask" if path.startswith("/faults") else "django"
    assert not any(e.startswith((f"{app}-echo-called", closed)) for e in new_events(directory, before))
    watch.assert_clean()


@pytest.mark.parametrize(
    ("path", "stopped", "closed"),
    [
        pytest.param("/faults/stream", "flask-stream-stopped", "flask-closed /stream", id="flask"),
        pytest.param("/django/test/stream/", "django-stream-stopped", "django-closed", id="django"),
    ],
)
def test_client_leaving_mid_stream_stops_the_generator(
    server: ServerProcess, path: str, stopped: str, closed: str
) -> None:
    directory = server.log_path.parent
    before = len(events(directory))
    tag = uuid.uuid4().hex[:12]
    watch = LogWatch(server)
    with Connection(server.port) as conn:
        conn.send(http_request("GET", f"{path}?tag={tag}&chunks=2000&delay=0.005"))
        received = 0
        deadline = time.monotonic() + 10
        while received < 512 * 1024 and time.monotonic() < deadline:
            data = conn.sock.recv(65536)
            if not data:
                break
            received += len(data)
        assert received >= 512 * 1024, "the stream did not start"

    def stop_event() -> str | None:
        return next((e for e in new_events(directory, before) if e.startswith(f"{stopped} {tag} ")), None)

    assert wait_for(lambda: stop_event() is not None, 10), new_events(directory, before)
    sent = int(stop_event().split("sent=")[1].split()[0])  # type: ignore[union-attr]
    assert sent < 2000, "the generator ran to its end for a client that had gone"
    assert wait_for(lambda: any(e.startswith(closed) for e in new_events(directory, before)), 5)
    watch.assert_clean()


# --- 17. SIGTERM with requests in flight --------------------------------------------


def post_write(port: int, key: str, seconds: float) -> Response:
    data = http_request("POST", f"{DB_VIEW}?key={key}&seconds={seconds}",
                        headers=[(b"Content-Length", b"0")])
    return request(port, data, timeout=30)


def stored(directory: Path, key: str) -> bool:
    with sqlite3.connect(f"file:{directory / 'django.sqlite3'}?mode=ro", uri=True) as db:
        row = db.execute("SELECT COUNT(*) FROM django_hello_greeting WHERE language = ?", (key,)).fetchone()
    return bool(row[0])


def refused(port: int) -> bool:
    """True if a new connection is refused (or closed without an answer)."""
    try:
        response = get(port, "/flask/", timeout=3)
    except ConnectionRefusedError:
        return True
    return response.status is None or response.status == 503


def test_sigterm_lets_running_requests_finish(start) -> None:  # type: ignore[no-untyped-def]
    server, directory = start("--graceful-timeout", "15")
    keys = [f"sig-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        flask = [pool.submit(get, server.port, "/faults/slow?seconds=2", timeout=30) for _ in range(3)]
        writes = {key: pool.submit(post_write, server.port, key, 2) for key in keys}

        def all_six_inside_their_views() -> bool:
            seen = events(directory)
            return seen.count("flask-slow-started") == 3 and all(f"django-db-write-started {k}" in seen for k in keys)

        until(all_six_inside_their_views, 10, lambda: f"not all six are in their views: {events(directory)}")
        os.kill(server.proc.pid, signal.SIGTERM)
        # New connections are refused while the six still run (a request sent in the moment
        # before the server has handled the signal may be served).
        until(lambda: refused(server.port), 5, "a new connection was served after SIGTERM")
        assert not any(f.done() for f in [*flask, *writes.values()]), "refused only once the six had finished"
        flask_results = [f.result(timeout=30) for f in flask]
        write_results = {key: f.result(timeout=30) for key, f in writes.items()}
    assert server.proc.wait(timeout=20) == 0
    assert [r.status for r in flask_results] == [200, 200, 200], flask_results
    for response in write_results.values():
        assert response.status == 201, response
    for key, response in write_results.items():
        if response.status is not None and 200 <= response.status < 300:
            assert stored(directory, key), f"{key} was answered {response.status} but not stored"
    assert "Traceback" not in server.log


def test_sigterm_grace_period_is_a_limit(start) -> None:  # type: ignore[no-untyped-def]
    server, directory = start("--graceful-timeout", "1")
    with ThreadPoolExecutor(max_workers=1) as pool:
        stuck = pool.submit(get, server.port, "/faults/slow?seconds=8", timeout=30)
        until(lambda: "flask-slow-started" in events(directory), 10, "the slow view did not start")
        signalled = time.monotonic()
        os.kill(server.proc.pid, signal.SIGTERM)
        code = server.proc.wait(timeout=20)
        exited = time.monotonic() - signalled
        response = stuck.result(timeout=30)
    assert exited < 1 + 3, f"exited {exited:.1f} s after SIGTERM with a 1 s grace period"
    assert code == 0
    assert response.status != 200  # it was cut off, not answered late
    log = server.log
    assert "was still running at shutdown and was cut off" in log
    assert "Traceback" not in log and "CancelledError" not in log, log


def test_sigterm_on_an_idle_server_exits_at_once(start) -> None:  # type: ignore[no-untyped-def]
    server, _ = start("--graceful-timeout", "15")
    with Connection(server.port) as idle:  # an idle keep-alive connection must not hold it up
        idle.send(http_request("GET", "/flask/", headers=[(b"Connection", b"keep-alive")]))
        assert idle.read_response().status == 200
        signalled = time.monotonic()
        os.kill(server.proc.pid, signal.SIGTERM)
        assert server.proc.wait(timeout=20) == 0
    assert time.monotonic() - signalled < 3

