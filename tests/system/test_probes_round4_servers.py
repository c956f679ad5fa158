"""Probes of issue 21's fourth round that need a real server: uvicorn (``gateway serve``),
Granian (``--server granian``) and gunicorn (docs/hardening.md, "Fourth round"). Each
server serves a bare test app from a small gateway.toml, so that it starts quickly."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.apps.rawhttp import http_request, request
from tests.support import GATEWAY, ServerProcess, free_port, server_env, until

pytestmark = pytest.mark.server

GOOD = '[mounts]\n"/a" = "tests.thirdapp:wsgi_app"\n'
#: A file that reads well but whose app cannot be imported: a worker cannot start from it.
CANNOT_START = '[mounts]\n"/a" = "tests.thirdapp:wsgi_app"\n"/b" = "tests.no_such_module:app"\n'


def children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def workers_of(server: ServerProcess) -> list[int]:
    """The server's worker processes: its live children that run the gateway (not a
    resource tracker, not a reload check's process that has ended)."""
    found = []
    for pid in children(server.proc.pid):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except FileNotFoundError:
            continue
        if (b"gateway" in command or b"spawn_main" in command) and b"resource_tracker" not in command and state != "Z":
            found.append(pid)
    return found


def wait_until(check: Callable[[], object], what: str, timeout: float = 60.0) -> object:
    return until(check, timeout, f"not within {timeout} s: {what}", interval=0.05)


def answers(server: ServerProcess, path: str = "/a/x") -> bool:
    return request(server.port, http_request("GET", path), timeout=10).status == 200


def listening(server: ServerProcess) -> bool:
    """Whether the port takes connections (a Granian worker being replaced has none meanwhile)."""
    try:
        return answers(server)
    except ConnectionRefusedError:
        return server.proc.poll() is not None


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., tuple[ServerProcess, Path]]]:
    """Start ``gateway serve`` with ``args`` on a gateway.toml of :data:`GOOD`."""
    started: list[ServerProcess] = []

    def start(*args: str, prefix: tuple[str, ...] = ()) -> tuple[ServerProcess, Path]:
        config_file = tmp_path / "gateway.toml"
        config_file.write_text(GOOD)
        port = free_port()
        server = ServerProcess([*prefix, *GATEWAY, "serve", "--port", str(port), "--config", str(config_file), *args],
                               port=port, env=server_env(tmp_path), log_path=tmp_path / f"server-{port}.log",
                               ready_path="/a/")
        started.append(server)
        return server, config_file

    yield start
    for server in started:
        server.stop()


#: What each server logs when a worker has started: Granian's, or uvicorn's worker after its lifespan.
STARTED = {"--server": "Started worker-", "--workers": "Application startup complete."}


@pytest.mark.parametrize(("server_args", "count"), [
    pytest.param(("--server", "granian"), 1, id="granian"),
    pytest.param(("--workers", "2"), 2, id="uvicorn-workers"),
])
def test_a_worker_that_died_is_replaced_from_the_configuration_accepted(
        serve: Callable[..., tuple[ServerProcess, Path]], server_args: tuple[str, ...], count: int) -> None:
    """U6, U7: a reload refused (the file's new app cannot be imported), the file left so,
    then a worker killed (as by the kernel's out-of-memory killer). Before: Granian's main
    process shut the whole server down when a worker died (``respawn_failed_workers`` is
    off by default); uvicorn's supervisor replaced it, the new worker read the file as it
    was, failed, and the supervisor stopped the server (``STARTUP_FAILURE``). Now the
    replacement builds from the configuration last accepted and serves."""
    server, config_file = serve(*server_args)
    config_file.write_text(CANNOT_START)
    server.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "no_such_module" in server.log or server.proc.poll() is not None, "the refused reload")
    assert server.proc.poll() is None, server.log
    old = wait_until(lambda: found if len(found := workers_of(server)) == count else None, "the workers")
    assert isinstance(old, list)
    started = STARTED[server_args[0]]
    before = len(server.log)
    os.kill(old[0], signal.SIGKILL)
    wait_until(lambda: server.proc.poll() is not None or started in server.log[before:]
               or "cannot start" in server.log[before:], "a new worker started, or failed, or the server's exit")
    assert server.proc.poll() is None and "cannot start" not in server.log[before:], server.log
    wait_until(lambda: listening(server), "the new worker listening, or the server's exit")
    assert server.proc.poll() is None, server.log
    for _ in range(2 * len(old)):  # every worker answers with the rules accepted
        assert answers(server), server.log
    assert request(server.port, http_request("GET", "/b/x"), timeout=10).status == 404
    assert server.proc.poll() is None, server.log


def test_a_gunicorn_worker_that_died_is_replaced_from_the_configuration_accepted(tmp_path: Path) -> None:
    """U6 under gunicorn (``-c python:gateway.serve.gunicorn_conf``): a reload refused, the
    file left so, then a worker killed. Before, gunicorn's replacement read the file as it
    was, could not boot, and its master shut the whole server down. Now the master keeps
    the configuration it accepted and each worker it forks builds from that."""
    config_file = tmp_path / "gateway.toml"
    config_file.write_text(GOOD)
    port = free_port()
    server = ServerProcess([sys.executable, "-m", "gunicorn", "-c", "python:gateway.serve.gunicorn_conf",
                            "gateway.wsgi:application", "--bind", f"127.0.0.1:{port}", "--workers", "2",
                            "--worker-class", "gthread"],
                           port=port, env=server_env(tmp_path, GATEWAY_CONFIG=str(config_file),
                                                     GATEWAY_BUFFERING_PROXY="1"),
                           log_path=tmp_path / "gunicorn.log", ready_path="/a/")
    try:
        old = wait_until(lambda: found if len(found := workers_of(server)) == 2 else None, "two workers")
        assert isinstance(old, list)
        config_file.write_text(CANNOT_START)
        server.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "The configuration was not reloaded" in server.log or server.proc.poll() is not None,
                   "the refused reload")
        assert server.proc.poll() is None, server.log
        before = len(server.log)
        os.kill(old[0], signal.SIGKILL)
        wait_until(lambda: server.proc.poll() is not None or "serves the gateway" in server.log[before:]
                   or "Exception in worker process" in server.log[before:], "a new worker serving, or failing")
        assert server.proc.poll() is None, server.log
        for _ in range(4):  # every worker answers with the rules accepted
            assert answers(server), server.log
        assert request(server.port, http_request("GET", "/b/x"), timeout=10).status == 404
        assert "no_such_module" not in server.log[before:], server.log[before:]
        assert server.proc.poll() is None, server.log
    finally:
        server.stop()


def test_the_soft_limit_of_open_files_is_raised_to_the_hard_one(
        serve: Callable[..., tuple[ServerProcess, Path]]) -> None:
    """U8: started with a soft limit of 256 open files under a hard one of thousands (as
    some service managers start a process), uvicorn kept 256: past about 250 clients,
    ``accept()`` failed with EMFILE. The gateway raises it to the hard limit at start."""
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"the hard limit here is {hard}")
    server, _ = serve(prefix=("sh", "-c", 'ulimit -Sn 256 && exec "$@"', "sh"))
    limits = Path(f"/proc/{server.proc.pid}/limits").read_text()
    line = next(line for line in limits.splitlines() if line.startswith("Max open files"))
    soft, limit = line.split()[3:5]
    assert soft == limit and soft != "256", line


@pytest.fixture(scope="module")
def gunicorn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """gunicorn (gthread) on ``gateway.wsgi:application``, serving :data:`GOOD` on a TCP port
    and on the Unix socket ``gunicorn.sock`` (as behind nginx)."""
    tmp_path = tmp_path_factory.mktemp("gunicorn")
    (tmp_path / "gateway.toml").write_text(GOOD)
    env = server_env(tmp_path, GATEWAY_CONFIG=str(tmp_path / "gateway.toml"), GATEWAY_BUFFERING_PROXY="1")
    port = free_port()
    server = ServerProcess([sys.executable, "-m", "gunicorn", "-c", "python:gateway.serve.gunicorn_conf",
                            "gateway.wsgi:application", "--bind", f"127.0.0.1:{port}", "--bind",
                            f"unix:{tmp_path / 'gunicorn.sock'}", "--worker-class", "gthread"],
                           port=port, env=env, log_path=tmp_path / "gunicorn.log", ready_path="/a/")
    yield server
    server.stop()


def status_on_unix_socket(path: Path, data: bytes) -> int:
    """Send ``data`` on the Unix socket at ``path``; the status of the answer."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(data)
        answer = b""
        while b"\r\n" not in answer and (piece := sock.recv(4096)):
            answer += piece
    return int(answer.split(b" ", 2)[1])


@pytest.mark.parametrize("host", [b"localhost:\xb2", b"localhost:" + b"9" * 5000, b"localhost:\xb9\xb2"])
def test_a_host_whose_port_int_cannot_read_is_a_400_under_gunicorn(gunicorn: ServerProcess, host: bytes) -> None:
    """U10: on a Unix socket (behind nginx), gunicorn copies the port of the client's
    ``Host`` into ``SERVER_PORT``: ``\\xb2`` is "²" in Latin-1, whose ``isdigit()`` is true
    and which ``int()`` refuses; 5,000 digits are over ``int()``'s limit. Before: a 500, with
    a traceback, before the Host check. Now the Host check's 400."""
    sock = gunicorn.log_path.parent / "gunicorn.sock"
    assert status_on_unix_socket(sock, http_request("GET", "/a/x", host=host)) == 400, gunicorn.log
    assert status_on_unix_socket(sock, http_request("GET", "/a/x")) == 200
    assert "Traceback" not in gunicorn.log, gunicorn.log


@pytest.fixture
def tmpdir_of(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], Path]]:
    """Temporary files go to a tmpfs of its own of the size asked for."""
    import subprocess
    import tempfile

    mounted: list[Path] = []

    def mount(size: str) -> Path:
        folder = tmp_path / f"tmp-{size}"
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            pytest.skip(f"a tmpfs cannot be mounted here: {done.stderr.strip()}")
        mounted.append(folder)
        monkeypatch.setattr(tempfile, "tempdir", str(folder))
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.parametrize("kind", ["wsgi", "asgi"])
def test_a_form_whose_files_the_app_has_no_room_to_copy_is_a_503(
        table: object, tmpdir_of: Callable[[str], Path], kind: str, caplog: pytest.LogCaptureFixture) -> None:
    """U13: a 2 MiB form with a 2 MiB file to Flask, with 3 MiB of room for temporary files:
    the gateway's copy of the body fits, Werkzeug's copy of the file (it writes each file
    over 500 KiB to a temporary file) did not. Before: a 500 from inside the app, with a
    traceback. Now the gateway's 503, with one line naming the folder, as for its own copy."""
    import logging

    from gateway.core.mounts import MountTable
    from tests.entries import builder

    folder = tmpdir_of("3m")
    forms = MountTable.from_specs(["/faults=tests.apps.flaskfaults:app"], defaults=False)
    entries = builder(kind, forms)
    entry = next(entries)()
    data = b"x" * (2 * 1024 * 1024)
    body = (b'--B\r\nContent-Disposition: form-data; name="f"; filename="big.bin"\r\n'
            b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n--B--\r\n")
    try:
        with caplog.at_level(logging.ERROR):
            answer = entry("POST", "/faults/form", {"Content-Type": "multipart/form-data; boundary=B"}, body)
        assert answer.status == 503, answer.body
        assert answer.get("Retry-After") == "30"
        lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(lines) == 1 and f"its app copies to {folder}, which has " in lines[0], lines
        small = (b'--B\r\nContent-Disposition: form-data; name="f"; filename="s.bin"\r\n\r\n' + b"x" * 100_000
                 + b"\r\n--B--\r\n")
        answer = entry("POST", "/faults/form", {"Content-Type": "multipart/form-data; boundary=B"}, small)
        assert (answer.status, answer.json()) == (200, {"fields": 0, "files": 1})
    finally:
        next(entries, None)
    assert list(folder.iterdir()) == []
