"""Two gateway instances behind nginx on loopback, sharing one PostgreSQL database.

The nginx configuration is ``deploy/nginx-loopback.conf`` and ``deploy/snippets``, copied
into a scratch prefix with free ports in place of 8080, 8001 and 8002. Both instances
run ``gateway serve --workers 2`` with the same secret keys and database, as
``deploy/gateway.service`` does. The tests cover the ``/apps`` prefix end to end, the
admin session on either instance, failover with writes in flight, and readiness while
the database is down. The failover test stops an instance and starts it again.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import GATEWAY, ROOT, ServerProcess, free_port, server_env, until

NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
DEPLOY = ROOT / "deploy"
LOOPBACK_PORTS = ("127.0.0.1:8080", "127.0.0.1:8001", "127.0.0.1:8002")
# --drain-delay 5: on SIGTERM keep serving (Connection: close, /readyz 503) for longer
# than nginx's upstream keepalive_timeout (4 s), so nginx has let go of every idle
# connection to this instance before it closes any.
SERVE_ARGS = ("--workers", "2", "--graceful-timeout", "10", "--drain-delay", "5")
ADMIN, PASSWORD = "admin", "correct horse battery staple 42"
GREETINGS = "/apps/django/admin/django_hello/greeting/"
WRITES, WRITERS, READERS = 300, 4, 2

pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(NGINX is None, reason="no nginx binary: apt-get install nginx"),
    pytest.mark.skipif(not glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                       reason="no PostgreSQL server binaries (initdb): apt-get install postgresql"),
]


class Nginx:
    """nginx with the deploy/ configuration, ports replaced, in a scratch prefix."""

    def __init__(self, port: int, upstreams: tuple[int, int]) -> None:
        assert NGINX is not None
        # Not under pytest's tmp_path: its parents are 0700, and nginx's workers run as
        # "nobody" when the master is root.
        self.prefix = Path(tempfile.mkdtemp(prefix="gateway-nginx-", dir="/tmp"))
        self.prefix.chmod(0o755)
        text = (DEPLOY / "nginx-loopback.conf").read_text()
        for old, new in zip(LOOPBACK_PORTS, (port, *upstreams), strict=True):
            assert old in text, f"deploy/nginx-loopback.conf no longer has {old!r}; update this test"
            text = text.replace(old, f"127.0.0.1:{new}")
        shutil.copytree(DEPLOY / "snippets", self.prefix / "snippets")
        self.conf = self.prefix / "nginx.conf"
        self.conf.write_text(text)
        self.url = f"http://127.0.0.1:{port}"
        self.host = f"127.0.0.1:{port}"
        self.pid: int | None = None

    def start(self) -> None:
        """Check the configuration, start nginx and wait until it answers."""
        self._run("-t")
        self._run()
        self.pid = int((self.prefix / "nginx.pid").read_text())
        wait_until(lambda: _answers(self.url + "/healthz"), 15, lambda: f"nginx did not answer:\n{self.error_log}")

    def _run(self, *args: str) -> None:
        assert NGINX is not None
        result = subprocess.run([NGINX, "-e", "stderr", "-p", f"{self.prefix}/", "-c", str(self.conf), *args],
                                capture_output=True, text=True, timeout=30)
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
        """Stop nginx (its master by pid if -s stop does not), then remove the prefix."""
        pid = self.pid
        try:
            if pid is not None and _alive(pid):
                self._run("-s", "stop")
                wait_until(lambda: not _alive(pid), 10, "nginx did not stop within 10 s")
        finally:
            if pid is not None and _alive(pid):
                os.kill(pid, signal.SIGKILL)
            shutil.rmtree(self.prefix, ignore_errors=True)


@dataclass
class Deployment:
    nginx: Nginx
    instances: list[ServerProcess]
    start_instance: Callable[[int], ServerProcess]
    database: str
    postgres: Any
    stopped: list[ServerProcess] = field(default_factory=list)

    def logs(self, lines: int = 40) -> str:
        """The tails of every log, for assertion messages."""
        parts = [f"--- nginx error.log\n{tail(self.nginx.error_log, lines)}",
                 f"--- nginx access.log\n{tail(chr(10).join(self.nginx.access_log), lines)}"]
        parts += [f"--- gateway :{s.port}\n{tail(s.log, lines)}" for s in [*self.stopped, *self.instances]]
        return "\n".join(parts)

    def greetings(self, pattern: str) -> list[str]:
        rows = self.postgres.execute(
            f"SELECT language FROM django_hello_greeting WHERE language LIKE '{pattern}'", self.database)
        return [str(row[0]) for row in rows]


@pytest.fixture(scope="module")
def deployment(postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:  # type: ignore[no-untyped-def]
    """Migrate a database, start two instances on it and nginx in front of them."""
    database = postgres.create_database()
    shared = {
        "DATABASE_URL": postgres.url(database),
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(48),
        "FLASK_SECRET_KEY": secrets.token_urlsafe(48),
        "GATEWAY_ENV": "production",
        "GATEWAY_TRUSTED_PROXIES": "127.0.0.1",
        "GATEWAY_ALLOWED_HOSTS": "127.0.0.1,localhost",
    }
    env = server_env(tmp_path_factory.mktemp("migrate"), **shared, DJANGO_SUPERUSER_PASSWORD=PASSWORD)
    for args in (["migrate", "-v", "0"],
                 ["manage", "createsuperuser", "--noinput", "--username", ADMIN, "--email", "a@example.com"]):
        result = subprocess.run([*GATEWAY, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"gateway {args[0]} failed:\n{result.stderr}"

    servers: list[ServerProcess] = []

    def start_instance(port: int) -> ServerProcess:
        directory = tmp_path_factory.mktemp("instance")
        server = ServerProcess([*GATEWAY, "serve", "--port", str(port), *SERVE_ARGS], port=port,
                               env=server_env(directory, **shared), log_path=directory / f"gateway-{port}.log",
                               ready_path="/readyz")
        servers.append(server)
        return server

    ports = distinct_ports(3)
    nginx = Nginx(ports[0], (ports[1], ports[2]))
    try:
        with ThreadPoolExecutor(2) as pool:
            instances = list(pool.map(start_instance, ports[1:]))
        nginx.start()
        yield Deployment(nginx, instances, start_instance, database, postgres)
    finally:
        nginx.stop()
        for server in servers:
            server.stop()


# ---------------------------------------------------------------------------- helpers


def distinct_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


def wait_until(predicate: Callable[[], bool], timeout: float, message: str | Callable[[], str]) -> None:
    until(predicate, timeout, message, interval=0.2)


def _answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=2)
        return True
    except httpx.HTTPError:
        return False


def _alive(pid: int, *, group: bool = False) -> bool:
    """True if the process (or a process of its group) still runs; zombies do not count.

    An exited child of the stopped supervisor (multiprocessing's resource tracker) can
    stay a zombie where the container's init does not reap orphans.
    """
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, pgid = fields[0], int(fields[2])
        if state != "Z" and (pgid == pid if group else int(stat.parent.name) == pid):
            return True
    return False


def tail(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:])


def cookie(response: httpx.Response, name: str) -> dict[str, str]:
    """The attributes of the cookie ``name`` the response sets (names lower-case), value under ``""``."""
    for header in response.headers.get_list("set-cookie"):
        first, *attrs = (part.strip() for part in header.split(";"))
        if first.partition("=")[0] == name:
            found = {"": first.partition("=")[2]}
            found.update((a.partition("=")[0].lower(), a.partition("=")[2]) for a in attrs)
            return found
    raise AssertionError(f"no {name} cookie in {response.headers.get_list('set-cookie')}")


def form_token(html: str) -> str:
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    assert match, f"no CSRF token in the form:\n{html[:2000]}"
    return match.group(1)


def login(deployment: Deployment) -> httpx.Client:
    """Log in to the admin through nginx; every redirect stays under /apps/django/."""
    client = httpx.Client(base_url=deployment.nginx.url, timeout=15, headers={"Origin": deployment.nginx.url})
    response = client.get("/apps/django/admin/")
    assert response.status_code == 302, deployment.logs()
    assert response.headers["location"] == "/apps/django/admin/login/?next=/apps/django/admin/"
    page = client.get(response.headers["location"])
    assert page.status_code == 200
    csrf = cookie(page, "csrftoken")
    assert csrf["path"] == "/apps/django", csrf
    assert 'action="/apps/django/admin/login/?next=/apps/django/admin/"' in page.text
    assert 'href="/apps/django/static/admin/css/base.css"' in page.text
    response = client.post("/apps/django/admin/login/?next=/apps/django/admin/", data={
        "csrfmiddlewaretoken": form_token(page.text), "username": ADMIN, "password": PASSWORD,
        "next": "/apps/django/admin/"})
    assert response.status_code == 302, f"login failed: {response.status_code}\n{response.text[:2000]}"
    assert response.headers["location"] == "/apps/django/admin/"
    session = cookie(response, "sessionid")
    assert session["path"] == "/apps/django" and "httponly" in session, session
    return client


def admin_index_ok(response: httpx.Response) -> bool:
    return (response.status_code == 200 and "Site administration" in response.text
            and f'href="{GREETINGS}"' in response.text)


# ---------------------------------------------------------------------------- tests


@pytest.mark.parametrize(
    ("path", "status", "expected"),
    [
        pytest.param("/apps", 308, {"location": "/apps/"}, id="nginx-bare-apps"),
        pytest.param("/apps/flask", 308, {"location": "/apps/flask/"}, id="bare-flask"),
        pytest.param("/apps/django?x=1", 308, {"location": "/apps/django/?x=1"}, id="bare-django"),
        pytest.param("/apps/", 200, {"body": ['href="/apps/flask/"', 'href="/apps/django/"']}, id="index"),
        pytest.param("/apps/flask/", 200, {"body": ["Hello, World!", 'href="/apps/flask/static/style.css"',
                                                    'href="/apps/flask/greetings"']}, id="flask"),
        pytest.param("/apps/flask/static/style.css", 200, {"type": "text/css"}, id="flask-static"),
        pytest.param("/apps/django/", 200, {"body": ["Hello, Django!", 'href="/apps/django/admin/"',
                                                     'href="/apps/django/static/django_hello/style.css"']},
                     id="django"),
        pytest.param("/apps/django/static/django_hello/style.css", 200, {"type": "text/css"}, id="django-static"),
        pytest.param("/apps/django/static/admin/css/base.css", 200, {"type": "text/css"}, id="admin-static"),
        pytest.param("/apps/nowhere", 404, {"body": ['href="/apps/"']}, id="not-found"),
    ],
)
def test_pages_under_the_apps_prefix(deployment: Deployment, path: str, status: int,
                                     expected: dict[str, Any]) -> None:
    response = httpx.get(deployment.nginx.url + path, timeout=15)
    assert response.status_code == status, deployment.logs()
    if "location" in expected:
        # nginx's own redirect is absolute (absolute_redirect on), the gateway's relative.
        location = str(httpx.URL(deployment.nginx.url).join(response.headers["location"]))
        assert location == deployment.nginx.url + expected["location"]
    for text in expected.get("body", []):
        assert text in response.text
    if "type" in expected:
        assert response.headers["content-type"].startswith(expected["type"])


def test_flask_session_is_scoped_and_shared(deployment: Deployment) -> None:
    with httpx.Client(base_url=deployment.nginx.url, timeout=15) as client:
        response = client.get("/apps/flask/?name=Ada")
        session = cookie(response, "session")
        assert session["path"] == "/apps/flask", session
        for _ in range(4):  # round robin: both instances read the cookie
            assert "Hello, Ada!" in client.get("/apps/flask/").text
    for instance in deployment.instances:
        direct = httpx.get(instance.url + "/flask/", cookies={"session": session[""]}, timeout=15,
                           headers=proxied(deployment))
        assert "Hello, Ada!" in direct.text, instance.log[-3000:]


def proxied(deployment: Deployment) -> dict[str, str]:
    """The headers nginx adds for a request under /apps (sent from 127.0.0.1, a trusted proxy)."""
    return {"Host": deployment.nginx.host, "X-Forwarded-Host": deployment.nginx.host, "X-Forwarded-For": "127.0.0.1",
            "X-Forwarded-Proto": "http", "X-Forwarded-Prefix": "/apps"}


def test_admin_session_works_on_each_instance(deployment: Deployment) -> None:
    with contextlib.closing(login(deployment)) as client:
        assert admin_index_ok(client.get("/apps/django/admin/"))
        sessionid = client.cookies["sessionid"]
    for instance in deployment.instances:
        response = httpx.get(instance.url + "/django/admin/", cookies={"sessionid": sessionid}, timeout=15,
                             headers=proxied(deployment))
        assert admin_index_ok(response), f"instance :{instance.port}: {response.status_code}\n{instance.log[-3000:]}"


def readiness(url: str) -> tuple[int, dict[str, Any]]:
    response = httpx.get(url, timeout=15)
    return response.status_code, response.json()


def test_readiness_follows_the_database(deployment: Deployment, request: pytest.FixtureRequest) -> None:
    nginx = deployment.nginx.url
    probes = [nginx + "/apps/readyz", nginx + "/readyz"] + [s.url + "/readyz" for s in deployment.instances]
    for url in probes:
        assert readiness(url)[0] == 200, url
    client = login(deployment)
    request.addfinalizer(client.close)
    flask_statuses: list[int] = []
    deployment.postgres.stop()
    try:
        def all_failing() -> bool:
            flask_statuses.append(httpx.get(nginx + "/apps/flask/", timeout=15).status_code)
            return all(readiness(url)[0] == 503 for url in probes)

        wait_until(all_failing, 20, lambda: f"/readyz did not turn 503:\n{deployment.logs()}")
        for url in probes:
            status, body = readiness(url)
            assert status == 503 and body["status"] == "fail", (url, body)
            assert body["checks"]["database:default"].startswith("fail: OperationalError"), (url, body)
            assert body["checks"]["/flask"] == "ok", (url, body)
        for _ in range(10):
            flask_statuses.append(httpx.get(nginx + "/apps/flask/", timeout=15).status_code)
        admin = client.get("/apps/django/admin/")
        assert admin.status_code == 503 and admin.headers.get("retry-after") == "5", admin.text
    finally:
        deployment.postgres.start()
    assert set(flask_statuses) == {200}, flask_statuses

    def all_ready() -> bool:
        flask_statuses.append(httpx.get(nginx + "/apps/flask/", timeout=15).status_code)
        return all(readiness(url)[0] == 200 for url in probes)

    wait_until(all_ready, 30, lambda: f"/readyz did not return to 200:\n{deployment.logs()}")
    assert set(flask_statuses) == {200}, flask_statuses
    for _ in range(4):  # both instances, round robin
        assert admin_index_ok(client.get("/apps/django/admin/"))


@dataclass
class Outcome:
    """One request of the load: what was asked, what came back, and when."""

    method: str
    path: str
    started: float
    status: int = 0
    location: str = ""
    error: str = ""
    key: str = ""


def write_load(deployment: Deployment, cookies: str, token: str, keys: list[str], done: list[Outcome],
               stop: threading.Event) -> list[Outcome]:
    """POST the admin's add form once per key, as a browser logged in through nginx would."""
    outcomes = []
    headers = {"Cookie": cookies, "Origin": deployment.nginx.url}
    with httpx.Client(base_url=deployment.nginx.url, timeout=30) as client:
        for key in keys:
            if stop.is_set():
                break
            outcome = Outcome("POST", GREETINGS + "add/", time.monotonic(), key=key)
            try:
                response = client.post(outcome.path, headers={**headers, "X-Request-ID": key}, data={
                    "csrfmiddlewaretoken": token, "language": key, "text": f"Hello {key}", "_save": "Save"})
                outcome.status, outcome.location = response.status_code, response.headers.get("location", "")
            except httpx.HTTPError as exc:
                outcome.error = f"{type(exc).__name__}: {exc}"
            outcomes.append(outcome)
            done.append(outcome)
    return outcomes


def read_load(deployment: Deployment, stop: threading.Event) -> list[Outcome]:
    outcomes = []
    with httpx.Client(base_url=deployment.nginx.url, timeout=30) as client:
        while not stop.is_set():
            for path in ("/apps/flask/", "/apps/django/"):
                outcome = Outcome("GET", path, time.monotonic())
                try:
                    outcome.status = client.get(path).status_code
                except httpx.HTTPError as exc:
                    outcome.error = f"{type(exc).__name__}: {exc}"
                outcomes.append(outcome)
    return outcomes


def upstream_lines(deployment: Deployment, port: int) -> list[str]:
    """nginx's access-log lines of requests that the instance on ``port`` answered at the first try."""
    single = re.compile(rf"upstream=127\.0\.0\.1:{port} ustatus=\d")
    return [line for line in deployment.nginx.access_log if single.search(line)]


def failover_report(deployment: Deployment, victim: ServerProcess, outcomes: list[Outcome], killed: float,
                    exited: float, stored: set[str]) -> str:
    """What a reader needs to see when the failover goes wrong: failed requests and the logs around them."""
    logs = {s.port: s.log for s in [*deployment.stopped, *deployment.instances]}
    lines = [f"SIGTERM to :{victim.port} (pid {victim.proc.pid}) at +0.00 s; it exited with "
             f"{victim.proc.returncode} at +{exited - killed:.2f} s"]
    for o in outcomes:
        seen = [str(port) for port, text in logs.items() if o.key and f"[{o.key}]" in text]
        lines.append(f"  {o.method} {o.path} key={o.key or '-'} sent at {o.started - killed:+.2f} s -> "
                     f"{o.status or o.error} {o.location}; logged by instance(s): {', '.join(seen) or 'none'}; "
                     f"row stored: {o.key in stored}")
    access = deployment.nginx.access_log
    lines.append("--- nginx access.log: 5xx and retried requests (upstream list), "
                 f"{len(access)} lines in all")
    lines += [line for line in access if re.search(r'" 5\d\d ', line) or ", 127.0.0.1:" in line][-30:]
    lines.append("--- nginx error.log: [error] and [warn]")
    lines += [line for line in deployment.nginx.error_log.splitlines() if "[error]" in line or "[warn]" in line][-20:]
    own = [line for line in logs[victim.port].splitlines() if "gateway.access" not in line]
    lines.append(f"--- gateway :{victim.port}, all but the access lines")
    lines += own[-25:]
    return "\n".join(lines)


def test_failover_under_write_load(deployment: Deployment) -> None:
    """SIGTERM one instance (the main process, as KillMode=mixed does) while writes run."""
    with contextlib.closing(login(deployment)) as client:
        page = client.get(GREETINGS + "add/")
        assert page.status_code == 200, deployment.logs()
        token = form_token(page.text)
        cookies = f"sessionid={client.cookies['sessionid']}; csrftoken={client.cookies['csrftoken']}"
    run = secrets.token_hex(2)
    keys = [f"w{run}{i:04d}" for i in range(WRITES)]
    victim, survivor = deployment.instances
    done: list[Outcome] = []
    stop, abort = threading.Event(), threading.Event()
    with ThreadPoolExecutor(WRITERS + READERS) as pool:
        writers = [pool.submit(write_load, deployment, cookies, token, keys[i::WRITERS], done, abort)
                   for i in range(WRITERS)]
        readers = [pool.submit(read_load, deployment, stop) for _ in range(READERS)]
        try:
            wait_until(lambda: len(done) >= WRITES // 3 or any(f.done() for f in writers), 60,
                       "the writes did not get going")
            killed = time.monotonic()
            os.kill(victim.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                victim.proc.wait(30)  # --graceful-timeout 10, and some
            exited = time.monotonic()
            writes = [o for f in writers for o in f.result(timeout=120)]
            # With the drain, the writes may all be done before the instance exits: keep
            # reading a moment longer, so that traffic after the exit is checked too.
            time.sleep(max(0.0, exited + 1.0 - time.monotonic()))
        finally:
            stop.set()
            abort.set()
        reads = [o for f in readers for o in f.result(timeout=60)]
    deployment.instances.remove(victim)
    deployment.stopped.append(victim)
    code = victim.stop()  # the process is gone already, or gets SIGKILL here
    if leftover := _alive(victim.proc.pid, group=True):  # a worker outlived its supervisor
        os.killpg(victim.proc.pid, signal.SIGKILL)

    failed = [o for o in writes + reads if o.error or o.status >= 500]
    other = [o for o in writes if not o.error and o.status < 500 and (o.status, o.location) != (302, GREETINGS)]
    succeeded = {o.key for o in writes if (o.status, o.location) == (302, GREETINGS)}
    rows = deployment.greetings(f"w{run}%")
    report = failover_report(deployment, victim, failed + other, killed, exited, set(rows))
    summary = (f"{len(writes)} writes, {len(succeeded)} answered 302; {len(reads)} reads; "
               f"{len(failed)} requests failed")
    assert code == 0, f"the stopped instance did not exit 0 after draining: {summary}\n{report}"
    assert not leftover, f"a worker of the stopped instance was still running: {summary}\n{report}"
    assert len(writes) == WRITES, f"{summary}\n{report}"
    assert len(rows) == len(set(rows)), f"duplicate rows: {summary}\n{report}"
    assert set(rows) == succeeded, (
        f"rows without a success response: {sorted(set(rows) - succeeded)}; "
        f"success responses without a row: {sorted(succeeded - set(rows))}; {summary}\n{report}")
    assert not other, f"writes answered neither 302 to the list nor 5xx: {summary}\n{report}"
    after = [o for o in writes + reads if o.started > exited]
    assert after and all(o.status in {200, 302} for o in after), f"{summary}\n{report}"
    assert upstream_lines(deployment, survivor.port), report

    # The instance comes back on its port; nginx sends it requests again once its
    # fail_timeout (5 s) has passed.
    replacement = deployment.start_instance(victim.port)
    deployment.instances.insert(0, replacement)
    seen = len(upstream_lines(deployment, victim.port))

    def served_again() -> bool:
        assert httpx.get(deployment.nginx.url + "/apps/flask/", timeout=15).status_code == 200
        return len(upstream_lines(deployment, victim.port)) > seen

    wait_until(served_again, 20, lambda: f"nginx did not use the restarted instance:\n{deployment.logs()}")

    # Last, so that everything above is checked too: no client saw a 5xx. nginx retries a
    # GET on the other instance, but not a POST it has already sent (no "non_idempotent"
    # in proxy_next_upstream), so a POST sent to an instance that accepts the connection
    # and then resets it fails with a 502.
    assert not failed, f"clients saw 5xx or transport errors during the failover: {summary}\n{report}"
