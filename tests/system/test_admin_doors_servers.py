"""The admin's doors on a real server (tests/integration/test_admin_doors.py has the rest, in
process): `gateway serve` in production with debug on exits with one line; on PostgreSQL,
malformed staff requests are a 4xx and the lock-out holds."""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT, csrf_token, free_port, server_env

pytestmark = pytest.mark.server


LOGIN = "/django/admin/login/?next=/django/admin/"

CHANGELIST = "/django/admin/django_hello/greeting/"

STRONG = secrets.token_urlsafe(50)


def test_gateway_serve_in_production_with_debug_on_exits_with_one_line(tmp_path: Path) -> None:
    env = server_env(tmp_path, GATEWAY_ENV="production", DJANGO_SECRET_KEY=STRONG, FLASK_SECRET_KEY=STRONG[::-1],
                     DJANGO_DEBUG="1")
    result = subprocess.run([sys.executable, "-m", "gateway", "serve", "--port", str(free_port())], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr == ('gateway: error: DJANGO_DEBUG="1" turns on Django\'s debug pages: unset it or set '
                             "DJANGO_DEBUG=0 (GATEWAY_ENV=production).\n")
    assert result.stdout == ""


def test_on_postgres_regex_and_bad_action_are_4xx_and_lock_out_holds(start_gateway, postgres,  # type: ignore[no-untyped-def]
                                                                     tmp_path: Path) -> None:
    import httpx

    database = postgres.create_database()
    url = postgres.url(database)
    password = secrets.token_urlsafe(16)
    env = server_env(tmp_path, DATABASE_URL=url, DJANGO_SUPERUSER_PASSWORD=password)
    for args in (["migrate", "-v", "0"],
                 ["manage", "createsuperuser", "--noinput", "--username", "pg-admin", "--email", "a@example.com"]):
        subprocess.run([sys.executable, "-m", "gateway", *args], cwd=ROOT, env=env, check=True,
                       capture_output=True, timeout=120)
    # axes' migrations applied with the rest by `gateway migrate`.
    assert postgres.execute("SELECT count(*) FROM django_migrations WHERE app = 'axes'", database)[0][0] >= 10
    server = start_gateway(env={"DATABASE_URL": url}, data_dir=tmp_path)

    def post_login(client: httpx.Client, secret: str) -> httpx.Response:
        token = csrf_token(client.get(LOGIN).text)
        return client.post(LOGIN, data={"csrfmiddlewaretoken": token, "username": "pg-admin", "password": secret,
                                        "next": "/django/admin/"})

    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert post_login(client, password).status_code == 302
        assert client.get(f"{CHANGELIST}?language__regex=(").status_code == 400
        token = csrf_token(client.get(CHANGELIST).text)
        action = client.post(CHANGELIST, data={"csrfmiddlewaretoken": token, "action": "delete_selected",
                                               "index": "0", "_selected_action": "abc"})
        assert action.status_code == 302 and action.headers["location"] == CHANGELIST
    with httpx.Client(base_url=server.url, timeout=30) as attacker:
        statuses = [post_login(attacker, "wrong-password").status_code for _ in range(5)]
        assert statuses == [200, 200, 200, 200, 429]
        assert post_login(attacker, password).status_code == 429
    rows = postgres.execute("SELECT host(ip_address), failures_since_start FROM axes_accessattempt", database)
    assert rows == [("127.0.0.1", 5)]
    log = server.wait_for('"GET /django/admin/django_hello/greeting/?language__regex=( HTTP/1.1" 400')
    assert "Traceback" not in log and " ERROR " not in log
    assert "Filtering by language__regex not allowed" in log
    assert "Admin action on django_hello.Greeting refused: 1 of 1 selected ids" in log
