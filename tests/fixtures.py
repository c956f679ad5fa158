"""Fixtures (a pytest plugin, registered by ``tests/conftest.py``): the gateway in process
(WSGI and ASGI) and as a real server, an admin account of its own; and the guards that fail
a test not marked ``server`` when it starts a subprocess, and a unit test when it opens a
socket."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import (
    GATEWAY,
    Account,
    PostgresCluster,
    ServerProcess,
    SyncASGIClient,
    free_port,
    server_env,
    wsgi_server,
)


@contextlib.contextmanager
def _refuse_subprocesses() -> Iterator[None]:
    """Make ``subprocess.Popen`` (and so ``subprocess.run``) fail the test instead of starting anything."""

    def refuse(self: subprocess.Popen[bytes], args: object, *rest: object, **options: object) -> None:
        __tracebackhide__ = True
        pytest.fail(f"this test starts a subprocess: mark it with @pytest.mark.server (it ran {args!r})")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(subprocess.Popen, "__init__", refuse)
        yield


@contextlib.contextmanager
def _refuse_sockets() -> Iterator[None]:
    """Make connecting or binding a socket fail the test (a unit test opens none; asyncio's
    own socket pair is made without either)."""

    def refuse(self: socket.socket, address: object, *rest: object) -> None:
        __tracebackhide__ = True
        pytest.fail(f"this unit test opens a socket ({address!r}): move it to tests/integration or tests/system")

    with pytest.MonkeyPatch.context() as patch:
        for name in ("connect", "connect_ex", "bind"):
            patch.setattr(socket.socket, name, refuse)
        yield


@contextlib.contextmanager
def _guarded(item: pytest.Item) -> Iterator[None]:
    """A test not marked ``server`` starts no subprocess; a unit test opens no socket either."""
    with contextlib.ExitStack() as stack:
        if not item.get_closest_marker("server"):
            stack.enter_context(_refuse_subprocesses())
        if item.get_closest_marker("unit"):
            stack.enter_context(_refuse_sockets())
        yield


# The guards wrap the setup and call phases rather than being an autouse fixture: a function-scoped
# fixture runs after the session- and module-scoped ones (gateway_server, postgres, ...), so it
# would miss the subprocesses they start. Teardown is left alone: a session fixture that runs a
# command to stop (postgres) is torn down after whichever test happens to be its last user.
@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    with _guarded(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    with _guarded(item):
        return (yield)


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

    from gateway.core.config import Config
    from gateway.serve.builder import load_table

    loaded = load_table(Config.from_env())
    call_command("migrate", interactive=False, verbosity=0)
    return loaded


@pytest.fixture(scope="session")
def wsgi_app(table):  # type: ignore[no-untyped-def]
    """``gateway.wsgi``'s app over the default mounts."""
    from gateway.adapters.wsgi import create_wsgi_app
    from gateway.core.config import Config

    return create_wsgi_app(table, Config.from_env())


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
    from gateway.adapters.asgi import create_asgi_app
    from gateway.core.config import Config

    app = create_asgi_app(table, Config.from_env(), threads=16)
    yield app
    app.executor.shutdown(wait=True)


@pytest.fixture
def asgi_client(asgi_app) -> SyncASGIClient:  # type: ignore[no-untyped-def]
    """A synchronous httpx client on the ASGI gateway."""
    return SyncASGIClient(asgi_app)


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


@pytest.fixture
def pg_url(postgres: PostgresCluster) -> Iterator[str]:
    """A database of its own on the private PostgreSQL server, dropped at the end."""
    name = postgres.create_database()
    yield postgres.url(name)
    postgres.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def fast_hashes(table) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """Django's MD5 hasher, as Django advises for tests (PBKDF2 takes about 0.3 s a password here)."""
    from django.test import override_settings

    with override_settings(PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"]):
        yield


@pytest.fixture
def account(fast_hashes: None) -> Iterator[Account]:
    """A superuser of its own; its users, attempts and access logs are removed afterwards."""
    from axes.models import AccessAttempt, AccessLog
    from django.contrib.auth import get_user_model

    user = Account(f"admin-{uuid.uuid4().hex[:10]}", secrets.token_urlsafe(16))
    get_user_model().objects.create_superuser(user.username, f"{user.username}@example.com", user.password)
    yield user
    get_user_model().objects.filter(username=user.username).delete()
    AccessAttempt.objects.filter(username=user.username).delete()
    AccessLog.objects.filter(username=user.username).delete()
