"""Fixtures: the gateway in process (WSGI and ASGI) and as a real server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# The in-process apps read their settings when first imported: point them at a data
# directory of their own before anything imports Django.
_DATA_DIR = tempfile.mkdtemp(prefix="gateway-tests-")
os.environ["GATEWAY_DATA_DIR"] = _DATA_DIR
for _name in ("DJANGO_DATA_DIR", "DJANGO_ALLOWED_HOSTS", "FLASK_TRUSTED_HOSTS", "FLASK_SECRET_KEY",
              "DATABASE_URL", "GATEWAY_MOUNTS", "SCRIPT_NAME"):
    os.environ.pop(_name, None)

ROOT = Path(__file__).resolve().parent.parent
GATEWAY = [sys.executable, "-m", "gateway"]


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A server started as a subprocess on loopback, its output kept in a log file."""

    def __init__(self, args: list[str], *, port: int, env: dict[str, str], log_path: Path,
                 ready_path: str = "/") -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.wait_ready(ready_path)

    def wait_ready(self, path: str, timeout: float = 60.0) -> None:
        """Wait until ``path`` answers, or fail with the server's log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log}")
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


@pytest.fixture
def start_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., ServerProcess]]:
    """Start ``gateway serve`` with extra arguments; every server is stopped afterwards."""
    servers: list[ServerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None, data_dir: Path | None = None,
              ready_path: str = "/") -> ServerProcess:
        port = free_port()
        directory = data_dir or tmp_path_factory.mktemp("data")
        server = ServerProcess(
            [*GATEWAY, "serve", "--port", str(port), *args],
            port=port, env=server_env(directory, **(env or {})),
            log_path=directory / f"server-{port}.log", ready_path=ready_path,
        )
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def gateway_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One ``gateway serve`` (uvicorn) shared by the tests that only read."""
    directory = tmp_path_factory.mktemp("served")
    port = free_port()
    server = ServerProcess(
        [*GATEWAY, "serve", "--port", str(port)], port=port, env=server_env(directory),
        log_path=directory / "server.log",
    )
    yield server
    server.stop()


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


@pytest.fixture(scope="session")
def gunicorn_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """``gateway.wsgi:application`` under gunicorn (gthread)."""
    yield from wsgi_server(tmp_path_factory, "gunicorn", lambda port: [
        sys.executable, "-m", "gunicorn", "gateway.wsgi:application", "--bind", f"127.0.0.1:{port}",
        "--worker-class", "gthread", "--threads", "16", "--graceful-timeout", "5"])


@pytest.fixture(scope="session")
def werkzeug_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """``gateway.wsgi:application`` unchanged under Werkzeug's development server."""
    code = ("import sys; from werkzeug.serving import run_simple; import gateway.wsgi as w; "
            "run_simple('127.0.0.1', int(sys.argv[1]), w.application, threaded=True)")
    yield from wsgi_server(tmp_path_factory, "werkzeug", lambda port: [sys.executable, "-c", code, str(port)])


@pytest.fixture(scope="session")
def table():  # type: ignore[no-untyped-def]
    """The default mount table, loaded in this process, on a migrated database."""
    from django.core.management import call_command

    from gateway.config import Config
    from gateway.wsgi import load_table

    loaded = load_table(Config.from_env())
    call_command("migrate", interactive=False, verbosity=0)
    return loaded


@pytest.fixture(scope="session")
def wsgi_app(table):  # type: ignore[no-untyped-def]
    """``gateway.wsgi``'s app over the default mounts."""
    from gateway.wsgi import create_wsgi_app

    return create_wsgi_app(table)


@pytest.fixture
def wsgi_client(wsgi_app):  # type: ignore[no-untyped-def]
    """Werkzeug's test client on the WSGI gateway; responses are read whole and closed."""
    from werkzeug.test import Client

    class BufferedClient(Client):
        def open(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            kwargs.setdefault("buffered", True)
            return super().open(*args, **kwargs)

    return BufferedClient(wsgi_app)


@pytest.fixture(scope="session")
def asgi_app(table):  # type: ignore[no-untyped-def]
    """``gateway.asgi``'s app over the default mounts."""
    from gateway.asgi import create_asgi_app

    app = create_asgi_app(table, threads=16)
    yield app
    app.executor.shutdown(wait=True)


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


@pytest.fixture
def asgi_client(asgi_app) -> SyncASGIClient:  # type: ignore[no-untyped-def]
    """A synchronous httpx client on the ASGI gateway."""
    return SyncASGIClient(asgi_app)


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


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """A private PostgreSQL server, started from Debian's binaries; skipped without them."""
    import glob
    import shutil

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.skip("no PostgreSQL server binaries (initdb) under /usr/lib/postgresql: apt-get install postgresql")
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'psycopg[binary]')")
    root = Path(tempfile.mkdtemp(prefix="gateway-pg-", dir="/tmp"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    cluster = PostgresCluster(Path(found[-1]).parent, root)
    yield cluster
    with contextlib.suppress(subprocess.CalledProcessError):  # a test may have stopped it
        cluster.stop()
    shutil.rmtree(root, ignore_errors=True)
