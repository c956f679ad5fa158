"""Request IDs, proxy headers and the access log on a real `gateway serve`
(tests/integration/test_front.py has the same in process)."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.support import DEMO_MOUNTS

pytestmark = pytest.mark.server


def test_json_logs_one_access_line_per_request_with_request_id(start_gateway) -> None:  # type: ignore[no-untyped-def]
    server = start_gateway("--log-format", "json", *DEMO_MOUNTS, "--mount", "/faults=tests.thirdapp.rid:flask_app")
    httpx.get(server.url + "/flask/?name=x", headers={"X-Request-ID": "req-flask-1"})
    httpx.get(server.url + "/django/", headers={"X-Request-ID": "req-django-1"})
    httpx.get(server.url + "/faults/boom", headers={"X-Request-ID": "req-boom-1"})
    httpx.get(server.url + "/django/", headers={"X-Request-ID": "req-host-1", "Host": "evil.example"})
    server.stop()
    records = [json.loads(line) for line in server.log.splitlines() if line.startswith("{")]
    access = [r for r in records if r["logger"] == "gateway.access"]
    assert [(r["path"], r["status"], r["mount"], r["request_id"]) for r in access[-4:]] == [
        ("/flask/?name=x", 200, "/flask", "req-flask-1"),
        ("/django/", 200, "/django", "req-django-1"),
        ("/faults/boom", 500, "/faults", "req-boom-1"),
        ("/django/", 400, "-", "req-host-1"),  # refused before any app
    ]
    assert all(r["bytes"] > 0 and r["duration_ms"] >= 0 and r["client"] == "127.0.0.1" for r in access[-4:])
    errors = [r for r in records if r["level"] == "ERROR"]
    assert len(errors) == 1 and errors[0]["request_id"] == "req-boom-1"
    assert "Traceback" in errors[0]["exc_info"]
    assert server.log.count("Traceback") == 1


def test_proxy_headers_through_a_real_server_from_a_trusted_proxy(start_gateway) -> None:  # type: ignore[no-untyped-def]
    """uvicorn must not rewrite the client from X-Forwarded-For before the gateway decides."""
    server = start_gateway(env={"GATEWAY_TRUSTED_PROXIES": "127.0.0.1",
                                "GATEWAY_ALLOWED_HOSTS": "localhost,example.org"})
    headers = {"X-Forwarded-For": "203.0.113.5", "X-Forwarded-Prefix": "/apps", "X-Forwarded-Host": "example.org"}
    assert httpx.get(server.url + "/flask", headers=headers).headers["location"] == "/apps/flask/"
    admin = httpx.get(server.url + "/django/admin/", headers=headers)
    assert admin.headers["location"] == "/apps/django/admin/login/?next=/apps/django/admin/"
    server.wait_for('203.0.113.5 "GET /apps/flask HTTP/1.1" 308')  # the path the client asked for


def test_proxy_headers_from_an_untrusted_peer_are_ignored_by_a_real_server(start_gateway) -> None:  # type: ignore[no-untyped-def]
    server = start_gateway(env={"GATEWAY_TRUSTED_PROXIES": "10.0.0.1"})
    headers = {"X-Forwarded-For": "203.0.113.5", "X-Forwarded-Prefix": "/apps"}
    assert httpx.get(server.url + "/flask", headers=headers).headers["location"] == "/flask/"
    server.wait_for('127.0.0.1 "GET /flask HTTP/1.1" 308')


@pytest.mark.parametrize("args", [pytest.param(["--no-access-log"], id="flag"),
                                  pytest.param(["--log-level", "warning"], id="level")])
def test_access_log_can_be_turned_off(start_gateway, args: list[str]) -> None:  # type: ignore[no-untyped-def]
    server = start_gateway(*args, *DEMO_MOUNTS, "--mount", "/faults=tests.thirdapp.rid:flask_app")
    assert httpx.get(server.url + "/flask/").status_code == 200
    assert httpx.get(server.url + "/faults/boom", headers={"X-Request-ID": "still-logged"}).status_code == 500
    log = server.wait_for("[still-logged] Exception on /boom")  # errors are still written
    assert "gateway.access" not in log
