"""``gateway serve``'s options with uvicorn's names and meanings (issue 11): each one on
uvicorn and on Granian, or refused under ``--server granian`` in one line.

Every server mounts a probe app of a few lines (written to the server's own directory
and imported from ``PYTHONPATH``) that answers what it was given: its process ID, its
``SCRIPT_NAME``, ``PATH_INFO``, URL scheme and client address, and the ``PROBE_*``
variables of its environment. ``?hold=NAME`` writes ``NAME.started`` in ``PROBE_DIR`` and
then waits for a ``release`` file there, so a test knows, without sleeping, that its
requests are being served.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.support import DEMO_MOUNTS, GATEWAY, ROOT, ServerProcess, free_port, server_env, until

pytestmark = pytest.mark.server

SERVERS = ["uvicorn", "granian"]
HSTS = "max-age=31536000; includeSubDomains"

PROBE = '''\
import json, os, time
from pathlib import Path

VERSION = 1


def app(environ, start_response):
    query = environ.get("QUERY_STRING", "")
    if query.startswith("hold="):
        folder = Path(os.environ["PROBE_DIR"])
        (folder / (query[5:] + ".started")).touch()
        deadline = time.monotonic() + 30
        while not (folder / "release").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    body = json.dumps({
        "pid": os.getpid(), "version": VERSION, "script_name": environ["SCRIPT_NAME"],
        "path_info": environ["PATH_INFO"], "scheme": environ["wsgi.url_scheme"],
        "remote_addr": environ.get("REMOTE_ADDR"),
        "env": {k: v for k, v in os.environ.items() if k.startswith("PROBE_") and k != "PROBE_DIR"},
    }).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
'''


class Served(ServerProcess):
    """``gateway serve`` as :class:`ServerProcess` runs it, reached over TCP, TLS or a Unix
    socket with its own client, and able to inherit file descriptors."""

    def __init__(self, args: list[str], *, env: dict[str, str], log_path: Path, base_url: str,
                 uds: Path | None = None, pass_fds: tuple[int, ...] = ()) -> None:
        self.port = 0
        self.url = base_url
        self.log_path = log_path
        self.uds = uds
        # A new connection for each request: an idle one would count against --limit-concurrency.
        transport = httpx.HTTPTransport(uds=str(uds) if uds is not None else None, verify=False,
                                        limits=httpx.Limits(max_keepalive_connections=0))
        self.client = httpx.Client(base_url=base_url, transport=transport, timeout=30)
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        try:
            self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                         start_new_session=True, pass_fds=pass_fds)
        except BaseException:
            self._log.close()
            raise
        self.wait_ready("/healthz")

    def wait_ready(self, path: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log}")
            try:
                if self.uds is not None:
                    self.raw_get(path)  # httpx leaves the socket of a refused connection open
                else:
                    self.client.get(path)
                return
            except (OSError, httpx.TransportError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not answer within {timeout} s:\n{self.log}")

    def raw_get(self, path: str) -> bytes:
        """GET ``path`` on the Unix socket; return the status line. The connection waits
        (up to 10 s) while the socket's queue is full, where httpx's would fail at once."""
        assert self.uds is not None
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 10, 0))
            conn.connect(str(self.uds))
            conn.settimeout(10)
            conn.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
            answer = b""
            while b"\r\n" not in answer and (chunk := conn.recv(4096)):
                answer += chunk
        if not answer.startswith(b"HTTP/1.1 "):
            raise OSError(f"no HTTP answer: {answer!r}")
        return answer.split(b"\r\n", 1)[0]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        self.client.close()
        return super().stop(sig, timeout)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data directory for the module's servers (migrated by the first)."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def serve(tmp_path: Path, data_dir: Path) -> Iterator[Callable[..., Served]]:
    """Start ``gateway serve --server SERVER --mount /p=probe:app ...``; stopped afterwards."""
    servers: list[Served] = []

    def start(server: str, *args: str, env: dict[str, str] | None = None, uds: Path | None = None,
              tls: bool = False, pass_fds: tuple[int, ...] = (), base_url: str | None = None,
              mount: bool = True) -> Served:
        (tmp_path / "probe.py").write_text(PROBE)
        command = [*GATEWAY, "serve", "--server", server, *([*DEMO_MOUNTS, "--mount", "/p=probe:app"] if mount else []),
                   *args]
        if uds is None and base_url is None:
            port = free_port()
            command += ["--port", str(port)]
            base_url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        environment = server_env(data_dir, PYTHONPATH=str(tmp_path), PROBE_DIR=str(tmp_path), **(env or {}))
        started = Served(command, env=environment, log_path=tmp_path / f"server-{len(servers)}.log",
                         base_url=base_url or "http://localhost", uds=uds, pass_fds=pass_fds)
        servers.append(started)
        return started

    yield start
    for server in servers:
        server.stop()


def gateway_serve(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT,
                  tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run ``gateway serve ARGS`` to its end (a refusal)."""
    return subprocess.run([*GATEWAY, "serve", *args], cwd=cwd, env=server_env(tmp_path, **(env or {})),
                          capture_output=True, text=True, timeout=60)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gateway: error: "), result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    return lines[0]


def wait_until(condition: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    """Wait for ``condition`` to hold (an event in another process), or fail saying ``what``."""
    until(condition, timeout, f"{what} did not happen within {timeout} s", interval=0.05)


def hold(gateway: Served, folder: Path, count: int) -> tuple[list[Future[httpx.Response]], Callable[[], None]]:
    """Send ``count`` requests at once that the probe holds; once all of them are in the
    app, return their futures and a function that lets them finish."""
    pool = ThreadPoolExecutor(count)
    held = [pool.submit(gateway.client.get, f"/p/?hold=held{i}") for i in range(count)]

    def in_app() -> bool:
        for future in held:
            if future.done():  # answered without being held: fail now, saying how
                raise AssertionError(f"a request meant to be held was answered {future.result().status_code}")
        return all((folder / f"held{i}.started").exists() for i in range(count))

    def release() -> None:
        (folder / "release").touch()
        pool.shutdown()

    try:
        wait_until(in_app, f"{count} held requests")
    except BaseException:
        release()
        raise
    return held, release


def stopped(pgid: int) -> bool:
    """Whether every thread of every process in the process group ``pgid`` is stopped."""
    states = []
    for proc in Path("/proc").iterdir():
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            if not proc.name.isdigit() or int(fields[2]) != pgid:
                continue
            states += [(task / "stat").read_text().rsplit(")", 1)[1].split()[0]
                       for task in (proc / "task").iterdir()]
        except (OSError, IndexError):
            continue  # not a process, or gone
    states = [state for state in states if state not in {"Z", "X"}]  # exited, not yet reaped
    return bool(states) and all(state == "T" for state in states)


def queued_connections(path: Path) -> int:
    """How many connections the Unix socket at ``path`` takes before the kernel refuses one
    (nobody accepts: its backlog, and one more)."""
    connections: list[socket.socket] = []
    try:
        while len(connections) < 5000:
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.setblocking(False)
            try:
                conn.connect(str(path))
            except BlockingIOError:
                conn.close()
                break
            connections.append(conn)
        return len(connections)
    finally:
        for conn in connections:
            conn.close()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key (openssl)."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


# --uds, --backlog


@pytest.mark.parametrize(("server", "workers", "backlog", "log_format"),
                         [("uvicorn", "1", 5, "text"), ("uvicorn", "2", 5, "json"), ("granian", "2", 150, "text")])
def test_uds_serves_on_a_unix_socket_with_its_backlog(serve, tmp_path_factory, server: str, workers: str,  # type: ignore[no-untyped-def]
                                                      backlog: int, log_format: str) -> None:
    path = tmp_path_factory.mktemp("uds") / "gw.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))  # the file of a server that was killed: nothing listens on it
    stale.close()
    gateway = serve(server, "--uds", str(path), "--workers", workers, "--backlog", str(backlog),
                    "--log-format", log_format, uds=path)

    assert stat.S_IMODE(path.stat().st_mode) == 0o666  # as uvicorn's: any local user may connect
    probe = gateway.client.get("/p/x").json()
    assert (probe["script_name"], probe["path_info"]) == ("/p", "/x")
    banner = gateway.log.splitlines()[0]
    assert f"on unix:{path}" in banner
    if log_format == "json":
        assert json.loads(banner)["listen"] == f"unix:{path}"

    # Nobody accepting (the server stopped), the kernel queues the backlog's connections.
    os.killpg(gateway.proc.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: stopped(gateway.proc.pid), "SIGSTOP")
        queued = queued_connections(path)
    finally:
        os.killpg(gateway.proc.pid, signal.SIGCONT)
    assert backlog <= queued <= backlog + 1  # Linux takes one more than the backlog
    # Resumed, it accepts (and drops) the queued connections, then this one, behind them.
    assert gateway.raw_get("/healthz") == b"HTTP/1.1 200 OK"
    assert gateway.client.get("/healthz").status_code == 200

    # A second server on the same path is refused in one line.
    taken = gateway_serve("--server", server, "--uds", str(path), tmp_path=path.parent)
    assert taken.returncode == 1
    assert one_line(taken) == f"gateway: error: Unix socket {path} is already in use; pick another with --uds."

    assert gateway.stop() == 0
    assert not path.exists()  # removed on the way out


# --fd


@pytest.mark.parametrize("workers", ["1", "2"])
def test_fd_serves_an_inherited_socket(serve, workers: str) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))  # bound, not listening yet: the gateway listens on it
        port = listener.getsockname()[1]
        gateway = serve("uvicorn", "--fd", str(listener.fileno()), "--workers", workers,
                        pass_fds=(listener.fileno(),), base_url=f"http://127.0.0.1:{port}")
        assert gateway.client.get("/p/x").json()["path_info"] == "/x"
        assert f"/p        http://127.0.0.1:{port}/p/  (WSGI app)" in gateway.log
        assert gateway.stop() == 0


def test_fd_that_is_not_a_socket_is_one_line(tmp_path: Path) -> None:
    with open(tmp_path / "file", "w") as f:
        fd = f.fileno()
        result = subprocess.run([*GATEWAY, "serve", "--fd", str(fd)], cwd=ROOT, env=server_env(tmp_path),
                                capture_output=True, text=True, timeout=60, pass_fds=(fd,))
    assert result.returncode == 1
    assert one_line(result) == f"gateway: error: File descriptor {fd} is not a socket; --fd takes a listening socket."


# --root-path


@pytest.mark.parametrize("server", SERVERS)
def test_root_path_is_where_the_apps_say_they_are(serve, server: str) -> None:  # type: ignore[no-untyped-def]
    gateway = serve(server, "--root-path", "/apps/")  # a trailing slash is dropped
    # The proxy in front strips /apps: requests arrive without it, as under uvicorn.
    probe = gateway.client.get("/p/x").json()
    assert (probe["script_name"], probe["path_info"]) == ("/apps/p", "/x")
    assert gateway.client.get("/flask").headers["location"] == "/apps/flask/"
    assert gateway.client.get("/django/admin/").headers["location"] == (
        "/apps/django/admin/login/?next=/apps/django/admin/")
    assert "under root path /apps" in gateway.log.splitlines()[0]


# --ssl-certfile, --ssl-keyfile


@pytest.mark.parametrize(("server", "workers"), [("uvicorn", "1"), ("uvicorn", "2"), ("granian", "1")])
def test_tls_from_the_gateway_is_https_to_the_apps(serve, certificate, server: str, workers: str) -> None:  # type: ignore[no-untyped-def]
    cert, key = certificate
    gateway = serve(server, "--ssl-certfile", str(cert), "--ssl-keyfile", str(key), "--workers", workers,
                    tls=True, env={"GATEWAY_HTTPS": "1"})
    response = gateway.client.get("/p/x")
    assert response.json()["scheme"] == "https"
    assert response.headers["strict-transport-security"] == HSTS  # GATEWAY_HTTPS=1 and an https request
    # Django sees https: its login page answers (no redirect to https), its cookie is Secure.
    login = gateway.client.get("/django/admin/login/")
    assert login.status_code == 200
    assert "secure" in login.headers["set-cookie"].lower()
    flask = gateway.client.get("/flask/?name=Ada")
    assert flask.status_code == 200 and "secure" in flask.headers["set-cookie"].lower()
    assert f"https://127.0.0.1:{gateway.url.rsplit(':', 1)[1]}/flask/" in gateway.log


# --env-file


@pytest.mark.parametrize("server", SERVERS)
def test_env_file_configures_the_gateway_and_the_apps(serve, tmp_path, server: str) -> None:  # type: ignore[no-untyped-def]
    env_file = tmp_path / "gateway.env"
    env_file.write_text(
        "# read before the configuration is built, as uvicorn's --env-file\n"
        "GATEWAY_MOUNTS=/flask=flask_hello:app /django=django_hello.wsgi:application /p=probe:app\n"  # --mount's
        "GATEWAY_ALLOWED_HOSTS=a.test,b.test,127.0.0.1\n"
        "DJANGO_ALLOWED_HOSTS=a.test,127.0.0.1\n"  # Django's own, narrower: reaches Django as is
        "PROBE_FROM_FILE=file\n"
        "PROBE_KEPT=file\n"  # already in the environment, which wins
    )
    gateway = serve(server, "--env-file", str(env_file), mount=False, env={"PROBE_KEPT": "environment"})
    assert gateway.client.get("/p/").json()["env"] == {"PROBE_FROM_FILE": "file", "PROBE_KEPT": "environment"}
    assert gateway.client.get("/django/", headers={"Host": "a.test"}).status_code == 200
    refused_by_django = gateway.client.get("/django/", headers={"Host": "b.test"})
    refused_by_gateway = gateway.client.get("/django/", headers={"Host": "c.test"})
    assert refused_by_django.status_code == 400 and "Host header" not in refused_by_django.text
    assert refused_by_gateway.status_code == 400 and "the Host header is" in refused_by_gateway.text


# --limit-concurrency


def test_limit_concurrency_answers_503_past_n(serve, tmp_path) -> None:  # type: ignore[no-untyped-def]
    gateway = serve("uvicorn", "--limit-concurrency", "2")
    held, release = hold(gateway, tmp_path, 2)  # N at once are served...
    try:
        past = gateway.client.get("/p/")
    finally:
        release()
    assert past.status_code == 503  # ...and the next is not
    assert [future.result().status_code for future in held] == [200, 200]
    assert gateway.client.get("/p/").status_code == 200


# --limit-max-requests, --limit-max-requests-jitter


def test_limit_max_requests_replaces_the_worker(serve, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # One worker: it runs under uvicorn's supervisor, which starts a new one when it exits.
    gateway = serve("uvicorn", "--workers", "1", "--limit-max-requests", "2", "--limit-max-requests-jitter", "3")
    # uvicorn counts a request when its response is complete: 4 held at once count together
    # when released, with the readiness check 5, the most the worker can draw (2 + 0..3).
    held, release = hold(gateway, tmp_path, 4)
    release()
    responses = [future.result() for future in held]
    assert [r.status_code for r in responses] == [200] * 4
    pids = {r.json()["pid"] for r in responses}
    assert len(pids) == 1
    first = pids.pop()
    log = gateway.wait_for(f"Child process [{first}] died")
    limit = int(re.search(r"Maximum request limit of (\d+) exceeded", log).group(1))  # type: ignore[union-attr]
    assert 2 <= limit <= 5
    after = gateway.client.get("/p/")  # waits in the backlog for the new worker
    assert after.status_code == 200 and after.json()["pid"] != first


# --reload-dir, and what --reload watches


@pytest.mark.parametrize("server", SERVERS)
def test_reload_watches_the_mounted_apps_and_reload_dirs(serve, tmp_path, tmp_path_factory,  # type: ignore[no-untyped-def]
                                                         server: str) -> None:
    extra = tmp_path_factory.mktemp("templates-elsewhere")  # not under the probe's directory
    gateway = serve(server, "--reload", "--reload-dir", str(extra))
    assert gateway.client.get("/p/").json()["version"] == 1

    def probe() -> dict[str, object] | None:
        try:
            return gateway.client.get("/p/").json()  # type: ignore[no-any-return]
        except httpx.TransportError:
            return None  # between two workers

    # The mounted app's own module (imported from PYTHONPATH, outside the project).
    (tmp_path / "probe.py").write_text(PROBE.replace("VERSION = 1", "VERSION = 2"))
    wait_until(lambda: (p := probe()) is not None and p["version"] == 2, "a reload for the app's code")
    pid = probe()["pid"]  # type: ignore[index]
    # A template in a --reload-dir; a database file beside it is not watched.
    (extra / "data.sqlite3").write_bytes(b"not code")
    (extra / "page.html").write_text("<p>changed</p>")
    wait_until(lambda: (p := probe()) is not None and p["pid"] != pid, "a reload for the template")
    assert "page.html" in gateway.log and "data.sqlite3" not in gateway.log


# --trusted-proxies, --allowed-hosts


@pytest.mark.parametrize("server", SERVERS)
def test_trusted_proxies_and_allowed_hosts_options_win_over_variables(serve, server: str) -> None:  # type: ignore[no-untyped-def]
    gateway = serve(server, "--workers", "2", "--trusted-proxies", "127.0.0.1", "--allowed-hosts", "a.test,.b.test",
                    env={"GATEWAY_TRUSTED_PROXIES": "10.0.0.0/8", "GATEWAY_ALLOWED_HOSTS": "z.test"})
    forwarded = {"Host": "a.test", "X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
    probe = gateway.client.get("/p/", headers=forwarded).json()
    assert (probe["remote_addr"], probe["scheme"]) == ("203.0.113.9", "https")
    assert gateway.client.get("/django/", headers={"Host": "www.b.test"}).status_code == 200  # Django's too
    assert gateway.client.get("/p/", headers={"Host": "z.test"}).status_code == 400
    assert gateway.client.get("/p/", headers={"Host": "127.0.0.1"}).status_code == 400


# Refusals: one line each, before anything starts.


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--server", "granian", "--fd", "3"], "--fd works on uvicorn only: Granian binds its own socket",
                     id="granian-fd"),
        pytest.param(["--server", "granian", "--limit-concurrency", "10"],
                     "--limit-concurrency works on uvicorn only: Granian makes the requests past its backpressure "
                     "wait", id="granian-limit-concurrency"),
        pytest.param(["--server", "granian", "--limit-max-requests", "1000"],
                     "--limit-max-requests works on uvicorn only: Granian replaces workers by age",
                     id="granian-limit-max-requests"),
        pytest.param(["--server", "granian", "--backlog", "64"], "--backlog 64 is below Granian's least, 128",
                     id="granian-backlog"),
        pytest.param(["--server", "granian", "--ssl-certfile", "CERT"], "--ssl-certfile needs --ssl-keyfile under "
                     "Granian", id="granian-cert-alone"),
        pytest.param(["--uds", "/tmp/x.sock", "--fd", "3"], "--uds and --fd each name the socket to serve on",
                     id="uds-and-fd"),
        pytest.param(["--ssl-keyfile", "KEY"], "--ssl-keyfile needs --ssl-certfile", id="key-alone"),
        pytest.param(["--limit-max-requests-jitter", "5"], "--limit-max-requests-jitter adds to --limit-max-requests",
                     id="jitter-alone"),
        pytest.param(["--reload", "--limit-max-requests", "100"], "--limit-max-requests replaces workers, which "
                     "--reload does not do", id="max-requests-reload"),
        pytest.param(["--reload-dir", "."], "--reload-dir says what --reload watches: add --reload", id="reload-dir"),
        pytest.param(["--root-path", "apps"], '--root-path "apps" must be a URL path starting with "/"',
                     id="root-path"),
        pytest.param(["--trusted-proxies", "10.0.0.0/8,proxy.local"], '--trusted-proxies item "proxy.local" must be '
                     "an IP address or network, e.g. 10.0.0.0/8.", id="trusted-proxies"),
        pytest.param(["--env-file", "no-such.env"], "Invalid value for '--env-file': File 'no-such.env' does not "
                     "exist.", id="env-file-missing"),
    ],
)
def test_refused_in_one_line(tmp_path, certificate, args: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    cert, key = certificate
    args = [str(cert) if a == "CERT" else str(key) if a == "KEY" else a for a in args]
    result = gateway_serve(*args, tmp_path=tmp_path)
    assert result.returncode == 2
    assert message in one_line(result)


def test_a_key_that_is_not_the_certificates_is_one_line(tmp_path, certificate) -> None:  # type: ignore[no-untyped-def]
    cert, _ = certificate
    other = tmp_path / "other.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-out", str(other)], check=True, capture_output=True,
                   timeout=60)
    result = gateway_serve("--ssl-certfile", str(cert), "--ssl-keyfile", str(other), tmp_path=tmp_path)
    assert result.returncode == 1
    assert one_line(result) == (f"gateway: error: Cannot serve TLS with {cert} and {other}: the key is not the "
                                "certificate's.")


def test_granian_starts_without_its_warning_about_the_threads(tmp_path: Path) -> None:
    """The gateway's 100 threads are on purpose (views that wait): Granian's notice about
    them is dropped, and only it."""
    port = free_port()
    server = ServerProcess([*GATEWAY, "serve", "--server", "granian", "--port", str(port)], port=port,
                           env=server_env(tmp_path), log_path=tmp_path / "granian.log")
    try:
        assert "Starting granian" in server.log and "Listening at" in server.log
        assert "Python threads" not in server.log
    finally:
        server.stop()
