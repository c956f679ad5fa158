"""The gateway over real HTTP: ``gateway serve`` (uvicorn), gunicorn and Werkzeug's server."""

from __future__ import annotations

import asyncio
import http.cookiejar
import re
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.support import until

pytestmark = pytest.mark.server

SERVERS = ["gateway_server", "gunicorn_server", "werkzeug_server"]


@pytest.fixture(params=SERVERS)
def server(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """Each real server in turn."""
    return request.getfixturevalue(request.param)


@pytest.mark.parametrize(
    ("path", "status", "text"),
    [
        pytest.param("/", 200, "/django/", id="index"),
        pytest.param("/flask/?name=%3Cb%3EAda", 200, "Hello, &lt;b&gt;Ada!", id="flask"),
        pytest.param("/django/", 200, "Hello, Django!", id="django"),
        pytest.param("/flaskx", 404, "Not Found", id="flaskx"),
        pytest.param("/django/static/admin/css/base.css", 200, "body", id="admin-css"),
        pytest.param("/flask/static/style.css", 200, "font-family", id="flask-css"),
    ],
)
def test_pages(server, path: str, status: int, text: str) -> None:  # type: ignore[no-untyped-def]
    response = httpx.get(server.url + path)
    assert response.status_code == status
    assert text in response.text


@pytest.mark.parametrize("prefix", ["/flask", "/django"])
def test_slash_redirect_keeps_query(server, prefix: str) -> None:  # type: ignore[no-untyped-def]
    response = httpx.get(f"{server.url}{prefix}?a=1")
    assert response.status_code == 308
    assert response.headers["location"] == f"{prefix}/?a=1"


def test_admin_login_round_trip(server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Log into the admin under /django/ with CSRF and session cookies; stay under /django/."""
    import subprocess
    import sys

    from tests.support import ROOT, server_env

    env = server_env(server.log_path.parent, DJANGO_SUPERUSER_PASSWORD="correct horse battery")
    subprocess.run(
        [sys.executable, "-m", "gateway", "manage", "createsuperuser", "--noinput",
         "--username", f"admin-{server.port}", "--email", "admin@example.com"],
        cwd=ROOT, env=env, check=True, capture_output=True,
    )
    jar = http.cookiejar.CookieJar()
    visited: list[str] = []

    class Record(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
            visited.append(urllib.parse.urlsplit(newurl).path)
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), Record())
    with opener.open(server.url + "/django/admin/") as page:
        assert page.url.endswith("/django/admin/login/?next=/django/admin/")
        html = page.read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    assert token
    assert {c.name: c.path for c in jar} == {"csrftoken": "/django"}
    form = urllib.parse.urlencode({
        "csrfmiddlewaretoken": token.group(1), "username": f"admin-{server.port}",
        "password": "correct horse battery", "next": "/django/admin/",
    }).encode()
    request = urllib.request.Request(server.url + "/django/admin/login/?next=/django/admin/", data=form,
                                     headers={"Referer": server.url + "/django/admin/login/"})
    with opener.open(request) as page:
        assert urllib.parse.urlsplit(page.url).path == "/django/admin/"
        assert "Site administration" in page.read().decode()
    assert {c.name: c.path for c in jar} == {"csrftoken": "/django", "sessionid": "/django"}
    assert visited and all(p.startswith("/django/") for p in visited)


def test_cookie_paths(server) -> None:  # type: ignore[no-untyped-def]
    flask = httpx.get(server.url + "/flask/?name=Ada")
    assert re.search(r"session=[^;]+;.*Path=/flask\b", flask.headers["set-cookie"])
    django = httpx.get(server.url + "/django/admin/login/")
    assert re.search(r"^csrftoken=[^;]+;.*Path=/django\b", django.headers["set-cookie"])


def test_64_concurrent_requests_all_succeed(server) -> None:  # type: ignore[no-untyped-def]
    paths = ["/flask/", "/django/", "/flask/?name=x", "/django/admin/login/"] * 16

    async def run() -> list[int]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=30) as client:
            responses = await asyncio.gather(*(client.get(p) for p in paths))
        return [r.status_code for r in responses]

    assert asyncio.run(run()) == [200] * 64


def test_wsgi_threads_serve_64_blocking_requests_at_once(start_gateway) -> None:  # type: ignore[no-untyped-def]
    """64 requests that block until all 64 are in the app: the pool is not 10 threads wide."""
    server = start_gateway("--mount", "/slow=tests.thirdapp.slow:app")
    with ThreadPoolExecutor(64) as pool:
        responses = list(pool.map(lambda _: httpx.get(server.url + "/slow/", timeout=60), range(64)))
    assert [(r.status_code, r.text) for r in responses] == [(200, "met")] * 64


def test_third_app_mounts(start_gateway) -> None:  # type: ignore[no-untyped-def]
    server = start_gateway("--mount", "/asgi=tests.thirdapp:asgi_app", "--mount", "/wsgi/x=tests.thirdapp:wsgi_app")
    response = httpx.get(server.url + "/asgi/a/b?q=1")
    assert response.text == "asgi root_path=/asgi path=/asgi/a/b"
    assert "Path=/asgi" in response.headers["set-cookie"]
    assert httpx.get(server.url + "/wsgi/x/y").text == "wsgi script_name=/wsgi/x path_info=/y"
    assert httpx.get(server.url + "/asgi").headers["location"] == "/asgi/"
    # Apps of its own: no demo app is mounted beside them.
    assert httpx.get(server.url + "/django/").status_code == 404
    index = httpx.get(server.url + "/").text
    assert 'href="/asgi/"' in index and 'href="/wsgi/x/"' in index and 'href="/flask/"' not in index


def test_shutdown_is_clean(start_gateway) -> None:  # type: ignore[no-untyped-def]
    server = start_gateway()
    assert httpx.get(server.url + "/flask/").status_code == 200
    assert server.stop() == 0
    log = server.log
    assert "Application startup complete" in log
    assert "Application shutdown complete" in log
    assert "Traceback" not in log and "ERROR" not in log


def test_websocket_to_wsgi_mount_is_refused_without_traceback(start_gateway) -> None:  # type: ignore[no-untyped-def]
    import base64
    import os
    import socket

    server = start_gateway()
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(
            f"GET /flask/ HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        status_line = sock.recv(4096).split(b"\r\n", 1)[0]
    assert status_line == b"HTTP/1.1 403 Forbidden"
    assert httpx.get(server.url + "/flask/").status_code == 200
    assert "Traceback" not in server.log


@pytest.mark.parametrize("server_name", ["uvicorn", "granian"])
def test_workers_serve_and_stop_cleanly(start_gateway, server_name: str) -> None:  # type: ignore[no-untyped-def]
    server = start_gateway("--workers", "2", "--server", server_name)
    for _ in range(20):
        assert httpx.get(server.url + "/flask/").status_code == 200
        response = httpx.get(server.url + "/django/")
        assert response.status_code == 200 and "Hello, Django!" in response.text
    assert f"on {server_name}: 2 worker(s)" in server.log
    assert server.stop() == 0
    assert "Traceback" not in server.log


@pytest.mark.parametrize("workers", ["1", "2"])
def test_drain_delay_keeps_serving_then_exits(start_gateway, workers: str) -> None:  # type: ignore[no-untyped-def]
    import os
    import signal
    import time

    server = start_gateway("--drain-delay", "3", "--workers", workers)
    with httpx.Client(base_url=server.url) as client:
        assert client.get("/flask/").headers.get("connection") != "close"
        signalled = time.monotonic()
        os.kill(server.proc.pid, signal.SIGTERM)
        # Draining begins as the server handles the signal: /readyz says so within the drain delay.
        ready = until(lambda: [r for r in [client.get("/readyz")] if r.status_code == 503], 2.5,
                      "/readyz did not turn 503")[0]
        assert ready.json()["status"] == "draining"
        page = client.get("/django/")
        assert page.status_code == 200 and page.headers["connection"] == "close"
    assert server.proc.wait(timeout=20) == 0
    assert 3 <= time.monotonic() - signalled < 10
    assert "draining for 3.0 s" in server.log


def test_keep_alive_option_closes_idle_connections(start_gateway) -> None:  # type: ignore[no-untyped-def]
    import socket
    import time

    server = start_gateway("--keep-alive", "1")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /flask/ HTTP/1.1\r\nHost: localhost\r\n\r\n")
        sent = time.monotonic()
        received = b""
        while chunk := sock.recv(65536):  # the response, then the end of the stream
            received += chunk
        closed_after = time.monotonic() - sent
    assert received.startswith(b"HTTP/1.1 200") and b"Hello, World!" in received
    assert closed_after < 5  # the server closed the idle connection; the default would wait 5 s


def test_https_setting_marks_both_apps_cookies_secure(start_gateway) -> None:  # type: ignore[no-untyped-def]
    server = start_gateway(env={"GATEWAY_HTTPS": "1", "GATEWAY_TRUSTED_PROXIES": "127.0.0.1"})
    https = {"X-Forwarded-Proto": "https"}  # as the TLS-terminating proxy in front says
    flask = httpx.get(server.url + "/flask/?name=Ada", headers=https)
    assert "Secure" in flask.headers["set-cookie"] and "Path=/flask" in flask.headers["set-cookie"]
    django = httpx.get(server.url + "/django/admin/login/", headers=https)
    assert "Secure" in django.headers["set-cookie"] and "Path=/django" in django.headers["set-cookie"]
    assert django.headers["strict-transport-security"].startswith("max-age=31536000")
    # Plain HTTP from the client is sent to HTTPS by Django (SECURE_SSL_REDIRECT).
    assert httpx.get(server.url + "/django/").headers["location"].startswith("https://")
