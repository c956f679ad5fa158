"""Django's cache in Redis (``REDIS_URL``), on a private redis-server; sessions stay in the database."""

from __future__ import annotations

import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support import GATEWAY, ROOT, free_port, server_env

pytestmark = pytest.mark.server


@pytest.fixture
def redis_url(tmp_path) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A redis-server of the test's own on a free loopback port, nothing kept on disk."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    pytest.importorskip("redis", reason="the redis package is not installed (the redis extra)")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail("redis-server did not start")
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


def test_cache_is_redis_and_sessions_stay_in_the_database(start_gateway, redis_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Django's cache writes to Redis; a signed-in session is in the database and not in Redis
    (a sign-out must reach every host: django_hello/settings.py)."""
    import redis

    env = server_env(tmp_path, REDIS_URL=redis_url, DJANGO_SUPERUSER_PASSWORD="correct horse battery")
    subprocess.run([*GATEWAY, "migrate", "-v", "0"], cwd=ROOT, env=env, check=True, timeout=120)
    subprocess.run([sys.executable, "-m", "gateway", "manage", "createsuperuser", "--noinput",
                    "--username", "admin", "--email", "a@example.com"], cwd=ROOT, env=env, check=True, timeout=120)
    server = start_gateway(env={"REDIS_URL": redis_url}, data_dir=tmp_path)
    with httpx.Client(base_url=server.url) as client:
        login = client.get("/django/admin/login/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login.text)
        assert token
        done = client.post("/django/admin/login/?next=/django/admin/", data={
            "csrfmiddlewaretoken": token.group(1), "username": "admin", "password": "correct horse battery",
            "next": "/django/admin/"}, headers={"Referer": server.url + "/django/admin/login/"})
        assert (done.status_code, done.headers["location"]) == (302, "/django/admin/")
        session = client.cookies["sessionid"]
        assert "Site administration" in client.get("/django/admin/").text
    keys = [key.decode() for key in redis.Redis.from_url(redis_url).keys("*")]
    assert not any(session in key for key in keys), keys
    stored = sqlite3.connect(tmp_path / "django.sqlite3").execute(
        "SELECT count(*) FROM django_session WHERE session_key = ?", (session,)).fetchone()
    assert stored == (1,), stored
    code = "from django.core.cache import cache; cache.set('netns-probe', 42)"
    subprocess.run([*GATEWAY, "manage", "shell", "-c", code], cwd=ROOT, env=env, check=True, timeout=120)
    keys = [key.decode() for key in redis.Redis.from_url(redis_url).keys("*")]
    assert any(key.endswith("netns-probe") for key in keys), keys
