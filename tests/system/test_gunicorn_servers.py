"""gunicorn for real (tests/unit/test_gunicorn.py has the checks in process): in
production without a buffering proxy it stops with one line, and a reload with a file that
cannot work keeps the site up."""

from __future__ import annotations

import secrets
import subprocess
import sys
from typing import Any

import pytest

from tests.support import ROOT, free_port, server_env

pytestmark = pytest.mark.server


RULE_TO_FLASK = '[apps]\nhello = "flask_hello:app"\n\n[[route]]\nrule = "/"\napp = "hello"\n'

def get(url: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def workers_of(pid: int) -> set[int]:
    """The worker processes of gunicorn's master ``pid``."""
    from pathlib import Path

    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return {int(child) for child in children}


def poll(check: Any, timeout: float = 30.0) -> Any:
    import time

    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, "the state was not reached in time"
        time.sleep(0.1)
    return value


def test_gunicorn_in_production_stops_with_one_line(tmp_path: pytest.TempPathFactory) -> None:
    """A real gunicorn: its master exits (App failed to load) instead of serving bare."""
    env = server_env(tmp_path, GATEWAY_ENV="production", GATEWAY_ALLOWED_HOSTS="example.org",  # type: ignore[arg-type]
                     DJANGO_SECRET_KEY=secrets.token_urlsafe(50), FLASK_SECRET_KEY=secrets.token_urlsafe(50))
    done = subprocess.run([sys.executable, "-m", "gunicorn", "gateway.wsgi:application", "--bind",
                           f"127.0.0.1:{free_port()}", "--worker-class", "gthread"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "The gateway does not start bare under gunicorn in production." in done.stderr
    assert "App failed to load" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_reload_with_a_file_that_cannot_work_keeps_the_site_up(tmp_path: Any) -> None:
    """SIGHUP with a bad gateway.toml: before, every new worker failed to boot and
    gunicorn's master exited. With the gateway's gunicorn settings the master says why in
    one line and keeps its workers; a good file afterwards is taken."""
    import os
    import signal

    from tests.support import GATEWAY, ServerProcess

    (tmp_path / "gateway.toml").write_text(RULE_TO_FLASK)
    env = server_env(tmp_path / "data", GATEWAY_CONFIG=str(tmp_path / "gateway.toml"), GATEWAY_BUFFERING_PROXY="1")
    (tmp_path / "data").mkdir(mode=0o700)
    subprocess.run([*GATEWAY, "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
    port = free_port()
    server = ServerProcess([sys.executable, "-m", "gunicorn", "-c", "python:gateway.serve.gunicorn_conf",
                            "gateway.wsgi:application", "--bind", f"127.0.0.1:{port}", "--workers", "2",
                            "--worker-class", "gthread", "--graceful-timeout", "5"],
                           port=port, env=env, log_path=tmp_path / "gunicorn.log", ready_path="/healthz")
    try:
        assert "Hello from Flask" in get(server.url + "/")[1]  # the rule sends / to Flask
        workers = poll(lambda: w if len(w := workers_of(server.proc.pid)) == 2 else None)
        for bad in ('[[route]]\nrule = "/<int(min=abc):y>"\napp = "hello"\n[apps]\nhello = "flask_hello:app"\n',
                    '[apps]\nhello = "no_such_module:app"\n\n[[route]]\nrule = "/"\napp = "hello"\n'):
            (tmp_path / "gateway.toml").write_text(bad)
            before = server.log.count("The configuration was not reloaded")
            os.kill(server.proc.pid, signal.SIGHUP)
            poll(lambda before=before: server.log.count("The configuration was not reloaded") > before)
            assert server.proc.poll() is None  # the master is still there
            assert workers_of(server.proc.pid) == workers  # and so are its workers
            assert "Hello from Flask" in get(server.url + "/")[1]
        log = server.log
        assert ("gateway.toml, line 1: rule '/<int(min=abc):y>' has <int(min=abc):y>: min must be a whole number, "
                "e.g. <int(min=1):y>; the workers keep serving what they had.") in log
        assert 'Could not import module "no_such_module"' in log
        assert "Worker failed to boot" not in log and "Traceback" not in log
        (tmp_path / "gateway.toml").write_text('[apps]\nhello = "flask_hello:app"\n')  # no rule: / is the index
        os.kill(server.proc.pid, signal.SIGHUP)
        poll(lambda: "Hello from Flask" not in get(server.url + "/")[1])
        assert get(server.url + "/") == get(server.url + "/")  # every worker has the new file
        poll(lambda: not workers & workers_of(server.proc.pid))  # the old workers are gone
    finally:
        server.stop()
