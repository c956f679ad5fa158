"""The embedded SQLite database over real servers: concurrent admin writes on every server,
a write waiting for a held lock (and the 503 when it is never released), ``gateway
migrate`` raced against ``gateway serve`` on a fresh data directory, and the modes of the
data directory and the database file (issue 10, items 4, 5 and 10). The table of rows is
``docs/hardening.md``."""

from __future__ import annotations

import os
import re
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import GATEWAY, ROOT, ServerProcess, free_port, load_size, server_env, unread, until, wsgi_server

pytestmark = pytest.mark.server

ADMIN_PASSWORD = "correct-horse-battery-staple-42"
ADD_URL = "/django/admin/django_hello/greeting/add/"
LIST_URL = "/django/admin/django_hello/greeting/"
WRITERS = 16
# Seconds of writes per server: 2 at the tests' size (170-270 writes here, every one
# checked), 8 at full size, the figures of docs/hardening.md (row 31).
SECONDS = load_size(ci=2.0, full=8.0)


# --- Concurrent admin writes -----------------------------------------------------------


def gunicorn_argv(port: int) -> list[str]:
    return [sys.executable, "-m", "gunicorn", "gateway.wsgi:application", "--bind", f"127.0.0.1:{port}",
            "--workers", "2", "--worker-class", "gthread", "--threads", "16", "--graceful-timeout", "5"]


@pytest.fixture(params=["uvicorn", "granian", "gunicorn"])
def two_workers(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[ServerProcess]:
    """A server with 2 worker processes on a migrated data directory of its own, with an admin user."""
    if request.param == "gunicorn":
        servers = wsgi_server(tmp_path_factory, "gunicorn-writes", gunicorn_argv)  # migrates first
        server = next(servers)
    else:
        start = request.getfixturevalue("start_gateway")
        server = start("--workers", "2", "--server", request.param)
    create_admin(server)
    yield server
    if request.param == "gunicorn":
        next(servers, None)  # stops it


def create_admin(server: ServerProcess) -> None:
    env = server_env(server.log_path.parent, DJANGO_SUPERUSER_PASSWORD=ADMIN_PASSWORD)
    subprocess.run([*GATEWAY, "manage", "createsuperuser", "--noinput", "--username", "admin",
                    "--email", "admin@example.com"], cwd=ROOT, env=env, check=True, capture_output=True, timeout=60)


def csrf_token(page: str) -> str:
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert match, page
    return match.group(1)


def admin_session(server: ServerProcess) -> tuple[dict[str, str], str]:
    """Log in to the admin; return the session's cookies and the add form's CSRF token."""
    with httpx.Client(base_url=server.url, timeout=30) as client:
        page = client.get("/django/admin/login/")
        response = client.post("/django/admin/login/?next=/django/admin/", data={
            "csrfmiddlewaretoken": csrf_token(page.text), "username": "admin", "password": ADMIN_PASSWORD,
            "next": "/django/admin/"})
        assert response.status_code == 302, response.text
        token = csrf_token(client.get(ADD_URL).text)
        return {name: client.cookies[name] for name in ("sessionid", "csrftoken")}, token


@dataclass
class Write:
    key: str
    status: int
    location: str
    seconds: float
    error: str = ""


def writer(server: ServerProcess, cookies: dict[str, str], token: str, prefix: str, deadline: float
           ) -> list[Write]:
    """POST the add form, a new language code each time, until ``deadline``."""
    done = []
    with httpx.Client(base_url=server.url, cookies=cookies, timeout=60) as client:
        while time.monotonic() < deadline:
            key = f"{prefix}{len(done):05d}"
            started = time.monotonic()
            try:
                response = client.post(ADD_URL, data={"csrfmiddlewaretoken": token, "language": key,
                                                       "text": f"Hello {key}", "_save": "Save"})
                done.append(Write(key, response.status_code, response.headers.get("location", ""),
                                  time.monotonic() - started))
            except httpx.HTTPError as exc:
                done.append(Write(key, 0, "", time.monotonic() - started, f"{type(exc).__name__}: {exc}"))
    return done


def add(server: ServerProcess, cookies: dict[str, str], token: str, key: str,
        trace: Callable[[str, dict[str, Any]], None] | None = None) -> httpx.Response:
    """Add a greeting by the admin's form; ``trace`` is httpcore's (the request's events)."""
    with httpx.Client(base_url=server.url, cookies=cookies, timeout=60) as client:
        return client.post(ADD_URL, data={"csrfmiddlewaretoken": token, "language": key, "text": f"Hello {key}",
                                          "_save": "Save"}, extensions={"trace": trace} if trace else None)


def stored_rows(directory: Path, prefix: str) -> list[tuple[str, str]]:
    with sqlite3.connect(f"file:{directory / 'django.sqlite3'}?mode=ro", uri=True) as db:
        return db.execute("SELECT language, text FROM django_hello_greeting WHERE language LIKE ?",
                          (prefix + "%",)).fetchall()


def hold_write_lock(directory: Path) -> sqlite3.Connection:
    """Take the database's write lock from this process, as another writer would."""
    holder = sqlite3.connect(directory / "django.sqlite3", timeout=0, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    return holder


@pytest.mark.soak
def test_16_concurrent_admin_writers_on_2_workers(two_workers: ServerProcess) -> None:
    server = two_workers
    cookies, token = admin_session(server)
    run = os.urandom(2).hex()
    deadline = time.monotonic() + SECONDS
    with ThreadPoolExecutor(WRITERS) as pool:
        futures = [pool.submit(writer, server, cookies, token, f"w{run}{i:02d}", deadline) for i in range(WRITERS)]
        writes = [w for f in futures for w in f.result(timeout=SECONDS + 120)]

    acknowledged = {w.key for w in writes if (w.status, w.location) == (302, LIST_URL)}
    failed = [w for w in writes if w.key not in acknowledged]
    slowest = max(w.seconds for w in writes)
    summary = (f"{len(writes)} writes in {SECONDS:g} s by {WRITERS} writers, {len(acknowledged)} answered 302, "
               f"{len(failed)} not; median {statistics.median(w.seconds for w in writes) * 1000:.0f} ms, "
               f"slowest {slowest * 1000:.0f} ms")
    print(summary)
    assert not failed, f"{summary}: {failed[:5]}\n{server.log[-3000:]}"
    assert len(acknowledged) >= WRITERS, summary  # every writer got through, more than once in all
    rows = stored_rows(server.log_path.parent, f"w{run}")
    keys = [language for language, _ in rows]
    assert len(keys) == len(set(keys)), f"duplicate rows: {summary}"
    assert set(keys) == acknowledged, (
        f"rows without a 302: {sorted(set(keys) - acknowledged)[:10]}; "
        f"302s without a row: {sorted(acknowledged - set(keys))[:10]}; {summary}")
    assert all(text == f"Hello {language}" for language, text in rows)
    assert "database is locked" not in server.log
    assert "Traceback" not in server.log


# --- A held write lock: wait for it, or a 503 after the busy timeout -------------------

BUSY_TIMEOUT = 4.0  # DJANGO_SQLITE_TIMEOUT of this server (default 20 s)
HELD = 2.5  # longer than the former busy timeout (2 s), shorter than BUSY_TIMEOUT


@pytest.fixture(scope="module")
def locking(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, dict[str, str], str]]:
    """``gateway serve`` with a busy timeout of BUSY_TIMEOUT, and an admin session on it."""
    directory = tmp_path_factory.mktemp("locking")
    port = free_port()
    server = ServerProcess([*GATEWAY, "serve", "--port", str(port)], port=port,
                           env=server_env(directory, DJANGO_SQLITE_TIMEOUT=str(BUSY_TIMEOUT)),
                           log_path=directory / "server.log")
    create_admin(server)
    yield (server, *admin_session(server))
    server.stop()


def test_write_waits_for_a_held_lock_while_reads_go_on(locking: tuple[ServerProcess, dict[str, str], str]) -> None:
    server, cookies, token = locking
    directory = server.log_path.parent
    key = f"h{os.urandom(3).hex()}"
    holder = hold_write_lock(directory)
    try:
        with ThreadPoolExecutor(1) as pool:
            started = time.monotonic()
            port: list[int] = []
            sent = threading.Event()

            def trace(event: str, info: dict[str, Any]) -> None:
                if event == "connection.connect_tcp.complete":
                    port.append(info["return_value"].get_extra_info("client_addr")[1])
                elif event == "http11.send_request_body.complete":
                    sent.set()

            waiting = pool.submit(add, server, cookies, token, key, trace)
            assert sent.wait(30), waiting.done() and waiting.result()
            until(lambda: unread(server.port, port[0]) == 0, 30, "the server did not read the write's request")
            # Reads do not wait for the writer (WAL): the admin's list reads the session too.
            listed = httpx.get(server.url + LIST_URL, cookies=cookies, timeout=30)
            assert listed.status_code == 200
            assert not waiting.done(), waiting.result()  # answered while the write still waits
            # Time must pass: the write is still waiting when the lock has been held HELD s.
            time.sleep(max(0.0, started + HELD - time.monotonic()))
            assert not waiting.done(), waiting.result()
            holder.execute("COMMIT")
            response = waiting.result(timeout=30)
            elapsed = time.monotonic() - started
    finally:
        holder.close()
    assert (response.status_code, response.headers.get("location")) == (302, LIST_URL), response.text
    # It waited for the lock, and got it: past the busy timeout it would have been a 503
    # (the next test), so the 302 is the bound, not the client's clock.
    assert elapsed >= HELD
    assert stored_rows(directory, key) == [(key, f"Hello {key}")]


def test_write_behind_a_lock_never_released_gets_503_after_the_busy_timeout(
    locking: tuple[ServerProcess, dict[str, str], str],
) -> None:
    server, cookies, token = locking
    directory = server.log_path.parent
    key = f"d{os.urandom(3).hex()}"
    holder = hold_write_lock(directory)
    try:
        started = time.monotonic()
        response = add(server, cookies, token, key)
        elapsed = time.monotonic() - started
    finally:
        holder.close()  # its transaction is rolled back
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "5"
    assert BUSY_TIMEOUT <= elapsed < BUSY_TIMEOUT + 3
    assert stored_rows(directory, key) == []
    log = server.wait_for(f"Database unavailable for {ADD_URL}: database is locked")
    assert "Traceback" not in log
    retried = add(server, cookies, token, key)  # the lock is gone: the same write goes through
    assert retried.status_code == 302, retried.text
    assert stored_rows(directory, key) == [(key, f"Hello {key}")]


# --- gateway migrate and gateway serve, started together -------------------------------


@pytest.mark.parametrize("attempt", [1, 2, 3])
def test_migrate_and_serve_started_together_on_a_fresh_data_dir(tmp_path: Path, attempt: int) -> None:
    env = server_env(tmp_path / "data")  # neither the directory nor the database exists yet
    port = free_port()
    migrate = subprocess.Popen([*GATEWAY, "migrate"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        server = ServerProcess([*GATEWAY, "serve", "--port", str(port)], port=port, env=env,
                               log_path=tmp_path / "serve.log")
    finally:
        output, _ = migrate.communicate(timeout=120)
    try:
        response = httpx.get(server.url + "/django/", timeout=30)
    finally:
        server.stop()
    assert migrate.returncode == 0, output
    assert "Traceback" not in output
    assert response.status_code == 200
    assert "Traceback" not in server.log, server.log


# --- The data directory and the database are for their owner only ----------------------


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The common umask, under which files are created world-readable (0644, 0755)."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def mode(path: Path) -> str:
    return oct(path.stat().st_mode & 0o7777)


def migrate(directory: Path) -> str:
    done = subprocess.run([*GATEWAY, "migrate", "-v", "0"], cwd=ROOT, env=server_env(directory),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stderr


@pytest.mark.usefixtures("umask_022")
def test_fresh_data_dir_and_database_are_private(tmp_path: Path) -> None:
    directory = tmp_path / "data"
    assert migrate(directory) == ""
    assert mode(directory) == "0o700"
    assert mode(directory / "django.sqlite3") == "0o600"
    assert mode(directory / "django-secret-key") == mode(directory / "flask-secret-key") == "0o600"
    assert {mode(path) for path in directory.iterdir()} == {"0o600"}
    # SQLite gives the files it creates beside the database the database file's mode.
    with sqlite3.connect(directory / "django.sqlite3", isolation_level=None) as db:
        db.execute("BEGIN IMMEDIATE")
        db.execute("DELETE FROM django_session")
        assert mode(directory / "django.sqlite3-wal") == mode(directory / "django.sqlite3-shm") == "0o600"
        db.execute("ROLLBACK")


@pytest.mark.usefixtures("umask_022")
def test_open_data_dir_and_database_are_tightened_with_a_warning(tmp_path: Path) -> None:
    directory = tmp_path / "data"
    migrate(directory)
    directory.chmod(0o755)
    (directory / "django.sqlite3").chmod(0o644)
    warnings = migrate(directory).splitlines()
    assert mode(directory) == "0o700"
    assert mode(directory / "django.sqlite3") == "0o600"
    assert warnings == [
        f"{directory} was open to other users (mode 0755); it is now 0700, for its owner only.",
        f"{directory / 'django.sqlite3'} was open to other users (mode 0644); it is now 0600, for its owner only.",
    ]
    assert migrate(directory) == ""  # once is enough
