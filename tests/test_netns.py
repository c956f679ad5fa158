"""The deployment on several machines, each a Linux network namespace (issue 13).

``tests/test_deploy.py`` runs everything on 127.0.0.1, where a stopped process refuses
connections at once and every local process is "the proxy". Here each part has a host of
its own, on one LAN (a bridge) with addresses from 198.18.0.0/15 (``tests/netns.py``):

====== ===================================================================================
client wrk and the test's own clients (threads that entered the host's namespace)
proxy  nginx with ``deploy/nginx.conf`` and ``deploy/snippets`` as they are, TLS on 443 for
       example.com (a throwaway certificate); only the upstreams' addresses and the files
       nginx writes (pid, logs) differ
app1   ``gateway serve --workers 2`` on port 8001, as ``deploy/gateway.service`` runs it, with
       ``deploy/gateway.env.example``'s settings (production, HTTPS, JSON logs,
       ``DJANGO_CONN_MAX_AGE=60``) and ``GATEWAY_TRUSTED_PROXIES`` = the proxy's address
app2   the same on port 8002
db     PostgreSQL (initdb), on its own address, a database and a role of its own
cache  redis-server: Django's cache and ``cached_db`` sessions (``REDIS_URL``)
====== ===================================================================================

A host vanishes when the switch's end of its cable goes down (``ip link set ... down``):
its processes keep running, and what is sent to it is never answered. Each test puts the
cable back in a ``finally``; the module's fixture stops every process and deletes every
namespace and link it made, also when a test fails, and removes what a run killed before
its finalizers left behind. Without permission for ``ip netns``, the tests skip with
``ip``'s reason.

Run with ``-s`` or not: the figures are printed to the terminal either way (capture is
bypassed for them). About 90 s in all; the slow-link test skips where the kernel has no
``netem``.
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import re
import secrets
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.core.config import DEFAULT_READY_TIMEOUT
from tests.netns import Lan, remove_leftovers
from tests.support import DEMO_MOUNTS, GATEWAY, ROOT, PostgresCluster, ServerProcess, server_env

NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
WRK = shutil.which("wrk")
REDIS = shutil.which("redis-server")
OPENSSL = shutil.which("openssl")
INITDB = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
DEPLOY = ROOT / "deploy"

HOSTS = ("client", "proxy", "app1", "app2", "db", "cache")
INSTANCES = {"app1": 8001, "app2": 8002}  # deploy/nginx.conf's upstream ports, each on a host of its own
SITE = "example.com"  # deploy/nginx.conf's server_name
ALSO_ALLOWED = "www.example.com"  # allowed too, so that a forged X-Forwarded-Host would show, not 400
ADMIN, PASSWORD = "admin", "correct horse battery staple 42"
DB_NAME, DB_USER, DB_PASSWORD = "gateway", "gateway", secrets.token_urlsafe(16)
# deploy/gateway.service's ExecStart, with the host's own address.
SERVE_ARGS = ("--workers", "2", "--threads", "16", "--graceful-timeout", "25", "--drain-delay", "5")
WORKERS = 2
GREETINGS = "/apps/django/admin/django_hello/greeting/"
FORGED = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https", "X-Forwarded-Host": ALSO_ALLOWED,
          "X-Forwarded-Prefix": "/forged", "Host": SITE}

# Seconds app1 stays unplugged: longer than fail_timeout (5 s), uvicorn's keep-alive (5 s) and
# proxy_next_upstream_timeout (10 s), and shorter than proxy_read_timeout (60 s).
APP_CUT = 12.0
DB_CUT = 10.0  # the 10 s
CACHE_CUT = 8.0
RECOVERY = 5.0  # everything answers again within 5 s of the cable's return
CACHE_PATIENCE = 5.0  # a page while the cache is away answers within this
CACHE_RETURN = 10.0  # sessions are written to Redis again within this of its return
NETEM_DELAY = "100ms"
DB_PAGES = ("/apps/django/admin/", GREETINGS, "/apps/flask/greetings")  # pages that need the database


def skip_reasons() -> list[str]:
    reasons = [f"no {name}" for name, found in (("nginx", NGINX), ("wrk", WRK), ("redis-server", REDIS),
                                                ("openssl", OPENSSL), ("PostgreSQL's initdb", INITDB)) if not found]
    try:
        import psycopg  # noqa: F401
        import redis  # noqa: F401
    except ImportError as exc:
        reasons.append(f"psycopg and redis are needed (pip install -e '.[test]'): {exc}")
    return reasons


pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(bool(skip_reasons()), reason="; ".join(skip_reasons())),
]


# ---------------------------------------------------------------------------- services


class NetnsPostgres(PostgresCluster):
    """support.PostgresCluster with its server in the ``db`` host, listening on that host's address.

    The apps connect over the LAN with a password (``scram-sha-256``, from their addresses
    only); the test over the Unix socket, which no namespace hides.
    """

    def __init__(self, lan: Lan, bindir: Path, root: Path, clients: list[str]) -> None:
        self.lan = lan
        self.clients = clients
        super().__init__(bindir, root)

    def start(self) -> None:
        self.port = 5432
        hba = self.datadir / "pg_hba.conf"
        lines = "".join(f"host all all {address}/32 scram-sha-256\n" for address in self.clients)
        if lines not in hba.read_text():
            hba.write_text(hba.read_text() + lines)
        options = (f"-p {self.port} -k {self.root} -c listen_addresses={self.lan.address['db']} -c fsync=off "
                   "-c max_connections=200")
        subprocess.run([*self.lan.exec_args("db"), *self.as_user, str(self.bindir / "pg_ctl"), "-D",
                        str(self.datadir), "-o", options, "-l", str(self.log_path), "-w", "start"],
                       check=True, capture_output=True, timeout=120)

    def url(self, database: str) -> str:
        """The test's own URL: the Unix socket."""
        return f"postgresql://postgres@/{database}?host={self.root}&port={self.port}"

    def lan_url(self) -> str:
        return f"postgres://{DB_USER}:{DB_PASSWORD}@{self.lan.address['db']}:{self.port}/{DB_NAME}"

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """Stop the server: fast, else immediate, else SIGKILL to the postmaster."""
        pidfile = self.datadir / "postmaster.pid"
        for mode in ("fast", "immediate"):
            if not pidfile.exists():
                return
            with contextlib.suppress(subprocess.SubprocessError):
                subprocess.run([*self.as_user, str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", mode,
                                "-w", "-t", "10", "stop"], capture_output=True, timeout=20)
        if pidfile.exists():
            with contextlib.suppress(ValueError, ProcessLookupError, OSError):
                os.kill(int(pidfile.read_text().split()[0]), signal.SIGKILL)


class Redis:
    """redis-server in the ``cache`` host: on its address for the apps, a Unix socket for the test."""

    def __init__(self, lan: Lan, root: Path) -> None:
        self.socket = root / "redis.sock"
        self.log_path = root / "redis.log"
        self.address = lan.address["cache"]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*lan.exec_args("cache"), str(REDIS), "--bind", self.address, "--port", "6379", "--unixsocket",
             str(self.socket), "--unixsocketperm", "700", "--save", "", "--appendonly", "no", "--dir", str(root),
             "--protected-mode", "no"], stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(self._pings, 15, lambda: f"redis did not start:\n{self.log}")

    def client(self) -> Any:
        import redis

        return redis.Redis(unix_socket_path=str(self.socket), socket_timeout=5)

    def _pings(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"redis exited with {self.proc.returncode}:\n{self.log}")
        try:
            with contextlib.closing(self.client()) as r:
                return bool(r.ping())
        except Exception:
            return False

    def has_session(self, session_key: str) -> bool:
        with contextlib.closing(self.client()) as r:
            return any(True for _ in r.scan_iter(match=f"*{session_key}", count=1000))

    @property
    def url(self) -> str:
        return f"redis://{self.address}:6379/0"

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class Nginx:
    """nginx in the ``proxy`` host with deploy/nginx.conf and deploy/snippets, as they are
    but for the upstreams' addresses and the files nginx writes (pid, logs)."""

    CHANGES = (
        ("server 127.0.0.1:8001 ", "server {app1}:8001 "),
        ("server 127.0.0.1:8002 ", "server {app2}:8002 "),
        ("pid /run/nginx.pid;", "pid {prefix}/nginx.pid;"),
        ("error_log /var/log/nginx/error.log warn;", "error_log {prefix}/error.log warn;"),
        ("access_log /var/log/nginx/gateway.access.log gateway;", "access_log {prefix}/access.log gateway;"),
    )

    def __init__(self, lan: Lan, prefix: Path) -> None:
        self.lan = lan
        self.prefix = prefix
        prefix.mkdir(mode=0o755)
        text = (DEPLOY / "nginx.conf").read_text()
        values = {"app1": lan.address["app1"], "app2": lan.address["app2"], "prefix": str(prefix)}
        for old, new in self.CHANGES:
            assert text.count(old) == 1, f"deploy/nginx.conf no longer has {old!r} once; update this test"
            text = text.replace(old, new.format(**values))
        self.conf = prefix / "nginx.conf"
        self.conf.write_text(text)
        shutil.copytree(DEPLOY / "snippets", prefix / "snippets")
        (prefix / "tls").mkdir()
        subprocess.run([str(OPENSSL), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                        f"/CN={SITE}", "-addext", f"subjectAltName=DNS:{SITE},DNS:{ALSO_ALLOWED}",
                        "-keyout", str(prefix / "tls/gateway.key"), "-out", str(prefix / "tls/gateway.crt")],
                       check=True, capture_output=True, timeout=60)
        (prefix / "tls/gateway.key").chmod(0o600)
        self.pid: int | None = None

    def setting(self, name: str) -> str:
        """A directive's value in the copied files (http level or the upstream's server line)."""
        text = self.conf.read_text() + (self.prefix / "snippets/gateway-proxy.conf").read_text()
        if name in ("max_fails", "fail_timeout"):
            match = re.search(rf"server \S+:8001 [^;]*\b{name}=(\S+?)[\s;]", text)
        else:
            match = re.search(rf"^\s*{name}\s+([^;]+);", text, re.M)
        assert match, f"{name} is not set in deploy/nginx.conf or its snippets; update this test"
        return match.group(1)

    def seconds(self, name: str) -> float:
        """A time directive in seconds (``0`` stays 0: no limit, for proxy_next_upstream_timeout)."""
        value = self.setting(name)
        match = re.fullmatch(r"(\d+)(ms|s|m)?", value)
        assert match, f"{name} {value}: not a time this test reads"
        return int(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60, None: 1}[match.group(2)]

    def start(self) -> None:
        self._run("-t")
        self._run()
        self.pid = int((self.prefix / "nginx.pid").read_text())

    def _run(self, *args: str) -> None:
        result = subprocess.run([*self.lan.exec_args("proxy"), str(NGINX), "-e", "stderr", "-p", f"{self.prefix}/",
                                 "-c", str(self.conf), *args], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, f"nginx {' '.join(args)} failed:\n{result.stderr}"

    @property
    def access_log(self) -> list[str]:
        path = self.prefix / "access.log"
        return path.read_text(errors="replace").splitlines() if path.exists() else []

    @property
    def error_log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        pid = self.pid
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)  # nginx's fast shutdown
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class Instance(ServerProcess):
    """``gateway serve`` in an app host, on that host's address; ready when /readyz answers
    200 to a client on the LAN."""

    def __init__(self, lan: Lan, host: str, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.lan = lan
        self.host = host
        self.address = lan.address[host]
        port = INSTANCES[host]
        super().__init__([*lan.exec_args(host), *args, "--host", self.address, "--port", str(port)], port=port,
                         env=env, log_path=log_path, ready_path="/readyz")
        self.url = f"http://{self.address}:{port}"

    def wait_ready(self, path: str, timeout: float = 60.0) -> None:
        url = f"http://{self.address}:{self.port}{path}"

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.host}: gateway exited with {self.proc.returncode}:\n{self.log}")
            try:
                return self.lan.on("client", httpx.get, url, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout, lambda: f"{self.host}: /readyz did not answer 200 within {timeout} s:\n{self.log}")

    def records(self) -> list[dict[str, Any]]:
        """The JSON log records written so far."""
        out = []
        for line in self.log.splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def problems(self, since: int) -> list[dict[str, Any]]:
        """WARNING and worse records after the first ``since`` records."""
        return [r for r in self.records()[since:] if r.get("level") in {"WARNING", "ERROR", "CRITICAL"}]


# ---------------------------------------------------------------------------- the site


class Resolving(httpx.HTTPTransport):
    """Send requests for the site's names to the proxy's address, with the name as SNI and Host."""

    def __init__(self, names: dict[str, str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.names = names

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.host in self.names:
            request.extensions = {**request.extensions, "sni_hostname": url.host}
            request.url = url.copy_with(host=self.names[url.host])
        try:
            return super().handle_request(request)
        finally:
            request.url = url  # the client's cookie jar sees the name


@dataclass
class Site:
    lan: Lan
    nginx: Nginx
    postgres: NetnsPostgres
    redis: Redis
    instances: dict[str, Instance]
    tls: ssl.SSLContext
    db_options: dict[str, Any]
    pids: dict[str, int] = field(default_factory=dict)

    url = f"https://{SITE}"

    def client(self, timeout: float = 30, **kwargs: Any) -> httpx.Client:
        """An HTTPS client of the site through the proxy; use it on the client host's threads."""
        transport = Resolving({SITE: self.lan.address["proxy"], ALSO_ALLOWED: self.lan.address["proxy"]},
                              verify=self.tls)
        return httpx.Client(base_url=self.url, transport=transport, timeout=timeout,
                            headers={"Origin": self.url}, **kwargs)

    def on_client(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self.lan.on("client", fn, *args, **kwargs)

    def in_background(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        return self.lan.threads("client").submit(fn, *args)

    def rows(self, pattern: str) -> list[str]:
        rows = self.postgres.execute(f"SELECT language FROM django_hello_greeting WHERE language LIKE '{pattern}'",
                                     DB_NAME)
        return [str(row[0]) for row in rows]

    def has_session(self, session_key: str) -> bool:
        return bool(self.postgres.execute(
            f"SELECT 1 FROM django_session WHERE session_key = '{session_key}'", DB_NAME))

    def unchanged(self) -> list[str]:
        """Problems with the instances' processes: any that exited or is not the one started."""
        return [f"{name}: exited with {s.proc.returncode}" if s.proc.poll() is not None
                else f"{name}: pid {s.proc.pid}, started as {self.pids[name]}"
                for name, s in self.instances.items() if s.proc.poll() is not None or s.proc.pid != self.pids[name]]

    def logs(self, lines: int = 30) -> str:
        parts = [f"--- nginx error.log\n{tail(self.nginx.error_log, lines)}",
                 f"--- nginx access.log\n{tail(chr(10).join(self.nginx.access_log), lines)}"]
        parts += [f"--- {name}\n{tail(s.log, lines)}" for name, s in self.instances.items()]
        parts.append(f"--- postgres\n{tail(self.postgres.log, lines)}")
        return "\n".join(parts)

    def healthy(self) -> None:
        """Wait until both instances answer /readyz 200 and nginx serves through each of them."""
        def ready() -> bool:
            return all(self.on_client(status_of, f"{s.url}/readyz") == 200 for s in self.instances.values())

        wait_until(ready, 30, lambda: f"the instances are not ready:\n{self.logs()}")
        seen: set[str] = set()

        def both() -> bool:
            seen.add(self.on_client(echo, self)["instance"])
            return seen == set(INSTANCES)

        wait_until(both, 30, lambda: f"nginx did not reach both instances (only {seen}):\n{self.logs()}")


@contextlib.contextmanager
def build_site() -> Iterator[Site]:
    """Make the hosts and start everything; remove it all afterwards, whatever happened."""
    removed = remove_leftovers()
    lan = Lan(HOSTS)
    try:
        try:
            lan.create()
        except PermissionError as exc:
            pytest.skip(f"ip netns is not permitted here: {exc}")
        if removed:
            say(f"removed what earlier runs left behind: {', '.join(removed)}")
        root = lan.tmp
        pgroot = root / "postgres"
        pgroot.mkdir()
        if os.geteuid() == 0:
            shutil.chown(pgroot, "postgres", "postgres")
        postgres = NetnsPostgres(lan, Path(INITDB[-1]).parent, pgroot, [lan.address["app1"], lan.address["app2"]])
        lan.at_close(postgres.kill)
        postgres.execute(f"CREATE ROLE {DB_USER} LOGIN PASSWORD '{DB_PASSWORD}'")
        postgres.execute(f"CREATE DATABASE {DB_NAME} OWNER {DB_USER}")
        redis = Redis(lan, root)
        lan.at_close(redis.stop)
        nginx = Nginx(lan, root / "nginx")
        lan.at_close(nginx.stop)
        lan.hosts_file("client", {SITE: lan.address["proxy"], ALSO_ALLOWED: lan.address["proxy"]})
        tls = ssl.create_default_context(cafile=str(nginx.prefix / "tls/gateway.crt"))

        shared = {
            # deploy/gateway.env.example, with this LAN's addresses
            "GATEWAY_ENV": "production",
            "GATEWAY_ALLOWED_HOSTS": f"{SITE},{ALSO_ALLOWED}",
            "GATEWAY_TRUSTED_PROXIES": lan.address["proxy"],
            "GATEWAY_MAX_BODY_SIZE": "10485760",
            "GATEWAY_HTTPS": "1",
            "GATEWAY_LOG_FORMAT": "json",
            "DJANGO_SECRET_KEY": secrets.token_urlsafe(48),
            "FLASK_SECRET_KEY": secrets.token_urlsafe(48),
            "DATABASE_URL": postgres.lan_url(),
            "REDIS_URL": redis.url,
            "DJANGO_CONN_MAX_AGE": "60",
        }
        env = server_env(root / "migrate", **shared, DJANGO_SUPERUSER_PASSWORD=PASSWORD)
        for args in (["migrate", "-v", "0"],
                     ["manage", "createsuperuser", "--noinput", "--username", ADMIN, "--email", "a@example.com"]):
            result = subprocess.run([*lan.exec_args("app1"), *GATEWAY, *args], cwd=ROOT, env=env,
                                    capture_output=True, text=True, timeout=120)
            assert result.returncode == 0, f"gateway {args[0]} failed:\n{result.stderr}"
        # The database client's timeouts as the apps have them (django_hello/settings.py).
        code = "import json, django_hello.settings as s; print(json.dumps(s.DATABASES['default'].get('OPTIONS', {})))"
        result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0, result.stderr
        db_options = json.loads(result.stdout.strip().splitlines()[-1])

        instances: dict[str, Instance] = {}
        for host in INSTANCES:
            directory = root / host
            directory.mkdir()
            command = [*GATEWAY, "serve", *SERVE_ARGS, *DEMO_MOUNTS, "--mount", "/echo=tests.netns:echo"]
            instances[host] = Instance(lan, host, command,
                                       server_env(directory, **shared, GATEWAY_NETNS_INSTANCE=host),
                                       directory / "gateway.log")
            lan.at_close(instances[host].stop)
        nginx.start()
        site = Site(lan, nginx, postgres, redis, instances, tls, db_options,
                    {name: s.proc.pid for name, s in instances.items()})
        site.healthy()
        yield site
    finally:
        errors = lan.close()
        assert not errors, f"cleaning up the hosts failed: {errors}"


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    with build_site() as built:
        yield built


@pytest.fixture
def show(capsys: pytest.CaptureFixture[str]) -> Callable[[str], None]:
    """Print a figure to the terminal, captured or not."""
    def show(text: str) -> None:
        with capsys.disabled():
            say(text)
    return show


def say(text: str) -> None:
    sys.stdout.write(f"\n[netns] {text}")
    sys.stdout.flush()


# ---------------------------------------------------------------------------- clients


def status_of(url: str, timeout: float = 10) -> int:
    try:
        return httpx.get(url, timeout=timeout).status_code
    except httpx.HTTPError:
        return 0


def echo(site: Site, path: str = "/apps/echo/", **kwargs: Any) -> dict[str, Any]:
    with site.client(timeout=10) as client:
        response = client.get(path, **kwargs)
        assert response.status_code == 200, response.text
        return dict(response.json())


def form_token(html: str) -> str:
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    assert match, f"no CSRF token in the page:\n{html[:2000]}"
    return match.group(1)


def login(site: Site, timeout: float = 30, username: str = ADMIN, password: str = PASSWORD) -> httpx.Client:
    """Sign in to the admin through the proxy (call on a client thread); the client keeps the cookies."""
    client = site.client(timeout=timeout)
    try:
        page = client.get("/apps/django/admin/login/?next=/apps/django/admin/")
        assert page.status_code == 200, f"login page: {page.status_code}\n{page.text[:1000]}"
        response = client.post("/apps/django/admin/login/?next=/apps/django/admin/", data={
            "csrfmiddlewaretoken": form_token(page.text), "username": username, "password": password,
            "next": "/apps/django/admin/"})
        if username == ADMIN:
            assert response.status_code == 302, f"sign-in: {response.status_code}\n{response.text[:1000]}"
            assert response.headers["location"] == "/apps/django/admin/"
    except BaseException:
        client.close()
        raise
    return client


def admin_ok(response: httpx.Response) -> bool:
    return response.status_code == 200 and "Site administration" in response.text


@dataclass
class Call:
    """One request: what was asked, what came back, when (monotonic)."""

    what: str
    start: float
    end: float = 0.0
    status: int = 0
    error: str = ""
    detail: str = ""  # what the test read from the answer: the instance (/echo), a Location, a status
    key: str = ""  # a write's key

    @property
    def latency(self) -> float:
        return self.end - self.start

    @property
    def failed(self) -> bool:
        return bool(self.error) or self.status >= 500 or self.status == 0

    @property
    def method(self) -> str:
        return self.what.split()[0]

    def outcome(self) -> str:
        return self.error or str(self.status)


def timed(what: str, fn: Callable[[], httpx.Response], detail: Callable[[httpx.Response], str] | None = None,
          key: str = "") -> Call:
    call = Call(what, time.monotonic(), key=key)
    try:
        response = fn()
        call.status = response.status_code
        if detail is not None:
            call.detail = detail(response)
    except httpx.HTTPError as exc:
        call.error = f"{type(exc).__name__}: {exc}"[:200]
    call.end = time.monotonic()
    return call


def repeat(stop: threading.Event, out: list[Call], make: Callable[[], Call], pause: float) -> None:
    while not stop.is_set():
        out.append(make())
        stop.wait(pause)


def start_wrk(site: Site, path: str, seconds: float, connections: int, timeout: float,
              headers: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """wrk on the client host, through the proxy by name; its summary is one JSON line."""
    script = site.lan.tmp / f"wrk-{secrets.token_hex(3)}.lua"
    script.write_text(WRK_LUA)
    args = [*site.lan.exec_args("client"), str(WRK), "-t2", f"-c{connections}", f"-d{math.ceil(seconds)}s",
            "--timeout", f"{math.ceil(timeout)}s", "-s", str(script)]
    for name, value in (headers or {}).items():
        args += ["-H", f"{name}: {value}"]
    return subprocess.Popen([*args, site.url + path], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wrk_result(proc: subprocess.Popen[str], stop: bool = False, timeout: float = 120) -> dict[str, float]:
    if stop and proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # wrk stops and prints its summary
    out, err = proc.communicate(timeout=timeout)
    line = next((x for x in out.splitlines() if x.startswith("NETNS_WRK ")), None)
    assert line is not None, f"wrk failed ({proc.returncode}):\n{out}{err}"
    return dict(json.loads(line.removeprefix("NETNS_WRK ")))


# Statuses counted by class in each thread, summed in done(); one JSON line.
WRK_LUA = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) s2, s3, s4, s5 = 0, 0, 0, 0 end
function response(status, headers, body)
  if status >= 500 then s5 = s5 + 1 elseif status >= 400 then s4 = s4 + 1
  elseif status >= 300 then s3 = s3 + 1 else s2 = s2 + 1 end
end
function done(summary, latency, requests)
  local c = {s2 = 0, s3 = 0, s4 = 0, s5 = 0}
  for _, thread in ipairs(threads) do
    for name, _ in pairs(c) do c[name] = c[name] + thread:get(name) end
  end
  local e = summary.errors
  io.write(string.format(
    'NETNS_WRK {"requests": %d, "seconds": %.3f, "2xx": %d, "3xx": %d, "4xx": %d, "5xx": %d, ' ..
    '"connect": %d, "read": %d, "write": %d, "timeout": %d, "p50": %.4f, "p99": %.4f, "max": %.4f}\\n',
    summary.requests, summary.duration / 1e6, c.s2, c.s3, c.s4, c.s5, e.connect, e.read, e.write,
    e.timeout, latency:percentile(50) / 1e6, latency:percentile(99) / 1e6, latency.max / 1e6))
end
"""


def wrk_failures(result: dict[str, float]) -> int:
    return int(result["4xx"] + result["5xx"] + result["connect"] + result["read"] + result["write"]
               + result["timeout"])


NGINX_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) [^"]*" (?P<status>\d{3}) .*? rt=(?P<rt>[\d.]+) '
                        r'upstream=(?P<upstream>.*?) ustatus=(?P<ustatus>.*?) uct=(?P<uct>.*?) urt=')


def nginx_requests(site: Site, since: int) -> list[re.Match[str]]:
    return [m for line in site.nginx.access_log[since:] if (m := NGINX_LINE.search(line))]


def first_lines(items: list[Any], count: int = 12) -> str:
    return "\n".join(f"  {item}" for item in items[:count]) + (f"\n  ... {len(items) - count} more"
                                                               if len(items) > count else "")


def wait_until(predicate: Callable[[], bool], timeout: float, message: str | Callable[[], str],
               interval: float = 0.1) -> float:
    """Wait until ``predicate()``; return the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(message() if callable(message) else message)
        time.sleep(interval)
    return time.monotonic() - start


def tail(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:])


# ---------------------------------------------------------------------------- 1. trust


def test_trust_follows_the_proxy_address(site: Site, show: Callable[[str], None]) -> None:
    """Through the proxy the apps see the client and /apps; straight from the client,
    forged X-Forwarded-* change nothing; the very same request from the proxy's address is believed."""
    lan = site.lan
    client, proxy = lan.address["client"], lan.address["proxy"]
    since = {name: len(s.records()) for name, s in site.instances.items()}

    seen = site.on_client(echo, site, "/apps/echo/trust")
    assert seen["REMOTE_ADDR"] == client, seen
    assert (seen["wsgi.url_scheme"], seen["HTTP_HOST"], seen["SCRIPT_NAME"]) == ("https", SITE, "/apps/echo"), seen

    def through_proxy() -> tuple[httpx.Response, httpx.Response]:
        with site.client() as http:
            admin = http.get("/apps/django/admin/")
            page = http.get(admin.headers.get("location", "/apps/django/admin/login/"))
            # One failed sign-in: django-axes records the address Django saw.
            wrong = http.post("/apps/django/admin/login/", data={
                "csrfmiddlewaretoken": form_token(page.text), "username": probe_user, "password": "wrong"})
            return admin, wrong

    probe_user = f"netns-{secrets.token_hex(3)}"
    admin, wrong = site.on_client(through_proxy)
    assert admin.status_code == 302 and admin.headers["location"] == (
        "/apps/django/admin/login/?next=/apps/django/admin/"), (admin.status_code, admin.headers)
    assert wrong.status_code == 200 and "Please enter the correct username" in wrong.text, wrong.status_code
    attempts = site.postgres.execute(
        f"SELECT ip_address FROM axes_accessattempt WHERE username = '{probe_user}'", DB_NAME)
    site.postgres.execute(f"DELETE FROM axes_accessattempt WHERE username = '{probe_user}'", DB_NAME)
    assert [str(a[0]) for a in attempts] == [client], attempts

    def straight(instance: Instance) -> tuple[dict[str, Any], httpx.Response]:
        with httpx.Client(base_url=instance.url, timeout=10, headers=FORGED) as http:
            seen = http.get("/echo/trust").json()
            return seen, http.get("/django/admin/")

    direct = {}
    for name, instance in site.instances.items():
        seen, admin = lan.on("client", straight, instance)
        direct[name] = seen
        assert seen["REMOTE_ADDR"] == client, (name, seen)
        assert (seen["wsgi.url_scheme"], seen["HTTP_HOST"], seen["SCRIPT_NAME"]) == ("http", SITE, "/echo"), seen
        # Django sees plain HTTP (GATEWAY_HTTPS redirects it) on its own host, under no prefix.
        assert (admin.status_code, admin.headers.get("location")) == (301, f"https://{SITE}/django/admin/"), (
            name, admin.status_code, admin.headers)
        # The same headers from the proxy's address are believed: trust is the address, nothing else.
        believed, _ = lan.on("proxy", straight, instance)
        assert believed["REMOTE_ADDR"] == FORGED["X-Forwarded-For"], (name, believed)
        assert (believed["wsgi.url_scheme"], believed["HTTP_HOST"], believed["SCRIPT_NAME"]) == (
            "https", ALSO_ALLOWED, "/forged/echo"), believed

    # The gateway's access lines (written a moment later) name the client the apps saw.
    expected = {(client, "/apps/echo/trust"): 1, (client, "/echo/trust"): 2,
                (FORGED["X-Forwarded-For"], "/forged/echo/trust"): 2}

    def access() -> Counter[tuple[str, str]]:
        return Counter((r["client"], r["path"]) for name, s in site.instances.items() for r in s.records()[since[name]:]
                       if r.get("logger") == "gateway.access" and "/echo/trust" in str(r.get("path")))

    with contextlib.suppress(AssertionError):
        wait_until(lambda: access() == expected, 5, "")
    assert access() == expected, access()
    show(f"trust: through the proxy the apps saw client {client}, https, /apps; straight from the client "
         f"the forged headers were ignored on both instances; from the proxy ({proxy}) the same headers were believed")


# ---------------------------------------------------------------------------- 2. an app host vanishes


def write_load(site: Site, cookies: str, token: str, prefix: str, stop: threading.Event, out: list[Call],
               patience: float) -> None:
    """POST the admin's add form with a new key each time, as a signed-in browser would."""
    with site.client(timeout=patience) as http:
        number = 0
        while not stop.is_set():
            key = f"{prefix}{number:04d}"
            number += 1
            form = {"csrfmiddlewaretoken": token, "language": key, "text": f"Hello {key}", "_save": "Save"}

            def post(form: dict[str, str] = form) -> httpx.Response:
                return http.post(GREETINGS + "add/", headers={"Cookie": cookies}, data=form)

            out.append(timed("POST add", post, lambda r: r.headers.get("location", ""), key))


def read_load(site: Site, method: str, path: str, stop: threading.Event, out: list[Call], patience: float) -> None:
    def instance(response: httpx.Response) -> str:
        return str(response.json()["instance"]) if method == "GET" and response.status_code == 200 else ""

    with site.client(timeout=patience) as http:
        repeat(stop, out, lambda: timed(f"{method} {path}", lambda: http.request(method, path), instance), 0.02)


def test_app_host_vanishes_under_load(site: Site, show: Callable[[str], None]) -> None:
    """app1's cable is pulled for APP_CUT s under wrk (GET), the test's GET and HEAD and admin writes.

    No GET or HEAD fails (wrk, the test's clients, nginx's log); nginx has answered every
    request the cut caught within proxy_read_timeout + proxy_connect_timeout; every write
    answered 302 is in the database once, every other write failed visibly (5xx, or the
    connection); the cable comes back and app1, the same process, serves again.
    """
    site.healthy()
    nginx = site.nginx
    connect, read = nginx.seconds("proxy_connect_timeout"), nginx.seconds("proxy_read_timeout")
    fail_timeout = nginx.seconds("fail_timeout")
    # Clients wait longer than nginx ever would: what fails, nginx failed.
    patience = read + 2 * connect + 10
    bound = read + connect + 2  # nginx has answered every request caught by the cut by then

    def signed_in() -> tuple[str, str]:
        with contextlib.closing(login(site)) as http:
            page = http.get(GREETINGS + "add/")
            assert page.status_code == 200, page.status_code
            return (f"sessionid={http.cookies['sessionid']}; csrftoken={http.cookies['csrftoken']}",
                    form_token(page.text))

    cookies, token = site.on_client(signed_in)
    prefix = f"n{secrets.token_hex(3)}"
    since = len(nginx.access_log)
    stop = threading.Event()
    reads: list[Call] = []
    writes: list[list[Call]] = [[], []]
    wrk = start_wrk(site, "/apps/flask/", 600, 8, patience)
    tasks = [site.in_background(read_load, site, "GET", "/apps/echo/", stop, reads, patience) for _ in range(2)]
    tasks += [site.in_background(read_load, site, "HEAD", "/apps/flask/", stop, reads, patience) for _ in range(2)]
    tasks += [site.in_background(write_load, site, cookies, token, f"{prefix}{i}", stop, writes[i], patience)
              for i in range(2)]
    back = math.inf
    try:
        time.sleep(3)
        with site.lan.vanished("app1") as cut:
            time.sleep(APP_CUT)
        mended = time.monotonic()

        def app1_serves() -> bool:
            return any(c.detail == "app1" and c.start > mended for c in list(reads))

        with contextlib.suppress(AssertionError):
            back = wait_until(app1_serves, fail_timeout + APP_CUT + 10, "")
        time.sleep(1)
    finally:
        stop.set()
        done = [t.exception(timeout=patience + 10) for t in tasks]
        load = wrk_result(wrk, stop=True)
    assert not [e for e in done if e], done
    writes_ = [c for w in writes for c in w]

    # Which requests the cut caught, and how nginx answered them.
    caught = [c for c in reads if c.start < mended and c.end > cut and c.latency > 1.0]
    answered = max((c.end - cut for c in caught), default=0.0)
    failed = Counter(c.method for c in reads + writes_ if c.failed)
    logged = nginx_requests(site, since)
    nginx_failed = Counter(m["method"] for m in logged if m["status"].startswith("5")
                           or (m["status"] == "499" and float(m["rt"]) > 1))
    retried = Counter(f"{m['method']} {m['ustatus']}" for m in logged if "," in m["upstream"])
    acked = {c.key for c in writes_ if (c.status, c.detail) == (302, GREETINGS)}
    visible = {c.key for c in writes_ if c.failed}
    other = [c for c in writes_ if not c.failed and (c.status, c.detail) != (302, GREETINGS)]
    rows = site.rows(f"{prefix}%")
    present = set(rows)
    twice = [key for key, n in Counter(rows).items() if n > 1]

    show(f"app1 unplugged for {APP_CUT:.0f} s under load; nginx: proxy_connect_timeout {connect:g} s, "
         f"proxy_read_timeout {read:g} s, proxy_next_upstream_timeout "
         f"{nginx.setting('proxy_next_upstream_timeout')}, max_fails={nginx.setting('max_fails')} "
         f"fail_timeout={fail_timeout:g}s")
    longest = max((c.latency for c in caught), default=0.0)
    show(f"  failover time {answered:.1f} s: the test's GET/HEAD caught by the cut ({len(caught)}, waiting > 1 s) "
         f"were all answered by then (longest wait {longest:.1f} s; outcomes "
         f"{dict(Counter(c.outcome() for c in caught))}); the rest went to app2 at once")
    show(f"  wrk GET /apps/flask/: {load['requests']:.0f} requests, {wrk_failures(load)} failed "
         f"(5xx {load['5xx']:.0f}, timeouts {load['timeout']:.0f}, read errors {load['read']:.0f}), "
         f"p99 {load['p99']:.3f} s, max {load['max']:.1f} s")
    show(f"  requests failed by method (the test's clients): GET {failed['GET']}, HEAD {failed['HEAD']}, "
         f"POST {failed['POST']}; nginx's log (5xx, or given up by the client after > 1 s): {dict(nginx_failed)}; "
         f"retried on the other instance (first status, second): {dict(retried)}")
    show(f"  writes: {len(writes_)} sent, {len(acked)} acknowledged (302), {len(present)} in the database, "
         f"{len(acked - present)} acknowledged but missing, {len(twice)} twice; {len(visible)} failed visibly "
         f"({len(visible & present)} of them stored all the same)")
    show(f"  app1 served again {back:.1f} s after its cable came back, same process: {not site.unchanged()}")

    report = (f"\ncaught:\n{first_lines(caught)}\nfailed:\n{first_lines([c for c in reads + writes_ if c.failed])}"
              f"\nnginx errors:\n{tail(nginx.error_log, 15)}")
    assert not failed["GET"] and not failed["HEAD"] and not wrk_failures(load), f"GET or HEAD failed:{report}"
    assert not nginx_failed["GET"] and not nginx_failed["HEAD"], f"nginx failed GET or HEAD:{report}"
    assert answered <= bound, f"nginx took {answered:.1f} s to answer what the cut caught (bound {bound} s){report}"
    assert acked <= present and not twice, f"acknowledged {sorted(acked - present)} missing, twice {twice}{report}"
    assert present <= acked | visible, f"stored without any answer: {sorted(present - acked - visible)}"
    assert not other, f"writes answered neither 302 nor a failure:\n{first_lines(other)}"
    assert back <= fail_timeout + APP_CUT + 10, f"app1 did not serve again after its cable came back:{report}"
    assert not site.unchanged(), site.unchanged()


# ---------------------------------------------------------------------------- 3. the database host vanishes


def test_database_host_vanishes(site: Site, show: Callable[[str], None]) -> None:
    """The database's cable is pulled for DB_CUT s while the apps hold connections to it (CONN_MAX_AGE).

    /readyz on both instances turns 503 (busy or fail) within GATEWAY_READY_TIMEOUT and answers
    within it throughout; /flask/ answers 200; pages that need the database answer 503 within
    the client's timeouts from django_hello/settings.py (connect_timeout, and tcp_user_timeout
    if set, for a kept connection's health check), never hang; within RECOVERY s of the cable's
    return every page answers 200, nothing is still running, and no instance restarted.
    """
    site.healthy()
    options = site.db_options
    connect = float(options.get("connect_timeout", 0))
    assert connect > 0, f"django_hello/settings.py sets no connect_timeout for PostgreSQL: {options}"
    user_timeout = float(options.get("tcp_user_timeout", 0)) / 1000  # libpq's, in ms
    # A kept connection (CONN_MAX_AGE) fails its health check after tcp_user_timeout, then
    # Django connects anew: connect_timeout. Without tcp_user_timeout nothing bounds the first.
    bound = connect + user_timeout + 1.5
    ready_timeout = DEFAULT_READY_TIMEOUT
    http = site.on_client(login, site, 60)
    try:
        for _ in range(6):  # kept connections on both instances' threads
            assert admin_ok(site.on_client(http.get, "/apps/django/admin/"))
        calls: list[Call] = []
        stop = threading.Event()

        def ready_poll(instance: Instance) -> None:
            with httpx.Client(timeout=60) as probe:
                repeat(stop, calls, lambda: timed(f"GET {instance.host}/readyz", lambda: probe.get(
                    instance.url + "/readyz"), lambda r: str(r.json().get("status"))), 0.25)

        def flask_poll() -> None:
            with site.client(timeout=60) as anon:
                repeat(stop, calls, lambda: timed("GET /apps/flask/", lambda: anon.get("/apps/flask/")), 0.1)

        def db_poll(path: str) -> None:
            repeat(stop, calls, lambda: timed(f"GET {path}", lambda: http.get(path)), 0.1)

        tasks = [site.in_background(ready_poll, s) for s in site.instances.values()]
        tasks += [site.in_background(flask_poll)]
        tasks += [site.in_background(db_poll, p) for p in DB_PAGES]
        recovered = math.inf
        try:
            time.sleep(1)
            with site.lan.vanished("db") as cut:
                # Besides the pollers' (each may have one running at the cut), requests that surely
                # start after it, two a page: one each instance, as nginx takes turns.
                for path in [*DB_PAGES, *DB_PAGES]:
                    tasks.append(site.in_background(lambda path=path: calls.append(
                        timed(f"GET {path}", lambda: http.get(path)))))
                time.sleep(DB_CUT)
            mended = time.monotonic()

            def recovered_() -> bool:
                after = [c for c in calls if c.start > mended]
                return all(any(c.what == what and c.status == 200 for c in after) for what in
                           {c.what for c in calls})

            with contextlib.suppress(AssertionError):
                recovered = wait_until(recovered_, RECOVERY + 10, "")
            time.sleep(1)
        finally:
            stop.set()
            deadline = time.monotonic() + 70
            stuck = [t for t in tasks if not wait_until_done(t, deadline - time.monotonic())]
    finally:
        site.on_client(http.close)

    # What the cut met: requests that were running at the cut or started during it.
    during = [c for c in calls if c.end > cut + 0.01 and c.start < mended]
    readyz = [c for c in during if c.what.endswith("/readyz")]
    # Each instance's first probe sent after the cut starts a check of its own, which cannot reach the database.
    first = {what: min((c for c in readyz if c.what == what and c.start > cut), key=lambda c: c.start)
             for what in {c.what for c in readyz}}
    first_503 = {what.split()[1]: round(min(c.end for c in readyz if c.what == what and c.status == 503) - cut, 2)
                 for what in {c.what for c in readyz if c.status == 503}}  # the first 503 answer after the cut
    flask = [c for c in calls if c.what == "GET /apps/flask/"]
    pages = [c for c in during if c.what.startswith("GET /apps/") and c.what != "GET /apps/flask/"]
    late = [c for c in calls if c.start < mended and c.end > mended + RECOVERY]

    show(f"database unplugged for {DB_CUT:.0f} s; psycopg connect_timeout {connect:g} s, tcp_user_timeout "
         f"{user_timeout * 1000:g} ms, DJANGO_CONN_MAX_AGE 60, GATEWAY_READY_TIMEOUT {ready_timeout:g} s")
    show(f"  /readyz turned 503 {first_503} s after the cut; answers during the cut "
         f"{dict(Counter((c.status, c.detail) for c in readyz))}, slowest {max(c.latency for c in readyz):.2f} s")
    show(f"  /flask/: {dict(Counter(c.outcome() for c in flask))}, slowest {max(c.latency for c in flask):.2f} s")
    for what in sorted({c.what for c in pages}):
        mine = [c for c in pages if c.what == what]
        show(f"  {what[4:]}: {dict(Counter(c.outcome() for c in mine))}, latency "
             f"{min(c.latency for c in mine):.2f}-{max(c.latency for c in mine):.2f} s")
    show(f"  recovered {recovered:.1f} s after the cable came back; requests still running {RECOVERY:g} s after it: "
         f"{len(late)}; stuck clients: {len(stuck)}; instances restarted: {site.unchanged() or 'none'}")

    report = f"\n{first_lines(sorted(pages + readyz, key=lambda c: c.start), 40)}\n{site.logs(15)}"
    assert not stuck, f"requests still running 70 s after the cut ended:{report}"
    assert all(c.status == 503 and c.latency <= ready_timeout + 0.5 for c in first.values()) and len(first) == 2, (
        f"the first /readyz after the cut was not 503 within {ready_timeout} s: {first}{report}")
    assert all(c.latency <= ready_timeout + 1 for c in readyz), f"/readyz took longer than {ready_timeout} s:{report}"
    within = [c for c in readyz if c.start > cut + 1 and c.end < mended]
    assert all(c.status == 503 and c.detail in {"busy", "fail"} for c in within), (
        f"/readyz was not 503 busy or fail during the cut:{report}")
    assert all(c.status == 200 and c.latency < 2 for c in flask), f"/flask/ did not keep answering:{report}"
    assert all(c.latency <= bound for c in pages if c.start > cut), (
        f"pages that need the database took longer than {bound} s:{report}")
    # Running at the cut, a page may have had what it needed already; started after it, only the
    # cable's return lets it succeed.
    assert all(c.status == 503 or (c.status == 200 and (c.start < cut or c.end > mended)) for c in pages), (
        f"pages that need the database neither answered nor failed with a 503:{report}")
    assert any(c.status == 503 for c in pages), report
    assert recovered <= RECOVERY, f"not everything recovered within {RECOVERY} s:{report}"
    assert not late, f"requests still running {RECOVERY} s after the cable came back:\n{first_lines(late)}"
    assert not site.unchanged(), site.unchanged()


def wait_until_done(task: Future[Any], timeout: float) -> bool:
    try:
        task.result(max(0.0, timeout))
    except TimeoutError:
        return False
    return True


# ---------------------------------------------------------------------------- 4. the cache host vanishes


def test_cache_host_vanishes(site: Site, show: Callable[[str], None]) -> None:
    """Redis's cable is pulled for CACHE_CUT s.

    Sign-in, the admin's pages and sign-out answer 200 or 302 within CACHE_PATIENCE s, never a
    5xx, with sessions in the database; at most one WARNING line per worker process for the
    outage (which is shorter than any sensible interval between them) and no ERROR line;
    within CACHE_RETURN s of the cable's return new sessions are in Redis again, and a session
    signed out while it was away does not come back from it.
    """
    site.healthy()
    since = {name: len(s.records()) for name, s in site.instances.items()}
    staying = site.on_client(login, site, 60)
    leaving = site.on_client(login, site, 60)
    calls: list[Call] = []
    fresh: list[str] = []
    try:
        assert site.redis.has_session(staying.cookies["sessionid"]), "sessions are not cached in Redis to begin with"
        leaving_key = leaving.cookies["sessionid"]
        logout_token = form_token(site.on_client(leaving.get, "/apps/django/admin/").text)

        def sign_in() -> None:
            call = Call("sign-in", time.monotonic())
            try:
                with contextlib.closing(login(site, 60)) as http:
                    call.status = http.get("/apps/django/admin/").status_code
                    fresh.append(http.cookies["sessionid"])
            except (AssertionError, httpx.HTTPError) as exc:
                call.error = f"{type(exc).__name__}: {str(exc)[:150]}"
            call.end = time.monotonic()
            calls.append(call)

        def log_out() -> Call:
            return timed("POST logout", lambda: leaving.post("/apps/django/admin/logout/",
                                                              data={"csrfmiddlewaretoken": logout_token}))

        with site.lan.vanished("cache") as cut:
            logout = site.on_client(log_out)
            calls.append(logout)
            while time.monotonic() - cut < CACHE_CUT:
                site.on_client(sign_in)
                for path in ("/apps/django/admin/", GREETINGS, GREETINGS + "add/"):
                    calls.append(site.on_client(timed, f"GET {path}", lambda path=path: staying.get(path)))
        during, made = list(calls), list(fresh)
        in_db = [key for key in made if site.has_session(key)]

        def cached_again() -> bool:
            site.on_client(sign_in)
            return site.redis.has_session(fresh[-1])

        back = math.inf
        with contextlib.suppress(AssertionError, IndexError):
            back = wait_until(cached_again, CACHE_RETURN + 5, "", interval=0.5)
        resurrected = admin_ok(site.on_client(leaving.get, "/apps/django/admin/"))
        still = admin_ok(site.on_client(staying.get, "/apps/django/admin/"))
    finally:
        site.on_client(staying.close)
        site.on_client(leaving.close)
    problems = {name: s.problems(since[name]) for name, s in site.instances.items()}
    errors = [r for rs in problems.values() for r in rs if r["level"] != "WARNING"]
    warnings = {name: len(rs) for name, rs in problems.items()}

    outcomes = dict(Counter(c.outcome() for c in during))
    show(f"cache unplugged for {CACHE_CUT:.0f} s: {len(during)} requests, {outcomes}, "
         f"latency {min(c.latency for c in during):.2f}-{max(c.latency for c in during):.2f} s; sessions made "
         f"meanwhile in the database: {len(in_db)} of {len(made)}")
    show(f"  back in Redis {back:.1f} s after its cable came back; a session signed out during the cut "
         f"{'came back' if resurrected else 'stayed signed out'}; WARNING lines {warnings}, ERROR lines {len(errors)}")
    messages = first_lines([f"{r['level']} {r['logger']}: {r['message'][:160]}"
                            for rs in problems.values() for r in rs])
    report = f"\n{first_lines(during, 30)}\nlog:\n{messages}"
    assert all(c.status in {200, 302} and c.latency <= CACHE_PATIENCE for c in during), (
        f"sign-in or admin pages failed or took longer than {CACHE_PATIENCE} s without the cache:{report}")
    assert made and in_db == made, f"sessions made while the cache was away are not in the database:{report}"
    assert not errors, f"ERROR lines while the cache was away:{report}"
    assert all(n <= WORKERS for n in warnings.values()), f"more than one warning line per worker:{report}"
    assert back <= CACHE_RETURN, f"sessions did not go to Redis again within {CACHE_RETURN} s:{report}"
    assert logout.status != 200 or not resurrected, (
        f"the session signed out while the cache was away ({leaving_key}) works again")
    assert still, "the session signed in before the cut no longer works"
    assert not site.unchanged(), site.unchanged()


# ---------------------------------------------------------------------------- 5. a slow link


def test_slow_database_link(site: Site, show: Callable[[str], None]) -> None:
    """100 ms each way between the apps and the database (netem on both ends of the db's cable).

    Figures: the admin's pages' latency, /readyz's, and wrk's throughput on the admin index.
    Nothing times out that should not: every page 200, /readyz 200 within its 2 s.
    """
    reason = site.lan.netem_unavailable()
    if reason:
        pytest.skip(f"no slow link: {reason}")
    site.healthy()
    http = site.on_client(login, site, 60)
    try:
        cookie = f"sessionid={http.cookies['sessionid']}"
        site.lan.netem("db", "delay", NETEM_DELAY)
        try:
            pages = {path: [site.on_client(timed, path, lambda path=path: http.get(path)) for _ in range(8)]
                     for path in ("/apps/django/admin/", GREETINGS, "/apps/flask/greetings")}
            readyz = [site.on_client(timed, s.host, lambda s=s: httpx.get(s.url + "/readyz", timeout=30))
                      for s in site.instances.values() for _ in range(3)]
            load = wrk_result(start_wrk(site, "/apps/django/admin/", 8, 8, 30, {"Cookie": cookie}), timeout=60)
        finally:
            site.lan.clear_netem("db")
    finally:
        site.on_client(http.close)
    show(f"database link {NETEM_DELAY} each way (netem):")
    for path, calls in pages.items():
        show(f"  {path}: {dict(Counter(c.outcome() for c in calls))}, median "
             f"{statistics.median(c.latency for c in calls):.2f} s, max {max(c.latency for c in calls):.2f} s")
    show(f"  /readyz: {dict(Counter(c.outcome() for c in readyz))}, max {max(c.latency for c in readyz):.2f} s")
    show(f"  wrk -c8 on the admin index: {load['requests'] / load['seconds']:.1f} req/s, p50 {load['p50']:.2f} s, "
         f"p99 {load['p99']:.2f} s, failed {wrk_failures(load)}")
    assert all(c.status == 200 for calls in pages.values() for c in calls), pages
    assert all(c.status == 200 and c.latency < DEFAULT_READY_TIMEOUT for c in readyz), readyz
    assert not wrk_failures(load) and load["2xx"] == load["requests"], load
    assert not site.unchanged(), site.unchanged()
