"""The ``gateway`` command: its table, and its one-line errors."""

from __future__ import annotations

import re
import socket
import subprocess
import sys

import httpx
import pytest

from tests.support import DEMO_MOUNTS, ROOT, server_env

pytestmark = pytest.mark.server


def gateway(*args: str, tmp_path) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], cwd=ROOT, env=server_env(tmp_path),
        capture_output=True, text=True, timeout=60,
    )


def test_routes_prints_the_mount_table(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = gateway("routes", *DEMO_MOUNTS, "--mount", "/third=tests.thirdapp:asgi_app", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[1:]]
    assert rows[0][:3] == ["/flask", "wsgi", "Flask"]
    assert rows[1][:3] == ["/django", "wsgi", "Django"]
    assert rows[2] == ["/third", "asgi", "ASGI", "app", "tests.thirdapp:asgi_app"]


FORM = 'must be in the form "/prefix=package.module:attribute"'


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["serve", "--mount", "flask"], f'Mount "flask" {FORM}', id="no-equals"),
        pytest.param(["serve", "--mount", "/x=nope"], f'Mount "/x=nope" {FORM}', id="no-colon"),
        pytest.param(["serve", "--mount", "x=a:b"], 'Mount prefix "x" must start with "/"', id="relative-prefix"),
        pytest.param(["serve", "--mount", "/x/=a:b"], 'Mount prefix "/x/" must start with "/", have no trailing slash',
                     id="trailing-slash"),
        pytest.param(["serve", "--mount", "/x=no_such_module:app"], 'Could not import module "no_such_module"',
                     id="no-module"),
        pytest.param(["serve", "--mount", "/x=tests.thirdapp:missing"],
                     'Attribute "missing" not found in module "tests.thirdapp"', id="no-attr"),
        pytest.param(["serve", "--mount", "/x=tests.thirdapp:not_callable"],
                     '"tests.thirdapp:not_callable" is not a WSGI or ASGI application', id="not-callable"),
        pytest.param(["serve", "--mount", "/x=tests.thirdapp:wsgi_app@cgi"], FORM, id="bad-interface"),
        pytest.param(["serve", "--port", "70000"], "Invalid value for '--port'", id="bad-port"),
        pytest.param(["serve", "--bogus"], "No such option '--bogus'", id="bad-option"),
        pytest.param(["serve", "--threads", "0"], '--threads="0" must be a positive whole number', id="zero-threads"),
    ],
)
def test_errors_are_one_line(tmp_path, args: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    result = gateway(*args, tmp_path=tmp_path)
    assert result.returncode != 0
    assert result.stderr.startswith("gateway: error: ")
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_taken_port_is_one_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = gateway("serve", "--port", str(port), tmp_path=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"gateway: error: Port {port} on 127.0.0.1 is already in use; pick another with --port."
    )


def test_bad_environment_setting_is_one_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "routes"], cwd=ROOT,
        env=server_env(tmp_path, GATEWAY_THREADS="many"), capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        'gateway: error: GATEWAY_THREADS="many" must be a positive whole number, e.g. GATEWAY_THREADS=100.'
    )


def test_serve_prints_a_banner(start_gateway) -> None:  # type: ignore[no-untyped-def]
    server = start_gateway("--threads", "12")
    banner = server.log.split("Started server process")[0]
    assert "gateway 0.1.0 on uvicorn: 1 worker(s) x 12 threads" in banner
    assert re.search(r"database  sqlite \S+/django\.sqlite3", banner)
    assert re.search(rf"/flask +http://127\.0\.0\.1:{server.port}/flask/  \(Flask \d", banner)
    assert re.search(rf"/django +http://127\.0\.0\.1:{server.port}/django/  \(Django \d", banner)


def test_banner_never_shows_a_database_password(start_gateway, tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = subprocess.run(
        [sys.executable, "-c", "import django, gateway.serve.cli as c, gateway.core.config as g, "
         "gateway.serve.builder as w; w.load_table(g.Config.from_env()); print(c.describe_database())"],
        cwd=ROOT, env=server_env(tmp_path, DATABASE_URL="postgres://app:s3cret-pw@db.example:5433/appdb"),
        capture_output=True, text=True, timeout=60,
    )
    assert result.stdout.strip() == "postgresql app@db.example:5433/appdb"
    assert "s3cret" not in result.stdout + result.stderr


def test_python_dash_m_and_console_script_agree(tmp_path) -> None:  # type: ignore[no-untyped-def]
    script = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "gateway") if (ROOT / ".venv").exists() else "gateway", "--version"],
        capture_output=True, text=True, timeout=60,
    )
    module = gateway("--version", tmp_path=tmp_path)
    assert module.returncode == 0 and script.returncode == 0
    assert script.stdout == module.stdout and module.stdout.startswith("gateway, version ")


STRONG = "k" * 40 + "0123456789abcdef"


def test_check_deploy_fails_on_a_development_setup(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = gateway("check", "--deploy", tmp_path=tmp_path)
    assert result.returncode == 1
    assert 'gateway: GATEWAY_ENV is not "production"' in result.stderr
    assert "gateway: DJANGO_SECRET_KEY is not set." in result.stderr
    assert "gateway: GATEWAY_HTTPS is not set" in result.stderr


def test_check_deploy_passes_a_production_setup(tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = server_env(tmp_path, GATEWAY_ENV="production", GATEWAY_HTTPS="1", GATEWAY_ALLOWED_HOSTS="example.org",
                     GATEWAY_TRUSTED_PROXIES="10.0.0.1", DJANGO_SECRET_KEY=STRONG + "d", FLASK_SECRET_KEY=STRONG + "f")
    result = subprocess.run([sys.executable, "-m", "gateway", "check", "--deploy"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.endswith("gateway: no problems found.\n")


def test_check_deploy_lists_every_problem_in_one_run(tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = server_env(tmp_path, GATEWAY_ENV="production", GATEWAY_HTTPS="1", GATEWAY_ALLOWED_HOSTS="*",
                     DJANGO_SECRET_KEY="changeme", DJANGO_DEBUG="1")
    result = subprocess.run([sys.executable, "-m", "gateway", "check", "--deploy"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("gateway: ")]
    for expected in ("gateway: DJANGO_SECRET_KEY is too weak", "gateway: FLASK_SECRET_KEY is not set",
                     'gateway: DJANGO_DEBUG="1" turns on', 'gateway: GATEWAY_ALLOWED_HOSTS allows any host',
                     "gateway: GATEWAY_HTTPS=1 without GATEWAY_TRUSTED_PROXIES"):
        assert sum(line.startswith(expected) for line in lines) == 1, (expected, result.stderr)
    assert "Traceback" not in result.stderr and "gateway: error:" not in result.stderr


def test_https_with_a_trusted_proxy_is_not_flagged(tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = server_env(tmp_path, GATEWAY_HTTPS="1", GATEWAY_TRUSTED_PROXIES="10.0.0.1")
    result = subprocess.run([sys.executable, "-m", "gateway", "check", "--deploy"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert "GATEWAY_HTTPS" not in result.stderr


@pytest.mark.parametrize(
    ("secret", "problem"),
    [
        pytest.param(None, "DJANGO_SECRET_KEY is not set", id="missing"),
        pytest.param("short", "DJANGO_SECRET_KEY is too weak", id="short"),
        pytest.param("django-insecure-" + STRONG, "DJANGO_SECRET_KEY is too weak", id="insecure-prefix"),
        pytest.param("a" * 60, "DJANGO_SECRET_KEY is too weak", id="one-character"),
    ],
)
def test_production_refuses_weak_secrets(tmp_path, secret: str | None, problem: str) -> None:  # type: ignore[no-untyped-def]
    extra = {"GATEWAY_ENV": "production", "FLASK_SECRET_KEY": STRONG}
    if secret is not None:
        extra["DJANGO_SECRET_KEY"] = secret
    result = subprocess.run([sys.executable, "-m", "gateway", "serve", "--port", "0"], cwd=ROOT,
                            env=server_env(tmp_path, **extra), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    advice = "" if secret is None else ": use at least 50 random characters"
    assert result.stderr.strip() == f"gateway: error: {problem}{advice} (GATEWAY_ENV=production)."


def test_development_keys_are_generated_once(tmp_path) -> None:  # type: ignore[no-untyped-def]
    code = ("import os, gateway.core.config as g; g.configure_apps(g.Config.from_env());"
            "print(os.environ['FLASK_SECRET_KEY'])")
    first, second = (subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=server_env(tmp_path),
                                    capture_output=True, text=True, timeout=60).stdout for _ in range(2))
    assert first == second and len(first.strip()) >= 50
    assert oct((tmp_path / "flask-secret-key").stat().st_mode & 0o777) == "0o600"


OWN_APP = '''
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"my api"]
'''


@pytest.mark.parametrize("workers", ["1", "2"])
def test_an_app_in_the_current_directory_mounts_with_the_command(tmp_path, workers: str) -> None:  # type: ignore[no-untyped-def]
    """As with uvicorn and gunicorn: `gateway serve --mount /api=myapi:app` from myapi.py's folder."""
    from tests.support import ServerProcess, free_port

    project = tmp_path / "project"
    project.mkdir()
    (project / "myapi.py").write_text(OWN_APP)
    port = free_port()
    script = str(ROOT / ".venv" / "bin" / "gateway") if (ROOT / ".venv").exists() else "gateway"
    server = ServerProcess([script, "serve", "--port", str(port), "--workers", workers, "--mount", "/api=myapi:app"],
                           port=port, env=server_env(tmp_path / "data"), log_path=tmp_path / "server.log",
                           cwd=project, ready_path="/api/")
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/api/").text == "my api"
    finally:
        server.stop()


FAILS_IN_WORKERS = '''
import os, pathlib
counter = pathlib.Path(os.environ["IMPORTS_FILE"])
imports = int(counter.read_text()) if counter.exists() else 0
counter.write_text(str(imports + 1))
if imports >= 1:  # the start-up check imports it first, and passes; every worker fails
    raise RuntimeError("cannot start in a worker")

def app(environ, start_response):
    start_response("200 OK", [])
    return [b""]
'''


def test_a_worker_that_cannot_start_stops_the_server_with_one_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    project = tmp_path / "project"
    project.mkdir()
    (project / "flaky.py").write_text(FAILS_IN_WORKERS)
    script = str(ROOT / ".venv" / "bin" / "gateway") if (ROOT / ".venv").exists() else "gateway"
    env = server_env(tmp_path / "data", IMPORTS_FILE=str(tmp_path / "imports"))
    result = subprocess.run([script, "serve", "--port", "0", "--workers", "2", "--mount", "/flaky=flaky:app"],
                            cwd=project, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    cannot = [line for line in lines if 'cannot start: Importing "flaky" (from "flaky:app") failed: RuntimeError: '
              'cannot start in a worker.' in line]
    assert 1 <= len(cannot) <= 2, result.stderr  # each of the two workers, at most once
    assert lines[-1] == "gateway: error: a worker could not start (its error is above); the server stopped."
    assert "Traceback" not in result.stderr
    assert int((tmp_path / "imports").read_text()) <= 3  # no crash loop: the check, then each worker once


@pytest.mark.parametrize(
    ("env", "message"),
    [
        pytest.param({"GATEWAY_HTTPS": "maybe"}, 'GATEWAY_HTTPS="maybe" must be 1 or 0', id="https"),
        pytest.param({"GATEWAY_ACCESS_LOG": "nope"}, 'GATEWAY_ACCESS_LOG="nope" must be 1 or 0', id="access-log"),
        pytest.param({"DJANGO_CONN_MAX_AGE": "abc"}, 'DJANGO_CONN_MAX_AGE="abc" must be a whole number',
                     id="conn-max-age"),
        pytest.param({"DATABASE_URL": "mysql://app:pw@db/app"}, "DATABASE_URL is a mysql URL, but its driver",
                     id="mysql"),
        pytest.param({"GATEWAY_DATA_DIR": "/etc/hostname/data"}, "GATEWAY_DATA_DIR=/etc/hostname/data cannot be "
                     "created: /etc/hostname is not a directory", id="data-dir"),
    ],
)
@pytest.mark.parametrize("command", [["serve", "--port", "0"], ["migrate"], ["check"]])
def test_settings_the_apps_cannot_start_with_end_in_one_line(tmp_path, env: dict[str, str], message: str,  # type: ignore[no-untyped-def]
                                                             command: list[str]) -> None:
    result = subprocess.run([sys.executable, "-m", "gateway", *command], cwd=ROOT,
                            env={**server_env(tmp_path), **env}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"gateway: error: {message}"), result.stderr


def test_port_0_prints_the_port_it_got(tmp_path) -> None:  # type: ignore[no-untyped-def]
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--port", "0"], cwd=ROOT,
                            env=server_env(tmp_path), stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stderr is not None
        banner = [proc.stderr.readline() for _ in range(3)]
        port = int(re.search(r"http://127\.0\.0\.1:(\d+)/ ", banner[2]).group(1))  # type: ignore[union-attr]
        assert port != 0
        assert httpx.get(f"http://127.0.0.1:{port}/flask/", timeout=10).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        assert proc.stderr is not None
        proc.stderr.close()


def test_the_banner_is_json_under_log_format_json(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--port", "0", "--log-format", "json"],
                            cwd=ROOT, env=server_env(tmp_path), stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert proc.stderr is not None
        banner = json.loads(proc.stderr.readline())
        following = json.loads(proc.stderr.readline())  # every line after it is JSON too
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        assert proc.stderr is not None
        proc.stderr.close()
    assert banner["logger"] == "gateway" and banner["message"].startswith("gateway ")
    assert (banner["server"], banner["workers"], banner["threads"]) == ("uvicorn", 1, 100)
    assert sorted(banner["mounts"]) == ["/", "/django", "/flask"]
    assert banner["mounts"]["/flask"]["url"].startswith("http://127.0.0.1:")
    assert ":0/" not in banner["mounts"]["/flask"]["url"]
    assert following["level"] == "INFO"


def test_reload_with_several_workers_is_refused_in_one_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = gateway("serve", "--reload", "--workers", "2", tmp_path=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "gateway: error: --reload runs one worker: leave --workers out, or --reload for production. "
        "(see 'gateway serve --help')"]


def test_gateway_flask_runs_the_mounted_flask_apps_cli_with_django_set_up(tmp_path) -> None:  # type: ignore[no-untyped-def]
    routes = gateway("flask", "routes", tmp_path=tmp_path)
    assert routes.returncode == 0, routes.stderr
    endpoints = {line.split()[0] for line in routes.stdout.splitlines()[2:] if line.strip()}
    assert endpoints == {"hello.greetings", "hello.hello", "static"}
    shell = subprocess.run([sys.executable, "-m", "gateway", "flask", "shell"], cwd=ROOT, env=server_env(tmp_path),
                           input='from django.apps import apps; print("ready", apps.ready, app.name)\n',
                           capture_output=True, text=True, timeout=60)
    assert "ready True flask_hello" in shell.stdout, shell.stdout + shell.stderr
    wrong = gateway("flask", "--prefix", "/django", "routes", tmp_path=tmp_path)
    assert wrong.returncode == 1
    assert wrong.stderr.strip().splitlines() == [
        "gateway: error: no Flask app is mounted at /django (Flask mounts: /flask); name one with --prefix."]


def test_a_management_command_before_the_first_migrate_is_one_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`gateway manage createsuperuser` on a database never migrated (before: a traceback
    ending in "no such table: auth_user"): one line naming the fix, and nothing created."""
    result = subprocess.run([sys.executable, "-m", "gateway", "manage", "createsuperuser", "--noinput",
                             "--username", "admin", "--email", "admin@example.com"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, env=server_env(tmp_path, DJANGO_SUPERUSER_PASSWORD="x" * 20))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert re.fullmatch(r"gateway: error: the database has \d+ unapplied migrations \(no such table: auth_user\): "
                        r"run gateway migrate first\.", result.stderr.splitlines()[-1]), result.stderr
    done = subprocess.run([sys.executable, "-m", "gateway", "migrate"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=server_env(tmp_path))
    assert done.returncode == 0, done.stderr
    again = subprocess.run([sys.executable, "-m", "gateway", "manage", "changepassword", "admin"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120, env=server_env(tmp_path), input="")
    assert "does not exist" in again.stderr, again.stderr  # the first command created no user
