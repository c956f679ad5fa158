"""Helpers for the tests: the repository, the gateway command, servers run as subprocesses,
a synchronous ASGI client, a private PostgreSQL server, waiting for a state (``until``) and
the size of the load tests (``load_size``). Test modules import them with
``from tests.support import ...``; the fixtures built on them are in ``tests/fixtures.py``."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

ROOT = Path(__file__).resolve().parent.parent
GATEWAY = [sys.executable, "-m", "gateway"]
#: The demo apps as ``gateway serve`` options: a command that mounts an app of its own gets
#: no demo app unless it names it (gateway.serve.frameworks), as these do.
DEMO_MOUNTS = ("--mount", "/flask=flask_hello:app", "--mount", "/django=django_hello.wsgi:application")


T = TypeVar("T")

#: The size of the load tests (the soak, the chaos run, the several-machines test, the
#: concurrent writers, the shadow benchmark): ``ci``, the default, is big enough to check
#: what they assert (nothing lost, no 5xx) in little time; ``full`` is the size of the
#: figures docs/ quotes. ``scripts/load.py`` runs them at full size.
LOAD_SIZES = ("ci", "full")


def load_size(ci: T, full: T) -> T:
    """``ci`` or ``full``, as ``GATEWAY_LOAD_SIZE`` says (``ci`` unless set)."""
    size = os.environ.get("GATEWAY_LOAD_SIZE", "ci")
    if size not in LOAD_SIZES:
        raise ValueError(f'GATEWAY_LOAD_SIZE="{size}" is not a size of the load tests: use ci or full.')
    return full if size == "full" else ci


def until(predicate: Callable[[], T], timeout: float, message: str | Callable[[], str] = "",
          interval: float = 0.02) -> T:
    """Poll ``predicate`` until it returns a true value, and return that value; fail with
    ``message`` (a string, or a function that makes one) if ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError((message() if callable(message) else message)
                                 or f"not true within {timeout} s: {predicate}")
        time.sleep(interval)
    return value


def metric(port: int, name: str) -> float:
    """The value of the gateway's metric ``name`` (summed over its labels), from its
    ``/metrics`` (a server started with ``--metrics``)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith((name + " ", name + "{")))


#: /proc/net/tcp's states of a connection the server has not closed yet: established,
#: and closed by the client only (CLOSE_WAIT).
_OPEN = {0x01, 0x08}


def _tcp_sockets() -> list[tuple[int, int, int, int, int]]:
    """The IPv4 TCP sockets of this network namespace (/proc/net/tcp): for each, its local
    port, its peer's port, its state, the bytes received and not read yet, and its inode."""
    sockets = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        sockets.append((int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16),
                        int(fields[3], 16), int(fields[4].split(":")[1], 16), int(fields[9])))
    return sockets


def unread(port: int, peer: int) -> int | None:
    """The bytes a server on 127.0.0.1:``port`` was sent by the client at port ``peer`` and
    has not read yet (its socket's receive queue); None if there is no such connection. 0:
    the server has read all it was sent."""
    return next((queued for local, remote, _, queued, _ in _tcp_sockets() if (local, remote) == (port, peer)), None)


def accepted(pid: int, port: int, peers: set[int]) -> set[int]:
    """Which of the clients at ports ``peers`` process ``pid`` has accepted on ``port``: a
    connection the kernel has completed but the server has not taken yet is not counted."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed meanwhile
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return {remote for local, remote, _, _, inode in _tcp_sockets() if local == port and remote in peers
            and inode in inodes}


def connections(port: int) -> int:
    """The connections a server on ``port`` has not closed yet (its own side: established,
    or closed by the client only); 0 once it is done with every client it had."""
    return sum(1 for local, remote, state, _, _ in _tcp_sockets() if local == port and remote and state in _OPEN)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A server started as a subprocess on loopback, its output kept in a log file."""

    def __init__(self, args: list[str], *, port: int, env: dict[str, str], log_path: Path,
                 ready_path: str = "/", cwd: Path = ROOT) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        try:
            self.proc = subprocess.Popen(
                args, cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except BaseException:  # e.g. the guard in tests/fixtures.py refusing a subprocess
            self._log.close()
            raise
        self.wait_ready(ready_path)

    def wait_ready(self, path: str, timeout: float = 60.0) -> None:
        """Wait until ``path`` answers, or fail with the server's log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = self.log
                self._log.close()
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{log}")
            try:
                with urllib.request.urlopen(self.url + path, timeout=2):
                    return
            except urllib.error.HTTPError:
                return  # it answers, whatever the status
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not answer within {timeout} s:\n{self.log}")

    @property
    def log(self) -> str:
        """Everything the server has written so far."""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 10.0) -> str:
        """Wait until ``text`` appears in the log (lines are written after responses)."""
        deadline = time.monotonic() + timeout
        while text not in (log := self.log):
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not in the server log within {timeout} s:\n{log}")
            time.sleep(0.05)
        return log

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Signal the server's process group and wait for it to exit."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def server_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment for a server subprocess with its own data directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "DJANGO_", "FLASK_"))}
    env.pop("DATABASE_URL", None)
    env["GATEWAY_DATA_DIR"] = str(data_dir)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def wsgi_server(tmp_path_factory: pytest.TempPathFactory, name: str, argv: Callable[[int], list[str]]
                ) -> Iterator[ServerProcess]:
    """Migrate a fresh data directory, then serve ``gateway.wsgi:application`` with ``argv(port)``."""
    directory = tmp_path_factory.mktemp(name)
    env = server_env(directory)
    subprocess.run([*GATEWAY, "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
    port = free_port()
    server = ServerProcess(argv(port), port=port, env=env, log_path=directory / f"{name}.log")
    yield server
    server.stop()


class SyncASGIClient:
    """httpx over ASGITransport, driven synchronously, one event loop per request."""

    def __init__(self, app, base_url: str = "http://localhost") -> None:  # type: ignore[no-untyped-def]
        self.app = app
        self.base_url = base_url
        self.cookies: object = None

    def request(self, method: str, url: str, **kwargs):  # type: ignore[no-untyped-def]
        import httpx

        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url=self.base_url,
                                         cookies=self.cookies) as client:
                response = await client.request(method, url, **kwargs)
                self.cookies = client.cookies
                return response

        return asyncio.run(go())

    def get(self, url: str, **kwargs):  # type: ignore[no-untyped-def]
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs):  # type: ignore[no-untyped-def]
        return self.request("POST", url, **kwargs)


class PostgresCluster:
    """A private PostgreSQL server on a free loopback port, in a temporary directory."""

    def __init__(self, bindir: Path, root: Path) -> None:
        self.bindir = bindir
        self.root = root
        self.datadir = root / "data"
        self.port = free_port()
        self.log_path = root / "postgres.log"
        # initdb refuses to run as root: run the server as the postgres account then.
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self._run("initdb", "-D", str(self.datadir), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                  "--no-sync")
        self.start()

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self.as_user, str(self.bindir / tool), *args], check=True,
                       capture_output=True, timeout=120)

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._run("pg_ctl", "-D", str(self.datadir), "-o", options, "-l", str(self.log_path), "-w", "start")

    def stop(self) -> None:
        """Stop the server at once (clients see their connections drop)."""
        self._run("pg_ctl", "-D", str(self.datadir), "-m", "fast", "-w", "stop")

    def url(self, database: str) -> str:
        """A DATABASE_URL for ``database`` on this server."""
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def execute(self, sql: str, database: str = "postgres") -> list[tuple[object, ...]]:
        """Run one statement with autocommit; return its rows."""
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True) as conn, conn.cursor() as cur:
            cur.execute(sql)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    def create_database(self) -> str:
        """Create a fresh database; return its name."""
        name = f"gw_{os.urandom(4).hex()}"
        self.execute(f"CREATE DATABASE {name}")
        return name


# --- Prometheus scrapes -----------------------------------------------------------------

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    """Every sample of a scrape by name and labels."""
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(scrape: Samples, name: str, **labels: str) -> float:
    return scrape.get((name, frozenset(labels.items())), 0.0)


# --- Django's admin ---------------------------------------------------------------------

@dataclasses.dataclass
class Account:
    username: str
    password: str


def csrf_token(page: str) -> str:
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert match, page[:2000]
    return match.group(1)
