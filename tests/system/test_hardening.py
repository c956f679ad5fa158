"""Bad input and the gateway's security policy, over real HTTP against ``gateway serve``.

Most requests are written byte for byte on a socket (``tests.apps.rawhttp``), since a
normal client refuses to send them. For bad input, a test checks the status, that the
server logged no traceback and no ERROR line for it, and that it still serves. The
server runs the default mounts plus the test-only apps of ``tests/apps`` (echo views
that report what body reached the app). The table of rows is ``docs/hardening.md``.
"""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.apps import SERVE_ARGS, apps_env
from tests.apps.rawhttp import Connection, LogWatch, Response, chunked, http_request, request
from tests.support import GATEWAY, ROOT, ServerProcess, free_port, server_env

pytestmark = pytest.mark.server

MiB = 1024 * 1024
DEFAULT_LIMIT = 10 * MiB
ADMIN_PASSWORD = "correct-horse-battery-staple-42"
STRONG_KEY = secrets.token_urlsafe(50)

# Who answered, told by the body of each 404 page.
FLASK_404 = b"The requested URL was not found on the server"
DJANGO_404 = b"The requested resource was not found on this server"
GATEWAY_404 = b"No app is mounted at this path"


def start_server(directory: Path, *args: str, **env: str) -> ServerProcess:
    """``gateway serve`` with the test apps, its log and data in ``directory``."""
    port = free_port()
    return ServerProcess(
        [*GATEWAY, "serve", "--port", str(port), *SERVE_ARGS, *args],
        port=port,
        env=server_env(directory, **apps_env(directory), **env),
        log_path=directory / f"server-{port}.log",
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The gateway with its default settings, plus the test apps."""
    process = start_server(tmp_path_factory.mktemp("hardening"))
    yield process
    process.stop()


def data_dir(server: ServerProcess) -> Path:
    return server.log_path.parent


def get(server: ServerProcess, target: str | bytes, **kwargs: object) -> Response:
    return request(server.port, http_request("GET", target, **kwargs))  # type: ignore[arg-type]


# --- 1. Malformed percent-encoding and invalid UTF-8 in the path -------------------


@pytest.mark.parametrize(
    "target",
    [
        pytest.param(b"/flask/%zz", id="flask-bad-escape"),
        pytest.param(b"/django/%zz", id="django-bad-escape"),
        pytest.param(b"/%zz", id="index-bad-escape"),
        pytest.param(b"/flask/%ff%fe", id="flask-escaped-invalid-utf8"),
        pytest.param(b"/django/%ff%fe", id="django-escaped-invalid-utf8"),
        pytest.param(b"/django/%e2%82", id="django-truncated-utf8"),
        pytest.param(b"/flask/%00", id="flask-nul"),
        pytest.param(b"/django/%00", id="django-nul"),
        pytest.param(b"/flask/\xff\xfe", id="flask-raw-invalid-utf8"),
        pytest.param(b"/django/\xc3\xa9t\xc3\xa9", id="django-raw-utf8"),
        pytest.param(b"/django/admin/\xff", id="django-admin-raw-byte"),
    ],
)
def test_malformed_path_is_refused_cleanly(server: ServerProcess, target: bytes) -> None:
    watch = LogWatch(server)
    response = get(server, target)
    assert response.status in (400, 404), response
    assert b"Traceback" not in response.body
    watch.assert_clean()


# --- 2. Overlong URL, oversized headers ----------------------------------------------


@pytest.mark.parametrize("prefix", ["/", "/flask/", "/django/"])
def test_overlong_url_is_refused(server: ServerProcess, prefix: str) -> None:
    watch = LogWatch(server)
    response = get(server, prefix + "?q=" + "a" * 65536)
    assert response.status in (414, 400), response
    watch.assert_clean()


@pytest.mark.parametrize("prefix", ["/", "/flask/", "/django/"])
@pytest.mark.parametrize("size", [pytest.param(32 * 1024, id="32KB"), pytest.param(MiB, id="1MB")])
def test_oversized_headers_are_refused(server: ServerProcess, prefix: str, size: int) -> None:
    watch = LogWatch(server)
    response = get(server, prefix, headers=[(b"X-Big", b"a" * size)])
    # A server may also cut a 1 MB header block off with a reset; it must never serve it.
    refused = response.status in (431, 400) or (size >= MiB and response.status is None)
    assert refused, response
    watch.assert_clean()


def test_many_headers_are_refused(server: ServerProcess) -> None:
    watch = LogWatch(server)
    headers = [(f"X-H{i}".encode(), b"v" * 40) for i in range(2000)]
    response = get(server, "/flask/", headers=headers)
    assert response.status in (431, 400), response
    watch.assert_clean()


# --- 3. Invalid Host ----------------------------------------------------------------

BAD_HOSTS = [
    pytest.param([b"Host: evil.example"], id="foreign"),
    pytest.param([b"Host: a_b@c"], id="userinfo"),
    pytest.param([b"Host: <script>alert(1)</script>"], id="markup"),
    pytest.param([], id="missing"),
    pytest.param([b"Host: localhost", b"Host: localhost"], id="two-same"),
    pytest.param([b"Host: localhost", b"Host: evil.example"], id="two-different"),
]


@pytest.mark.parametrize("path", ["/", "/flask/", "/django/"])
@pytest.mark.parametrize("host_lines", BAD_HOSTS)
def test_invalid_host_is_refused(server: ServerProcess, path: str, host_lines: list[bytes]) -> None:
    watch = LogWatch(server)
    data = b"\r\n".join([f"GET {path} HTTP/1.1".encode(), *host_lines, b"Connection: close"])
    response = request(server.port, data + b"\r\n\r\n")
    assert response.status == 400, response
    assert b"<script>" not in response.body
    watch.assert_clean()


@pytest.mark.parametrize("path", ["/", "/flask/", "/django/"])
@pytest.mark.parametrize("host", [b"localhost", b"127.0.0.1", b"localhost:8000"])
def test_allowed_host_is_served(server: ServerProcess, path: str, host: bytes) -> None:
    assert get(server, path, host=host).status == 200


# --- 4. Bodies larger than the limit ------------------------------------------------


def send_head_and_some_body(port: int, path: str, length: int, *, timeout: float = 5.0) -> Response:
    """Announce ``length`` bytes, send 64 KiB of them, and wait for an answer."""
    with Connection(port, timeout=timeout) as conn:
        head = http_request(
            "POST", path, headers=[(b"Content-Length", str(length).encode()),
                                   (b"Content-Type", b"application/octet-stream")]
        )
        conn.send(head + b"x" * 65536)
        return conn.read_response(timeout=timeout)


def send_whole_body(port: int, path: str, body: bytes, *, timeout: float = 20.0) -> Response:
    data = http_request("POST", path, body=body,
                        headers=[(b"Content-Type", b"application/octet-stream")])
    return request(port, data, timeout=timeout)


def send_chunks_until_answered(port: int, path: str, limit: int) -> tuple[Response, int]:
    """Stream 1 MiB chunks until the server answers or 3x ``limit`` went out."""
    import select

    piece = b"y" * MiB
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    with Connection(port, timeout=5.0) as conn:
        conn.send(http_request("POST", path, headers=[(b"Transfer-Encoding", b"chunked")]))
        while conn.sent < 3 * limit:
            if select.select([conn.sock], [], [], 0)[0] or not conn.send(chunk):
                break
        try:
            return conn.read_response(timeout=5.0), conn.sent
        except OSError:
            return Response(reset=True), conn.sent


@pytest.mark.parametrize("path", ["/flask/", "/faults/echo", "/django/test/echo/", "/django/admin/login/"])
def test_oversized_body_is_refused_before_it_is_read(server: ServerProcess, path: str) -> None:
    watch = LogWatch(server)
    started = time.monotonic()
    response = send_head_and_some_body(server.port, path, 100 * 1000 * 1000)
    assert response.status == 413, response
    assert time.monotonic() - started < 5
    watch.assert_clean()


@pytest.mark.parametrize("path", ["/faults/echo", "/django/test/echo/"])
def test_chunked_body_past_the_limit_is_cut_off(server: ServerProcess, path: str) -> None:
    watch = LogWatch(server)
    response, sent = send_chunks_until_answered(server.port, path, DEFAULT_LIMIT)
    assert response.status == 413, f"{response!r} after {sent} bytes"
    assert sent < 3 * DEFAULT_LIMIT
    watch.assert_clean()


@pytest.mark.parametrize("path", ["/faults/echo", "/django/test/echo/"])
def test_body_under_the_default_limit_is_served(server: ServerProcess, path: str) -> None:
    body = random.Random(4).randbytes(3 * MiB)
    response = send_whole_body(server.port, path, body)
    assert response.status == 200, response
    assert json.loads(response.body)["length"] == len(body)


PER_MOUNT = {"GATEWAY_MAX_BODY_SIZE": str(4 * MiB), "GATEWAY_MAX_BODY_SIZES": f"/flask={MiB},/django={2 * MiB}"}


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The gateway with a 4 MiB default limit, 1 MiB for /flask and 2 MiB for /django."""
    process = start_server(tmp_path_factory.mktemp("limited"), **PER_MOUNT)
    yield process
    process.stop()


@pytest.mark.parametrize(
    ("path", "size", "status"),
    [
        # /flask/ answers POST with 405: a 413 shows the gateway refused it first.
        pytest.param("/flask/", MiB // 2, 405, id="flask-under"),
        pytest.param("/flask/", MiB + MiB // 2, 413, id="flask-over"),
        pytest.param("/django/test/echo/", MiB + MiB // 2, 200, id="django-under"),
        pytest.param("/django/test/echo/", 3 * MiB, 413, id="django-over"),
        pytest.param("/faults/echo", 3 * MiB, 200, id="default-under"),
        pytest.param("/faults/echo", 5 * MiB, 413, id="default-over"),
    ],
)
def test_per_mount_body_limits(limited: ServerProcess, path: str, size: int, status: int) -> None:
    watch = LogWatch(limited)
    if status == 413:
        response = send_head_and_some_body(limited.port, path, size)
    else:
        response = send_whole_body(limited.port, path, b"z" * size)
    assert response.status == status, response
    if status == 200:
        assert json.loads(response.body)["length"] == size
    watch.assert_clean()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param({}, [DEFAULT_LIMIT, DEFAULT_LIMIT], id="default"),
        pytest.param(PER_MOUNT, [MiB, 2 * MiB], id="per-mount"),
    ],
)
def test_app_limits_agree_with_the_gateway(tmp_path: Path, env: dict[str, str], expected: list[int]) -> None:
    code = (
        "import json\n"
        "from gateway.core.config import Config\n"
        "from gateway.serve.builder import load_table\n"
        "from gateway.adapters.wsgi import create_wsgi_app\n"
        "config = Config.from_env()\n"
        "create_wsgi_app(load_table(config), config)\n"
        "import flask_hello\n"
        "from django.conf import settings\n"
        "print(json.dumps([flask_hello.app.config['MAX_CONTENT_LENGTH'],"
        " settings.DATA_UPLOAD_MAX_MEMORY_SIZE]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=server_env(tmp_path, **env),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == expected


# --- 5. Chunked request bodies ------------------------------------------------------

ECHOES = [pytest.param("/faults/echo", id="flask"), pytest.param("/django/test/echo/", id="django")]


@pytest.mark.parametrize("path", ECHOES)
@pytest.mark.parametrize(
    "sizes",
    [pytest.param([65536], id="64k-chunks"), pytest.param([1, 10, 1000, 70000], id="mixed-chunks")],
)
def test_chunked_body_reaches_the_app_intact(server: ServerProcess, path: str, sizes: list[int]) -> None:
    import hashlib

    body = random.Random(5).randbytes(300_000)
    data = http_request("POST", path, headers=[(b"Transfer-Encoding", b"chunked")],
                        body=chunked(body, sizes))
    response = request(server.port, data)
    assert response.status == 200, response
    assert json.loads(response.body) == {"length": len(body), "sha256": hashlib.sha256(body).hexdigest()}


@pytest.mark.parametrize("path", ECHOES)
def test_chunk_extensions_and_trailers(server: ServerProcess, path: str) -> None:
    body = b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n"
    data = http_request("POST", path, headers=[(b"Transfer-Encoding", b"chunked")], body=body)
    response = request(server.port, data)
    assert response.status == 200, response
    assert json.loads(response.body)["length"] == len(b"hello world")


@pytest.mark.parametrize("path", ECHOES)
def test_content_length_body_reaches_the_app_intact(server: ServerProcess, path: str) -> None:
    body = random.Random(6).randbytes(300_000)
    response = send_whole_body(server.port, path, body)
    assert response.status == 200, response
    assert json.loads(response.body)["length"] == len(body)


@pytest.mark.parametrize("path", ECHOES)
@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"zz\r\nhello\r\n0\r\n\r\n", id="size-not-hex"),
        pytest.param(b"-5\r\nhello\r\n0\r\n\r\n", id="negative-size"),
        pytest.param(b"fffffffffffffffffffffff\r\nhello\r\n0\r\n\r\n", id="size-overflow"),
        pytest.param(b"5\nhello\n0\n\n", id="bare-lf"),
        pytest.param(b"5\r\nhelloXX0\r\n\r\n", id="no-crlf-after-data"),
        pytest.param(b"3\r\nhello\r\n0\r\n\r\n", id="data-longer-than-size"),
    ],
)
def test_bad_chunked_framing_is_refused(server: ServerProcess, path: str, body: bytes) -> None:
    watch = LogWatch(server)
    data = http_request("POST", path, headers=[(b"Transfer-Encoding", b"chunked")], body=body)
    response = request(server.port, data)
    assert response.status == 400, response
    watch.assert_clean()


# --- 6. Content-Length and Transfer-Encoding ----------------------------------------


@pytest.mark.parametrize("path", ECHOES)
@pytest.mark.parametrize(
    ("headers", "body", "statuses"),
    [
        pytest.param([b"Content-Length: 5", b"Transfer-Encoding: chunked"], b"0\r\n\r\n", (400,),
                     id="cl-and-te"),
        pytest.param([b"Transfer-Encoding: chunked", b"Content-Length: 5"], b"0\r\n\r\n", (400,),
                     id="te-and-cl"),
        pytest.param([b"Content-Length: -1"], b"", (400,), id="negative"),
        pytest.param([b"Content-Length: 5", b"Content-Length: 6"], b"hello!", (400,), id="conflicting"),
        pytest.param([b"Content-Length: 5, 6"], b"hello!", (400,), id="list"),
        pytest.param([b"Content-Length: five"], b"hello", (400,), id="not-a-number"),
        pytest.param([b"Content-Length: +5"], b"hello", (400,), id="plus-sign"),
        pytest.param([b"Transfer-Encoding: gzip"], b"hello", (400, 501), id="te-unknown"),
        pytest.param([b"Transfer-Encoding: chunked, gzip"], b"0\r\n\r\n", (400, 501),
                     id="te-chunked-not-last"),
    ],
)
def test_ambiguous_body_framing_is_refused(
    server: ServerProcess, path: str, headers: list[bytes], body: bytes, statuses: tuple[int, ...]
) -> None:
    watch = LogWatch(server)
    head = b"\r\n".join([f"POST {path} HTTP/1.1".encode(), b"Host: localhost", *headers,
                         b"Connection: close"])
    response = request(server.port, head + b"\r\n\r\n" + body)
    assert response.status in statuses, response
    watch.assert_clean()


# --- 7. Path traversal and prefix confusion -----------------------------------------

LEAKS = [b"create_app", b"SECRET_KEY", b"root:x:0:0", b"import "]


@pytest.mark.parametrize(
    "target",
    [
        pytest.param(b"/flask/static/../__init__.py", id="flask-dotdot"),
        pytest.param(b"/flask/static/%2e%2e/__init__.py", id="flask-encoded-dots"),
        pytest.param(b"/flask/static/%2E%2E/views.py", id="flask-encoded-dots-upper"),
        pytest.param(b"/flask/static/..%2f__init__.py", id="flask-encoded-slash"),
        pytest.param(b"/flask/static/..%2F..%2Fdjango_hello%2Fsettings.py", id="flask-to-django"),
        pytest.param(b"/flask/static/..%5c__init__.py", id="flask-encoded-backslash"),
        pytest.param(b"/flask/static/%2e%2e%5c__init__.py", id="flask-all-encoded-backslash"),
        pytest.param(b"/flask/static/..\\__init__.py", id="flask-raw-backslash"),
        pytest.param(b"/flask/static/%252e%252e/__init__.py", id="flask-double-encoded"),
        pytest.param(b"/flask/static//etc/passwd", id="flask-absolute"),
        pytest.param(b"/flask/static/%2fetc%2fpasswd", id="flask-absolute-encoded"),
        pytest.param(b"/django/static/../settings.py", id="django-dotdot"),
        pytest.param(b"/django/static/%2e%2e/settings.py", id="django-encoded-dots"),
        pytest.param(b"/django/static/..%2fsettings.py", id="django-encoded-slash"),
        pytest.param(b"/django/static/django_hello/..%2f..%2fsettings.py", id="django-app-dir"),
        pytest.param(b"/django/static/django_hello/%2e%2e%5c%2e%2e%5csettings.py", id="django-backslash"),
        pytest.param(b"/django/static/admin/..%2f..%2f..%2f..%2fdjango_hello%2fsettings.py",
                     id="django-admin-dir"),
        pytest.param(b"/django/static//etc/passwd", id="django-absolute"),
        pytest.param(b"/django/static/%2fetc%2fpasswd", id="django-absolute-encoded"),
    ],
)
def test_static_path_traversal_finds_nothing(server: ServerProcess, target: bytes) -> None:
    watch = LogWatch(server)
    response = get(server, target)
    if response.status in (301, 308):
        # Werkzeug merges the slashes of "static//etc": the redirect must stay in the
        # same static space, and lead nowhere.
        location = urlsplit(response.header("location") or "")
        assert location.netloc in ("", "localhost"), location
        assert location.path.startswith(target[: target.index(b"/static/") + 8].decode()), location
        response = get(server, location.path)
    assert response.status in (404, 400), response
    for leak in LEAKS:
        assert leak not in response.body
    watch.assert_clean()


@pytest.mark.parametrize(
    ("target", "owner"),
    [
        pytest.param(b"/flaskx", GATEWAY_404, id="flaskx"),
        pytest.param(b"/flaskx/", GATEWAY_404, id="flaskx-slash"),
        pytest.param(b"//flask/", GATEWAY_404, id="double-slash"),
        pytest.param(b"/FLASK/", GATEWAY_404, id="upper-case"),
        pytest.param(b"/./flask/", GATEWAY_404, id="dot-segment"),
        pytest.param(b"/%66lask/", FLASK_404, id="encoded-letter"),  # decoded to /flask/..., not /flask/
        pytest.param(b"/flask/../django/", FLASK_404, id="flask-dotdot-django"),
        pytest.param(b"/flask/..%2fdjango/", FLASK_404, id="flask-encoded-dotdot-django"),
        pytest.param(b"/flask%2f..%2fdjango/", FLASK_404, id="flask-all-encoded"),
        pytest.param(b"/django/../flask/", DJANGO_404, id="django-dotdot-flask"),
        pytest.param(b"/django/..%2fflask/", DJANGO_404, id="django-encoded-dotdot-flask"),
        pytest.param(b"/djangoadmin/", GATEWAY_404, id="djangoadmin"),
    ],
)
def test_prefix_confusion_never_reaches_the_other_app(
    server: ServerProcess, target: bytes, owner: bytes
) -> None:
    response = get(server, target)
    if target == b"/%66lask/":
        # "/%66lask/" is "/flask/" once decoded: Flask's index, not the gateway's 404.
        assert response.status == 200 and b"Hello, World!" in response.body, response
        return
    assert response.status == 404, response
    assert owner in response.body, response
    for other in {FLASK_404, DJANGO_404, GATEWAY_404} - {owner}:
        assert other not in response.body
    assert b"Hello" not in response.body


# --- 8. Cross-site scripting --------------------------------------------------------

PAYLOAD = '"><script>alert(1)</script>'
QUOTED = "%22%3E%3Cscript%3Ealert(1)%3C/script%3E"


def assert_escaped(response: Response) -> None:
    assert b"<script>alert(1)</script>" not in response.body, response
    assert b'"><script' not in response.body
    assert response.header("x-content-type-options") == "nosniff", response.headers


@pytest.mark.parametrize(
    "target",
    [
        pytest.param(f"/flask/?name={QUOTED}", id="flask-name"),
        pytest.param(f"/flask/{QUOTED}", id="flask-404"),
        pytest.param(f"/django/admin/login/?next={QUOTED}", id="admin-next"),
        pytest.param(f"/django/{QUOTED}/", id="django-404"),
        pytest.param(f"/{QUOTED}", id="gateway-404"),
        pytest.param(f"/django/admin/{QUOTED}/", id="admin-unknown"),
    ],
)
def test_echoed_input_is_escaped(server: ServerProcess, target: str) -> None:
    response = get(server, target)
    assert response.status in (200, 302, 404), response
    assert_escaped(response)


def test_flask_name_is_echoed_escaped(server: ServerProcess) -> None:
    response = get(server, f"/flask/?name={QUOTED}")
    assert b"&#34;&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in response.body


def test_admin_login_error_page_escapes_the_username(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url) as client:
        page = client.get("/django/admin/login/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
        assert token, page.text
        response = client.post("/django/admin/login/", data={
            "csrfmiddlewaretoken": token.group(1), "username": PAYLOAD, "password": "wrong"})
    assert response.status_code == 200
    assert "Please enter the correct username and password" in response.text
    assert "<script>alert(1)</script>" not in response.text
    assert "&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in response.text


# --- 9. CSRF on the admin -----------------------------------------------------------


@pytest.fixture(scope="module")
def admin(server: ServerProcess) -> Iterator[httpx.Client]:
    """An httpx client logged in to the admin as a superuser."""
    env = server_env(data_dir(server), **apps_env(data_dir(server)),
                     DJANGO_SUPERUSER_PASSWORD=ADMIN_PASSWORD)
    subprocess.run([*GATEWAY, "manage", "createsuperuser", "--noinput", "--username", "admin",
                    "--email", "admin@example.com"], cwd=ROOT, env=env, check=True,
                   capture_output=True, timeout=60)
    with httpx.Client(base_url=server.url) as client:
        page = client.get("/django/admin/login/")
        token = csrf_token(page.text)
        response = client.post("/django/admin/login/?next=/django/admin/", data={
            "csrfmiddlewaretoken": token, "username": "admin", "password": ADMIN_PASSWORD,
            "next": "/django/admin/"})
        assert response.status_code == 302, response.text
        yield client


def csrf_token(page: str) -> str:
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert match, page
    return match.group(1)


def greetings(server: ServerProcess, language: str) -> int:
    """Count rows of the Greeting table with ``language``, straight from the SQLite file."""
    with sqlite3.connect(f"file:{data_dir(server) / 'django.sqlite3'}?mode=ro", uri=True) as db:
        row = db.execute("SELECT COUNT(*) FROM django_hello_greeting WHERE language = ?",
                         (language,)).fetchone()
    return int(row[0])


ADD_URL = "/django/admin/django_hello/greeting/add/"


@pytest.mark.parametrize(
    "token",
    [pytest.param(None, id="no-token"), pytest.param("x" * 64, id="wrong-token")],
)
def test_admin_post_without_csrf_token_writes_nothing(
    server: ServerProcess, admin: httpx.Client, token: str | None
) -> None:
    watch = LogWatch(server)
    data = {"language": "csrf-" + (token or "none")[:5], "text": "should not be stored"}
    if token is not None:
        data["csrfmiddlewaretoken"] = token
    response = admin.post(ADD_URL, data=data)
    assert response.status_code == 403
    assert greetings(server, data["language"]) == 0
    watch.assert_clean()


def test_admin_post_with_csrf_token_writes(server: ServerProcess, admin: httpx.Client) -> None:
    # The control: the same request with the token is stored, so the test above can fail.
    token = csrf_token(admin.get(ADD_URL).text)
    response = admin.post(ADD_URL, data={"csrfmiddlewaretoken": token, "language": "csrf-ok",
                                         "text": "stored"})
    assert response.status_code == 302, response.text
    assert greetings(server, "csrf-ok") == 1


def test_login_post_without_csrf_cookie_is_forbidden(server: ServerProcess) -> None:
    response = httpx.post(server.url + "/django/admin/login/",
                          data={"username": "admin", "password": ADMIN_PASSWORD})
    assert response.status_code == 403
    assert "sessionid" not in response.cookies


# --- 10. Methods --------------------------------------------------------------------

PATHS = [pytest.param("/", id="index"), pytest.param("/flask/", id="flask"),
         pytest.param("/django/", id="django")]


@pytest.mark.parametrize("path", PATHS)
def test_trace_is_refused_and_never_echoed(server: ServerProcess, path: str) -> None:
    response = request(server.port, http_request(
        "TRACE", path, headers=[(b"X-Secret", b"trace-me-7f3a"), (b"Cookie", b"sessionid=s3cr3t")]))
    assert response.status in (400, 405, 501), response
    assert b"trace-me-7f3a" not in response.body and b"s3cr3t" not in response.body
    assert response.header("content-type") != "message/http"


@pytest.mark.parametrize("path", PATHS)
def test_options_is_refused_or_answered_with_allow(server: ServerProcess, path: str) -> None:
    response = request(server.port, http_request("OPTIONS", path))
    if response.status in (200, 204):
        assert response.header("allow"), response
    else:
        assert response.status in (405, 501), response


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("method", ["FOO", "PROPFIND", "BREW"])
def test_unknown_method_is_refused(server: ServerProcess, path: str, method: str) -> None:
    watch = LogWatch(server)
    response = request(server.port, http_request(method, path))
    assert response.status in (400, 403, 405, 501), response
    watch.assert_clean()


@pytest.mark.parametrize("path", [*PATHS, pytest.param("/django/admin/login/", id="admin"),
                                  pytest.param("/flask/static/style.css", id="flask-static")])
def test_head_has_the_headers_of_get_and_no_body(server: ServerProcess, path: str) -> None:
    got = get(server, path)
    with Connection(server.port) as conn:
        conn.send(http_request("HEAD", path))
        head = conn.read_response(head=True)
        rest = conn.read_rest()
    assert head.status == got.status == 200
    assert rest == b"", "a HEAD response carried a body"
    assert head.header("content-type") == got.header("content-type")


# --- 11. Thousands of parameters or fields ------------------------------------------


def fields(count: int) -> bytes:
    return "&".join(f"f{i}=1" for i in range(count)).encode()


@pytest.mark.parametrize(
    ("path", "statuses"),
    [
        # Django parses the query of the admin login page (for ?next=): its field limit applies.
        pytest.param("/django/admin/login/", (400, 413, 414), id="django"),
        # Werkzeug has no limit on query parameters: it must just not take long.
        pytest.param("/flask/", (200, 400, 413, 414), id="flask"),
    ],
)
def test_thousands_of_query_parameters(server: ServerProcess, path: str, statuses: tuple[int, ...]) -> None:
    watch = LogWatch(server)
    started = time.monotonic()
    response = get(server, path.encode() + b"?" + fields(5000))
    assert time.monotonic() - started < 1.0
    assert response.status in statuses, response
    watch.assert_clean()


def test_thousands_of_urlencoded_fields_to_django(server: ServerProcess) -> None:
    watch = LogWatch(server)
    body = fields(10000)
    started = time.monotonic()
    response = request(server.port, http_request("POST", "/django/test/form/", body=body, headers=[
        (b"Content-Type", b"application/x-www-form-urlencoded")]))
    assert time.monotonic() - started < 1.0
    assert response.status in (400, 413), response
    watch.assert_clean()


def test_thousands_of_multipart_parts_to_flask(server: ServerProcess) -> None:
    watch = LogWatch(server)
    boundary = b"b0undary"
    parts = b"".join(
        b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"f%d\"\r\n\r\n1\r\n" % i
        for i in range(5000)
    )
    body = parts + b"--" + boundary + b"--\r\n"
    started = time.monotonic()
    response = request(server.port, http_request("POST", "/faults/form", body=body, headers=[
        (b"Content-Type", b"multipart/form-data; boundary=" + boundary)]))
    assert time.monotonic() - started < 1.0
    assert response.status in (400, 413), response
    watch.assert_clean()


# --- 12. Slow clients ---------------------------------------------------------------
# uvicorn (httptools and h11 alike) arms no timer until a first response has gone out:
# a connection that sends nothing, or trickles its headers, stays open for good
# (Kludex/uvicorn#157). Its keep-alive timeout (5 s) only covers the wait between
# requests. Granian closes both after its HTTP/1 header read timeout (30 s).

SLOW_CLIENT_BOUND = 10.0


def idle_keep_alive(port: int) -> tuple[int | None, bool, float]:
    """A response, then nothing: its status, whether the server closed, and when."""
    with Connection(port) as conn:
        conn.send(http_request("GET", "/flask/", headers=[(b"Connection", b"keep-alive")]))
        status = conn.read_response().status
        started = time.monotonic()
        closed = conn.wait_closed(SLOW_CLIENT_BOUND)
        return status, closed, time.monotonic() - started


def silent(port: int) -> bool:
    """Nothing at all: whether the server closed."""
    with Connection(port) as conn:
        return conn.wait_closed(SLOW_CLIENT_BOUND)


def trickle(port: int) -> bool:
    """A header byte every 0.5 s: whether the server closed before SLOW_CLIENT_BOUND."""
    head = b"GET /flask/ HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 1000
    with Connection(port) as conn:
        deadline = time.monotonic() + SLOW_CLIENT_BOUND
        for byte in head:
            if time.monotonic() > deadline or not conn.send(bytes([byte])):
                break
            if conn.wait_closed(0.5):
                return True
        return False


@pytest.fixture(scope="module")
def slow_clients(server: ServerProcess) -> Iterator[dict[str, Future[Any]]]:
    """The three slow clients, started together: each waits out the same 5 s timeout, and
    each test below reads its own client's outcome."""
    with ThreadPoolExecutor(3) as pool:
        yield {"idle": pool.submit(idle_keep_alive, server.port), "silent": pool.submit(silent, server.port),
               "trickle": pool.submit(trickle, server.port)}


def test_idle_keep_alive_connection_is_closed(slow_clients: dict[str, Future[Any]]) -> None:
    status, closed, waited = slow_clients["idle"].result()
    assert status == 200
    assert closed
    assert waited < SLOW_CLIENT_BOUND


def test_silent_connection_is_closed(slow_clients: dict[str, Future[Any]]) -> None:
    assert slow_clients["silent"].result(), "a connection that sent nothing is still open"


def test_trickled_headers_are_cut_off(slow_clients: dict[str, Future[Any]]) -> None:
    assert slow_clients["trickle"].result(), f"still connected after trickling headers for {SLOW_CLIENT_BOUND} s"


# --- Security headers, set once at the gateway --------------------------------------


def assert_security_headers(headers: list[tuple[str, str]]) -> None:
    def values(name: str) -> list[str]:
        return [v for n, v in headers if n.lower() == name]

    assert values("x-content-type-options") == ["nosniff"], headers
    assert len(values("referrer-policy")) == 1, headers
    assert len(values("cross-origin-opener-policy")) == 1, headers
    frames = values("x-frame-options")
    csp = " ".join(values("content-security-policy"))
    assert len(frames) == 1 or "frame-ancestors" in csp, headers


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/", id="index"),
        pytest.param("/nothing/here", id="gateway-404"),
        pytest.param("/flask/", id="flask"),
        pytest.param("/flask/nope", id="flask-404"),
        pytest.param("/flask/static/style.css", id="flask-static"),
        pytest.param("/flask", id="flask-redirect"),
        pytest.param("/django/", id="django"),
        pytest.param("/django/nope/", id="django-404"),
        pytest.param("/django/admin/login/", id="admin"),
        pytest.param("/faults/boom", id="flask-500"),
        pytest.param("/django/test/boom/", id="django-500"),
    ],
)
def test_security_headers_everywhere(server: ServerProcess, path: str) -> None:
    response = get(server, path)
    assert response.status is not None, response
    assert_security_headers(response.headers)


@pytest.mark.parametrize("host_line", [b"Host: evil.example", b"Host: a_b@c"])
def test_security_headers_on_refusals(server: ServerProcess, host_line: bytes) -> None:
    response = request(server.port, b"GET /django/ HTTP/1.1\r\n" + host_line + b"\r\nConnection: close\r\n\r\n")
    assert response.status == 400
    assert_security_headers(response.headers)


def test_app_security_headers_are_not_overridden(server: ServerProcess) -> None:
    django = get(server, "/django/")
    assert django.header_all("x-frame-options") == ["DENY"]
    assert django.header_all("referrer-policy") == ["same-origin"]
    own = get(server, "/faults/own-headers")
    assert own.header_all("x-frame-options") == ["SAMEORIGIN"]
    assert own.header_all("referrer-policy") == ["no-referrer"]
    assert own.header_all("cross-origin-opener-policy") == ["unsafe-none"]
    assert own.header_all("x-content-type-options") == ["nosniff"]


@pytest.mark.parametrize("client_name", ["wsgi_client", "asgi_client"])
@pytest.mark.parametrize("path", ["/", "/flask/", "/django/", "/nothing"])
def test_security_headers_in_process(request: pytest.FixtureRequest, client_name: str, path: str) -> None:
    client = request.getfixturevalue(client_name)
    response = client.get(path)
    assert_security_headers([(k.lower(), v) for k, v in response.headers.items()])


# --- DEBUG off, secret keys, check --deploy -----------------------------------------


def test_django_404_is_not_the_debug_page(server: ServerProcess) -> None:
    response = get(server, "/django/no/such/page/")
    assert response.status == 404
    for text in (b"URLconf", b"urlpatterns", b"Django tried these URL patterns", b"DEBUG = True",
                 b"test/echo/"):
        assert text not in response.body


def wait_exit_or_serve(args: list[str], env: dict[str, str], port: int, timeout: float = 30.0
                       ) -> subprocess.CompletedProcess[str]:
    """Run ``gateway serve``; fail the test if it answers on ``port`` instead of exiting."""
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            with socket.socket() as sock:
                sock.settimeout(0.5)
                # Serving means answering: uvicorn's socket listens (and the kernel accepts
                # connections) while the checks run, before the process refuses and exits;
                # under a full run's load a bare connect landed in that window. And the
                # answer must be our process's, not another's that took the free port.
                if sock.connect_ex(("127.0.0.1", port)) == 0 and answers(sock) and proc.pid in listeners(port):
                    pytest.fail("gateway serve started serving instead of refusing to start")
            time.sleep(0.1)
        if proc.poll() is None:
            pytest.fail(f"gateway serve neither served nor exited within {timeout} s")
        out, err = proc.communicate(timeout=5)
        return subprocess.CompletedProcess(args, proc.returncode, out, err)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()  # waits, and closes the pipes even when the test failed


def answers(sock: socket.socket) -> bool:
    """Whether an HTTP request on the connected ``sock`` gets an HTTP answer."""
    try:
        sock.sendall(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
        return sock.recv(5) == b"HTTP/"
    except OSError:  # reset or timed out: the process exited, or is not serving yet
        return False


def listeners(port: int) -> set[int]:
    """The process groups of the processes listening on ``port`` of 127.0.0.1 (``ss``)."""
    out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True).stdout
    groups = set()
    for pid in re.findall(r"pid=(\d+)", out):
        try:
            groups.add(os.getpgid(int(pid)))
        except ProcessLookupError:
            continue
    return groups


@pytest.mark.parametrize(
    ("keys", "named"),
    [
        pytest.param({}, "SECRET_KEY", id="both-missing"),
        pytest.param({"FLASK_SECRET_KEY": STRONG_KEY}, "DJANGO_SECRET_KEY", id="django-missing"),
        pytest.param({"DJANGO_SECRET_KEY": STRONG_KEY}, "FLASK_SECRET_KEY", id="flask-missing"),
        pytest.param({"DJANGO_SECRET_KEY": "changeme", "FLASK_SECRET_KEY": STRONG_KEY},
                     "DJANGO_SECRET_KEY", id="django-weak"),
        pytest.param({"DJANGO_SECRET_KEY": "django-insecure-" + "ab" * 30, "FLASK_SECRET_KEY": STRONG_KEY},
                     "DJANGO_SECRET_KEY", id="django-insecure-prefix"),
        pytest.param({"DJANGO_SECRET_KEY": STRONG_KEY, "FLASK_SECRET_KEY": "secret"},
                     "FLASK_SECRET_KEY", id="flask-weak"),
    ],
)
def test_production_refuses_missing_or_weak_keys(tmp_path: Path, keys: dict[str, str], named: str) -> None:
    port = free_port()
    result = wait_exit_or_serve([*GATEWAY, "serve", "--port", str(port)],
                                server_env(tmp_path, GATEWAY_ENV="production", **keys), port)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert named in lines[0]
    assert "Traceback" not in result.stdout + result.stderr


def test_production_with_strong_keys_serves(start_gateway) -> None:  # type: ignore[no-untyped-def]
    server = start_gateway(env={"GATEWAY_ENV": "production", "DJANGO_SECRET_KEY": STRONG_KEY,
                                "FLASK_SECRET_KEY": secrets.token_urlsafe(50)})
    for path in ("/", "/flask/", "/django/"):
        assert get(server, path).status == 200


def test_development_keys_are_kept_across_restarts(
    start_gateway, tmp_path_factory: pytest.TempPathFactory  # type: ignore[no-untyped-def]
) -> None:
    directory = tmp_path_factory.mktemp("keys")
    first = start_gateway(data_dir=directory)
    env = server_env(directory, DJANGO_SUPERUSER_PASSWORD=ADMIN_PASSWORD)
    subprocess.run([*GATEWAY, "manage", "createsuperuser", "--noinput", "--username", "keeper",
                    "--email", "k@example.com"], cwd=ROOT, env=env, check=True, capture_output=True,
                   timeout=60)
    with httpx.Client(base_url=first.url) as client:
        client.get("/flask/?name=Keeper")
        token = csrf_token(client.get("/django/admin/login/").text)
        login = client.post("/django/admin/login/", data={
            "csrfmiddlewaretoken": token, "username": "keeper", "password": ADMIN_PASSWORD,
            "next": "/django/admin/"})
        assert login.status_code == 302
        cookies = dict(client.cookies.items())
    first.stop()
    second = start_gateway(data_dir=directory)
    with httpx.Client(base_url=second.url, cookies=cookies) as client:
        assert "Hello, Keeper!" in client.get("/flask/").text  # Flask's signed session
        assert client.get("/django/admin/").status_code == 200  # Django's session auth hash


def run_check(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GATEWAY, "check", "--deploy"], cwd=ROOT, env=server_env(tmp_path, **env),
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "env",
    [
        pytest.param({}, id="development-defaults"),
        pytest.param({"GATEWAY_ENV": "production", "DJANGO_SECRET_KEY": "changeme",
                      "FLASK_SECRET_KEY": STRONG_KEY}, id="weak-key"),
        pytest.param({"GATEWAY_ENV": "production", "DJANGO_SECRET_KEY": STRONG_KEY,
                      "FLASK_SECRET_KEY": STRONG_KEY[::-1], "DJANGO_DEBUG": "1"}, id="debug-on"),
    ],
)
def test_check_deploy_fails_on_problems(tmp_path: Path, env: dict[str, str]) -> None:
    result = run_check(tmp_path, **env)
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_check_deploy_passes_when_configured_well(tmp_path: Path) -> None:
    result = run_check(tmp_path, GATEWAY_ENV="production", DJANGO_SECRET_KEY=STRONG_KEY,
                       FLASK_SECRET_KEY=STRONG_KEY[::-1], GATEWAY_HTTPS="1", GATEWAY_TRUSTED_PROXIES="10.0.0.1",
                       GATEWAY_ALLOWED_HOSTS="gateway.example.com")
    assert result.returncode == 0, result.stdout + result.stderr
