"""Flask reads Django's data through the ORM in the same process, without leaking connections."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.support import GATEWAY, ROOT, server_env

pytestmark = pytest.mark.server

REQUESTS = 300


def manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run([*GATEWAY, "manage", *args], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120, check=True)
    return result.stdout


def add_greeting(env: dict[str, str]) -> None:
    manage(env, "shell", "-c",
           "from django_hello.models import Greeting; Greeting.objects.create(language='fr', text='Bonjour')")


def hammer(url: str) -> list[tuple[int, str]]:
    """Make REQUESTS requests that read the database, eight at a time."""
    with ThreadPoolExecutor(8) as pool, httpx.Client(timeout=30) as client:
        responses = list(pool.map(lambda i: client.get(f"{url}/flask/?name=n{i}&lang=fr"), range(REQUESTS)))
    return [(r.status_code, r.text) for r in responses]


def open_sqlite_files(pid: int, database: Path) -> int:
    """Count the server process's open file descriptors on the SQLite database."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd) == str(database):
                count += 1
        except OSError:
            continue
    return count


def test_flask_reads_greetings_through_django(gateway_server) -> None:  # type: ignore[no-untyped-def]
    env = server_env(gateway_server.log_path.parent)
    add_greeting(env)
    assert "Bonjour, Ada!" in httpx.get(gateway_server.url + "/flask/?name=Ada&lang=fr").text
    assert "Hello, Ada!" in httpx.get(gateway_server.url + "/flask/?name=Ada&lang=xx").text
    page = httpx.get(gateway_server.url + "/flask/greetings").text
    assert '<a href="/flask/?lang=fr">fr</a>: Bonjour' in page


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs /proc to count open files")
def test_no_connection_leak_on_sqlite(start_gateway, tmp_path) -> None:  # type: ignore[no-untyped-def]
    server = start_gateway(data_dir=tmp_path)
    add_greeting(server_env(tmp_path))
    database = tmp_path / "django.sqlite3"
    results = hammer(server.url)
    assert all(status == 200 and "Bonjour, n" in text for status, text in results)
    assert open_sqlite_files(server.proc.pid, database) == 0


def test_no_connection_leak_on_postgres(start_gateway, postgres, tmp_path) -> None:  # type: ignore[no-untyped-def]
    database = postgres.create_database()
    env = server_env(tmp_path, DATABASE_URL=postgres.url(database))
    subprocess.run([*GATEWAY, "migrate", "-v", "0"], cwd=ROOT, env=env, check=True, timeout=120)
    add_greeting(env)
    server = start_gateway(env={"DATABASE_URL": postgres.url(database)}, data_dir=tmp_path)
    results = hammer(server.url)
    assert all(status == 200 and "Bonjour, n" in text for status, text in results)
    count = postgres.execute(
        f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{database}' AND pid <> pg_backend_pid()")
    assert count == [(0,)]


def test_flask_alone_says_what_it_needs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    code = ("from flask_hello import create_app; c = create_app().test_client(); r = c.get('/greetings');"
            "print(r.status_code); print(c.get('/?name=Ada&lang=fr').get_data(as_text=True))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.stdout.splitlines()[0] == "503"
    assert "Hello, Ada!" in result.stdout
    assert "set DJANGO_SETTINGS_MODULE=django_hello.settings" in result.stderr
