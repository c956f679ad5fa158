"""One Config, built at the edge: from the environment, from the command's options, and
handed to every worker process without going through environment variables."""

from __future__ import annotations

import pickle
from dataclasses import fields
from pathlib import Path

import click
import pytest

from gateway.core.config import DEFAULT_MAX_BODY_SIZE, Config, configure_apps, parse_size


def test_defaults_from_an_empty_environment() -> None:
    config = Config.from_env({})
    assert (config.env, config.threads, config.max_body_size, config.trusted_proxies, config.https) == (
        "development", 100, DEFAULT_MAX_BODY_SIZE, (), False)
    assert config.allowed_hosts == ("localhost", "127.0.0.1", "[::1]")
    assert config.data_dir == Path("var").resolve()


def test_every_variable_is_read() -> None:
    config = Config.from_env({
        "GATEWAY_ENV": "production", "GATEWAY_MOUNTS": "/a=m:a /b=m:b", "GATEWAY_THREADS": "7",
        "GATEWAY_DATA_DIR": "/tmp/x", "GATEWAY_ALLOWED_HOSTS": "a.example, .b.example",
        "GATEWAY_MAX_BODY_SIZE": "2M", "GATEWAY_MAX_BODY_SIZES": "/a=1K,/b/=3", "GATEWAY_MAX_HEADER_SIZE": "8K",
        "GATEWAY_TRUSTED_PROXIES": "10.0.0.0/8,::1", "GATEWAY_HTTPS": "yes", "GATEWAY_LOG_FORMAT": "JSON",
        "GATEWAY_ACCESS_LOG": "off", "GATEWAY_DRAIN_DELAY": "2.5", "GATEWAY_GRACEFUL_TIMEOUT": "9",
    })
    assert config.env == "production" and config.mounts == ("/a=m:a", "/b=m:b") and config.threads == 7
    assert config.data_dir == Path("/tmp/x") and config.allowed_hosts == ("a.example", ".b.example")
    assert (config.max_body_size, dict(config.max_body_sizes), config.max_header_size) == (
        2 * 1024**2, {"/a": 1024, "/b": 3}, 8 * 1024)
    assert [str(n) for n in config.trusted_proxies] == ["10.0.0.0/8", "::1/128"]
    assert config.https and config.log_format == "json" and not config.access_log
    assert (config.drain_delay, config.graceful_timeout) == (2.5, 9.0)
    assert (config.body_limit("/a"), config.body_limit("/b"), config.body_limit("/c")) == (1024, 3, 2 * 1024**2)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        pytest.param("GATEWAY_ENV", "staging", 'GATEWAY_ENV="staging" must be "development" or "production".',
                     id="env"),
        pytest.param("GATEWAY_THREADS", "0", 'GATEWAY_THREADS="0" must be a positive whole number', id="threads"),
        pytest.param("GATEWAY_MAX_BODY_SIZE", "10X", 'GATEWAY_MAX_BODY_SIZE="10X" must be a size in bytes',
                     id="size"),
        pytest.param("GATEWAY_MAX_BODY_SIZES", "django=1M", 'must be in the form "/prefix=size"', id="sizes"),
        pytest.param("GATEWAY_TRUSTED_PROXIES", "10.0.0.300", "must be an IP address or network", id="proxies"),
        pytest.param("GATEWAY_LOG_FORMAT", "xml", 'must be "text" or "json"', id="log-format"),
        pytest.param("GATEWAY_DRAIN_DELAY", "-1", "must be a number of seconds", id="drain-delay"),
        pytest.param("GATEWAY_DRAIN_DELAY", "nan", "must be a number of seconds", id="drain-delay-nan"),
        pytest.param("GATEWAY_HTTPS", "maybe", 'GATEWAY_HTTPS="maybe" must be 1 or 0', id="https"),
        pytest.param("GATEWAY_ACCESS_LOG", "nope", 'GATEWAY_ACCESS_LOG="nope" must be 1 or 0', id="access-log"),
        pytest.param("GATEWAY_BODY_TIMEOUT", "0", 'GATEWAY_BODY_TIMEOUT="0" must be a number of seconds above 0',
                     id="body-timeout"),
        pytest.param("GATEWAY_HEADER_TIMEOUT", "x", 'GATEWAY_HEADER_TIMEOUT="x" must be a number of seconds',
                     id="header-timeout"),
        pytest.param("GATEWAY_STREAM_BODIES", "uploads", 'GATEWAY_STREAM_BODIES item "uploads" must be a mount prefix',
                     id="stream-bodies"),
    ],
)
def test_bad_values_are_refused_with_one_sentence(name: str, value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        Config.from_env({name: value})


@pytest.mark.parametrize(("value", "expected"), [("1", True), ("TRUE", True), (" on ", True), ("yes", True),
                                               ("0", False), ("false", False), ("Off", False), ("no", False),
                                               ("", None)])
def test_flags_take_the_usual_words(value: str, expected: bool | None) -> None:
    config = Config.from_env({"GATEWAY_HTTPS": value, "GATEWAY_ACCESS_LOG": value})
    assert (config.https, config.access_log) == ((False, True) if expected is None else (expected, expected))


def test_timeouts_and_streaming_mounts_are_read() -> None:
    config = Config.from_env({"GATEWAY_BODY_TIMEOUT": "12.5", "GATEWAY_HEADER_TIMEOUT": "3",
                              "GATEWAY_READY_TIMEOUT": "0.5", "GATEWAY_STREAM_BODIES": "/up/, /big"})
    assert (config.body_timeout, config.header_timeout, config.ready_timeout) == (12.5, 3.0, 0.5)
    assert config.stream_bodies == ("/up", "/big")
    defaults = Config.from_env({})
    assert (defaults.body_timeout, defaults.header_timeout, defaults.ready_timeout, defaults.stream_bodies) == (
        30.0, 5.0, 2.0, ())
    assert pickle.loads(pickle.dumps(config)) == config  # as gateway serve hands it to each worker


@pytest.mark.parametrize(
    ("env", "message"),
    [
        pytest.param({"DATABASE_URL": "mysql://u:p@db/app"}, "DATABASE_URL is a mysql URL, but its driver (MySQLdb) "
                     "is not installed: install mysqlclient", id="mysql"),
        pytest.param({"DATABASE_URL": "mongodb://db/app"}, 'DATABASE_URL has the scheme "mongodb", which no database '
                     "backend here takes", id="unknown-scheme"),
        pytest.param({"DJANGO_CONN_MAX_AGE": "abc"}, 'DJANGO_CONN_MAX_AGE="abc" must be a whole number of seconds',
                     id="conn-max-age"),
        pytest.param({"DJANGO_CONN_MAX_AGE": "-5"}, 'DJANGO_CONN_MAX_AGE="-5" must be a whole number', id="negative"),
    ],
)
def test_settings_the_apps_would_fail_on_are_refused_first(tmp_path: Path, env: dict[str, str],
                                                           message: str) -> None:
    environ = dict(env)
    with pytest.raises(ValueError) as refused:
        configure_apps(Config.from_env({"GATEWAY_DATA_DIR": str(tmp_path)}), environ)
    assert str(refused.value).startswith(message)
    assert "\n" not in str(refused.value)
    assert "DJANGO_SETTINGS_MODULE" not in environ  # refused before anything is set


def test_a_postgres_url_without_its_driver_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in {"psycopg", "psycopg2"} else real(name, *a))
    with pytest.raises(ValueError, match=r"DATABASE_URL is a postgres URL, but its driver \(psycopg\) is not "
                                         r"installed: install the \"postgres\" extra"):
        configure_apps(Config.from_env({"GATEWAY_DATA_DIR": str(tmp_path)}), {"DATABASE_URL": "postgresql://db/x"})


def test_a_data_directory_that_cannot_be_made_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    config = Config.from_env({"GATEWAY_DATA_DIR": str(blocker / "data")})
    with pytest.raises(ValueError, match=f"GATEWAY_DATA_DIR={blocker / 'data'} cannot be created: {blocker} is not "
                                         "a directory: choose a directory this user can write"):
        configure_apps(config, {})


def test_a_database_url_with_both_keys_needs_no_data_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    environ = {"DATABASE_URL": "postgres://db/x", "DJANGO_SECRET_KEY": "k", "FLASK_SECRET_KEY": "f"}
    configure_apps(Config.from_env({"GATEWAY_DATA_DIR": str(blocker / "data")}), environ)
    assert environ["DJANGO_SETTINGS_MODULE"] == "django_hello.settings"


def test_production_problems_wait_for_check_when_not_strict(tmp_path: Path) -> None:
    config = Config.from_env({"GATEWAY_ENV": "production", "GATEWAY_DATA_DIR": str(tmp_path)})
    with pytest.raises(ValueError, match="DJANGO_SECRET_KEY is not set"):
        configure_apps(config, {})
    environ: dict[str, str] = {}
    configure_apps(config, environ, strict=False)
    assert environ["DJANGO_SETTINGS_MODULE"] == "django_hello.settings"


@pytest.mark.parametrize(("text", "size"), [("10", 10), ("10K", 10240), ("1m", 1024**2), ("2GiB", 2 * 1024**3),
                                            ("3 MB", 3 * 1024**2)])
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text, "X") == size


def test_config_survives_pickling_as_it_travels_to_workers() -> None:
    config = Config.from_env({"GATEWAY_TRUSTED_PROXIES": "10.0.0.0/8", "GATEWAY_MAX_BODY_SIZES": "/a=1K",
                              "GATEWAY_MOUNTS": "/a=m:a"})
    assert pickle.loads(pickle.dumps(config)) == config


def test_configure_apps_sets_the_frameworks_variables_in_one_place(tmp_path: Path) -> None:
    environ: dict[str, str] = {"DJANGO_ALLOWED_HOSTS": "kept.example"}
    config = Config.from_env({"GATEWAY_DATA_DIR": str(tmp_path), "GATEWAY_HTTPS": "1",
                              "GATEWAY_MAX_BODY_SIZES": "/flask=1K,/django=2K"})
    configure_apps(config, environ)
    assert environ["DJANGO_ALLOWED_HOSTS"] == "kept.example"  # what the environment says wins
    assert environ["DJANGO_SETTINGS_MODULE"] == "django_hello.settings"
    assert environ["DJANGO_DATA_DIR"] == str(tmp_path)
    assert (environ["FLASK_MAX_CONTENT_LENGTH"], environ["DJANGO_DATA_UPLOAD_MAX_MEMORY_SIZE"]) == ("1024", "2048")
    assert environ["DJANGO_HTTPS"] == "1" and environ["FLASK_SESSION_COOKIE_SECURE"] == "true"
    assert len(environ["FLASK_SECRET_KEY"]) >= 50
    assert not any(name.startswith("GATEWAY_") for name in environ)


def test_command_options_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.serve.cli import _config

    monkeypatch.setenv("GATEWAY_THREADS", "5")
    monkeypatch.setenv("GATEWAY_MOUNTS", "/a=m:a")
    monkeypatch.setenv("GATEWAY_DRAIN_DELAY", "3")
    config = _config({"mounts": ("/b=m:b",), "threads": "9", "drain_delay": None, "access_log": False})
    assert (config.threads, config.mounts, config.drain_delay, config.access_log) == (9, ("/b=m:b",), 3.0, False)
    assert _config().mounts == ("/a=m:a",)
    with pytest.raises(click.UsageError, match=r'^--threads="0" must be a positive whole number, e\.g\. '
                                               r"--threads=100\.$"):
        _config({"threads": "0"})


def test_the_file_then_the_variables_then_the_options(tmp_path: Path) -> None:
    """One merge at the edge: each source over the one before, each value read by the same reader."""
    from gateway.core.config import load_config

    path = tmp_path / "gateway.toml"
    path.write_text('[gateway]\nthreads = 7\nhttps = true\nallowed_hosts = ["a.test", "b.test"]\n'
                    'max_body_size = "2M"\nstream_bodies = ["/up"]\nheader_timeout = 1.5\n')
    from_file = load_config({}, {}, path)
    assert (from_file.threads, from_file.https, from_file.allowed_hosts, from_file.max_body_size,
            from_file.stream_bodies, from_file.header_timeout) == (7, True, ("a.test", "b.test"), 2 * 1024**2,
                                                                  ("/up",), 1.5)
    over = load_config({"GATEWAY_THREADS": "8", "GATEWAY_HTTPS": "0", "GATEWAY_CONFIG": str(path)}, {"--threads": "9"})
    assert (over.threads, over.https, over.allowed_hosts, over.config_file) == (9, False, ("a.test", "b.test"), path)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        pytest.param("threads = 0", r'^\S+gateway\.toml, line 2: threads="0" must be a positive whole number, '
                                    r"e\.g\. threads=100\.$", id="bad-value"),
        pytest.param("https = \"maybe\"", r'line 2: https="maybe" must be 1 or 0', id="bad-flag"),
        pytest.param("thread = 3", r"line 2: unknown setting 'thread' in \[gateway\]; the settings are access_log, ",
                     id="unknown-key"),
        pytest.param("threads = { n = 3 }", r"line 2: threads must be a string, a number, true or false, or a list",
                     id="a-table"),
    ],
)
def test_a_setting_in_the_file_that_cannot_be_read_names_its_line(tmp_path: Path, table: str, message: str) -> None:
    from gateway.core.config import load_config

    path = tmp_path / "gateway.toml"
    path.write_text(f"[gateway]\n{table}\n")
    with pytest.raises(ValueError, match=message):
        load_config({}, {}, path)


def test_each_settings_documented_default_is_its_default() -> None:
    """The table's defaults, as the docs and the help show them, are what Config holds."""
    from gateway.core.config import SETTINGS

    defaults = Config()
    worded = {"data_dir": Path("var").resolve(), "graceful_timeout": None, "migration_dir": None}
    for setting in SETTINGS:
        if setting.field in worded:  # "./var", "no limit", "one per run...": in words
            assert getattr(defaults, setting.field) == worded[setting.field]
            continue
        assert setting.read(setting.default, setting.variable) == getattr(defaults, setting.field), setting.field
    assert {s.field for s in SETTINGS} | {"config_file", "file", "server"} == {f.name for f in fields(Config)}


def test_the_configuration_reference_is_generated_from_the_table() -> None:
    """docs/configuration.md is scripts/configuration_docs.py's output: run it after changing a setting."""
    import importlib.util

    from tests.support import ROOT

    spec = importlib.util.spec_from_file_location("configuration_docs", ROOT / "scripts" / "configuration_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (ROOT / "docs" / "configuration.md").read_text() == module.reference()


def test_a_streamed_response_mount_that_is_not_mounted_is_refused(tmp_path: Path) -> None:
    from gateway.core.mounts import MountError
    from gateway.serve.builder import load_table

    config = Config.from_env({"GATEWAY_DATA_DIR": str(tmp_path), "GATEWAY_STREAM_RESPONSES": "/events"})
    with pytest.raises(MountError, match=r"GATEWAY_STREAM_RESPONSES \(--stream-response\) names /events, which is "
                                         r"not a mount prefix here: use one of /flask, /django\."):
        load_table(config)


@pytest.mark.parametrize(("value", "message"), [
    pytest.param("0", 'GATEWAY_SEND_TIMEOUT="0" must be a number of seconds above 0, e.g. GATEWAY_SEND_TIMEOUT=60.',
                 id="zero"),
    pytest.param("soon", 'GATEWAY_SEND_TIMEOUT="soon" must be a number of seconds, e.g. GATEWAY_SEND_TIMEOUT=5.',
                 id="words"),
])
def test_a_send_timeout_that_is_no_duration_is_refused_in_one_sentence(value: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        Config.from_env({"GATEWAY_SEND_TIMEOUT": value})
    assert str(caught.value) == message


def test_the_send_timeout_and_the_streamed_responses_reach_the_bridges(tmp_path: Path) -> None:
    from gateway.adapters.asgi import ASGIGateway
    from gateway.serve.builder import load_table

    config = Config.from_env({"GATEWAY_DATA_DIR": str(tmp_path), "GATEWAY_SEND_TIMEOUT": "7.5",
                              "GATEWAY_STREAM_RESPONSES": "/django"})
    gateway = ASGIGateway(load_table(config), config)
    try:
        assert [(p, b.send_timeout, b.stream_response) for p, b in sorted(gateway.wsgi.items())] == [
            ("/django", 7.5, True), ("/flask", 7.5, False)]
    finally:
        gateway.executor.shutdown()


def test_a_streaming_mount_that_is_not_mounted_is_refused(tmp_path: Path) -> None:
    from gateway.core.mounts import MountError
    from gateway.serve.builder import load_table

    config = Config.from_env({"GATEWAY_DATA_DIR": str(tmp_path), "GATEWAY_STREAM_BODIES": "/uplods"})
    with pytest.raises(MountError, match=r"names /uplods, which is not a mount prefix here: use one of /flask, "
                                         r"/django\."):
        load_table(config)


# The rules each reader applies, value by value (what mutation testing found unpinned).

STRONG = "k" * 45 + "abcde"  # 50 characters, 6 different


@pytest.mark.parametrize(("environ", "hosts", "problems"), [
    pytest.param({"DJANGO_SECRET_KEY": STRONG, "FLASK_SECRET_KEY": STRONG}, "example.org", [], id="none"),
    pytest.param({}, "example.org", ["DJANGO_SECRET_KEY is not set", "FLASK_SECRET_KEY is not set"], id="no-keys"),
    pytest.param({"DJANGO_SECRET_KEY": STRONG[:-1], "FLASK_SECRET_KEY": "django-insecure-" + STRONG,
                  "DJANGO_DEBUG": " TRUE ", "FLASK_DEBUG": "yes", "DJANGO_ALLOWED_HOSTS": "a.example, *"}, "*", [
        "DJANGO_SECRET_KEY is too weak: use at least 50 random characters",
        "FLASK_SECRET_KEY is too weak: use at least 50 random characters",
        'DJANGO_DEBUG=" TRUE " turns on Django\'s debug pages: unset it or set DJANGO_DEBUG=0',
        'FLASK_DEBUG="yes" turns on Flask\'s debug mode: unset it or set FLASK_DEBUG=0',
        'GATEWAY_ALLOWED_HOSTS allows any host ("*"): list your host names, e.g. GATEWAY_ALLOWED_HOSTS=example.org',
        'DJANGO_ALLOWED_HOSTS allows any host ("*"): list your host names, or unset it to follow '
        "GATEWAY_ALLOWED_HOSTS"], id="all"),
    pytest.param({"DJANGO_SECRET_KEY": "abcd" * 13, "FLASK_SECRET_KEY": STRONG, "FLASK_DEBUG": "1"}, "example.org", [
        "DJANGO_SECRET_KEY is too weak: use at least 50 random characters",
        'FLASK_DEBUG="1" turns on Flask\'s debug mode: unset it or set FLASK_DEBUG=0'], id="four-characters"),
    pytest.param({"DJANGO_SECRET_KEY": STRONG, "FLASK_SECRET_KEY": STRONG, "DJANGO_DEBUG": "0",
                  "FLASK_DEBUG": "false"}, "example.org", [], id="debug-off"),
    pytest.param({"DJANGO_SECRET_KEY": STRONG, "FLASK_SECRET_KEY": STRONG, "FLASK_DEBUG": "0"}, "example.org", [],
                 id="flask-debug-0"),
    pytest.param({"DJANGO_SECRET_KEY": "k" * 46 + "abcd", "FLASK_SECRET_KEY": STRONG}, "example.org", [],
                 id="five-different-characters"),
])
def test_production_problems_one_clause_each(environ: dict[str, str], hosts: str, problems: list[str]) -> None:
    from gateway.core.config import production_problems

    config = Config.from_env({"GATEWAY_ALLOWED_HOSTS": hosts})
    assert production_problems(config, environ) == problems


@pytest.mark.parametrize(("value", "on"), [("1", True), ("on", True), ("Yes", True), ("true", True), ("0", False),
                                           ("", False), ("2", False)])
def test_django_debug_is_read_as_django_hello_reads_it(value: str, on: bool) -> None:
    from gateway.core.config import production_problems

    environ = {"DJANGO_SECRET_KEY": STRONG, "FLASK_SECRET_KEY": STRONG, "DJANGO_DEBUG": value}
    assert production_problems(Config.from_env({}), environ) == (
        [f'DJANGO_DEBUG="{value}" turns on Django\'s debug pages: unset it or set DJANGO_DEBUG=0'] if on else [])


def test_production_problems_of_your_own_apps_are_the_wildcard_only() -> None:
    from gateway.core.config import production_problems

    assert production_problems(Config.from_env({"GATEWAY_ALLOWED_HOSTS": "a.example"}), {}, demo=False) == []
    assert production_problems(Config.from_env({"GATEWAY_ALLOWED_HOSTS": "a.example,*"}), {}, demo=False) == [
        'GATEWAY_ALLOWED_HOSTS allows any host ("*"): list your host names, e.g. GATEWAY_ALLOWED_HOSTS=example.org']


def test_production_refuses_with_every_problem_in_one_sentence(tmp_path: Path) -> None:
    config = Config.from_env({"GATEWAY_ENV": "production", "GATEWAY_DATA_DIR": str(tmp_path)})
    with pytest.raises(ValueError) as refused:
        configure_apps(config, {"DJANGO_CONN_MAX_AGE": "x", "DJANGO_SECRET_KEY": STRONG})
    assert str(refused.value) == (
        'DJANGO_CONN_MAX_AGE="x" must be a whole number of seconds, e.g. 60 (0 closes each connection after its '
        "request); FLASK_SECRET_KEY is not set (GATEWAY_ENV=production).")


def test_configure_apps_shares_the_signin_and_keeps_the_flask_key(tmp_path: Path) -> None:
    (tmp_path / "flask-secret-key").write_text("kept-key\n")
    config = Config.from_env({"GATEWAY_DATA_DIR": str(tmp_path), "GATEWAY_SHARED_SIGNIN": "1",
                              "GATEWAY_ALLOWED_HOSTS": "a.example,b.example"})
    environ: dict[str, str] = {}
    configure_apps(config, environ)
    assert environ["FLASK_SHARED_SIGNIN"] == "true"
    assert environ["DJANGO_ALLOWED_HOSTS"] == "a.example,b.example"
    assert environ["FLASK_SECRET_KEY"] == "kept-key"
    assert "DJANGO_HTTPS" not in environ
    plain: dict[str, str] = {}
    configure_apps(Config.from_env({"GATEWAY_DATA_DIR": str(tmp_path)}), plain)
    assert "FLASK_SHARED_SIGNIN" not in plain


def test_a_generated_secret_is_private_and_kept(tmp_path: Path) -> None:
    import stat

    from gateway.core.config import stored_secret

    data = tmp_path / "a" / "b"
    key = stored_secret(data, "k")
    assert len(key) == 67  # token_urlsafe(50): 50 random bytes
    assert stat.S_IMODE(data.stat().st_mode) == 0o700 and stat.S_IMODE((data / "k").stat().st_mode) == 0o600
    assert (data / "k").read_text() == key and stored_secret(data, "k") == key


@pytest.mark.parametrize(("url", "problem"), [
    pytest.param("sqlite:///x.db", None, id="sqlite"),
    pytest.param("SPATIALITE:///x.db", None, id="spatialite"),
    pytest.param("postgresql+psycopg://db/x", None, id="postgres-with-driver"),
    pytest.param("redis://u:secret@h:6379/0", 'DATABASE_URL has the scheme "redis", which no database backend here '
                 "takes: use postgres://user:password@host/name, or unset it for the embedded SQLite database",
                 id="redis-with-a-password"),
    pytest.param("ftp+x://h:21/x", 'DATABASE_URL has the scheme "ftp", which no database backend here takes: use '
                 "postgres://user:password@host/name, or unset it for the embedded SQLite database", id="ftp"),
    pytest.param("oracle://db/x", "DATABASE_URL is a oracle URL, but its driver (oracledb) is not installed: install "
                 "oracledb (pip install oracledb); the gateway is tested on SQLite and PostgreSQL only", id="oracle"),
])
def test_database_urls_by_scheme(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str,
                                 problem: str | None) -> None:
    import importlib.util

    from gateway.core.config import environment_problems

    real = importlib.util.find_spec
    # psycopg2 alone is enough for Django's postgres backend.
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "psycopg" else (
        object() if name == "psycopg2" else real(name, *a)))
    config = Config.from_env({"GATEWAY_DATA_DIR": str(tmp_path)})
    environ = {"DATABASE_URL": url, "DJANGO_SECRET_KEY": "k", "FLASK_SECRET_KEY": "f"}
    assert environment_problems(config, environ) == ([problem] if problem else [])


@pytest.mark.parametrize("keys", [{"DJANGO_SECRET_KEY": "k"}, {"FLASK_SECRET_KEY": "f"}])
def test_a_missing_key_is_written_to_the_data_directory(tmp_path: Path, keys: dict[str, str]) -> None:
    from gateway.core.config import environment_problems

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    config = Config.from_env({"GATEWAY_DATA_DIR": str(blocker)})
    assert environment_problems(config, {"DATABASE_URL": "sqlite:///x", **keys}) == [
        f"GATEWAY_DATA_DIR={blocker} cannot be created: {blocker} is not a directory: choose a directory this user "
        "can write, e.g. GATEWAY_DATA_DIR=./var"]


def test_unwritable_names_the_directory_it_stopped_at(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from gateway.core.config import unwritable

    assert unwritable(tmp_path / "new" / "deeper") is None
    monkeypatch.setattr(os, "access", lambda path, mode: mode != os.W_OK | os.X_OK)
    assert unwritable(tmp_path) == "is not writable by this user"
    assert unwritable(tmp_path / "new") == f"cannot be created in {tmp_path}"


@pytest.mark.parametrize(("value", "expected"), [
    ("", None), ("0", None), (" OFF ", None), ("1", "sessionid"), ("True", "sessionid"), ("ON", "sessionid"),
    ("my.session_ID-2", "my.session_ID-2"), ("x" * 64, "x" * 64)])
def test_shared_signin_takes_a_flag_or_a_cookie_name(value: str, expected: str | None) -> None:
    assert Config.from_env({"GATEWAY_SHARED_SIGNIN": value}).shared_signin == expected


@pytest.mark.parametrize("value", ["my session", "x" * 65, "caf\u00e9"])
def test_shared_signin_refuses_other_names(value: str) -> None:
    with pytest.raises(ValueError) as refused:
        Config.from_env({"GATEWAY_SHARED_SIGNIN": value})
    assert str(refused.value) == (f'GATEWAY_SHARED_SIGNIN="{value}" must be 1, 0, or the name of Django\'s '
                                  "session cookie.")


def test_the_migration_directory_must_be_a_writable_directory(tmp_path: Path) -> None:
    assert Config.from_env({"GATEWAY_MIGRATION_DIR": f" {tmp_path} "}).migration_dir == tmp_path
    assert Config.from_env({"GATEWAY_MIGRATION_DIR": " "}).migration_dir is None
    for missing in (tmp_path / "missing", tmp_path / "file"):
        (tmp_path / "file").write_text("")
        with pytest.raises(ValueError) as refused:
            Config.from_env({"GATEWAY_MIGRATION_DIR": str(missing)})
        assert str(refused.value) == (f"GATEWAY_MIGRATION_DIR={missing} is not a writable directory: create it, "
                                      "empty, for this server's workers, or unset it.")


def test_with_file_reads_one_in_and_none_drops_it(tmp_path: Path) -> None:
    from gateway.core.config import load_config
    from gateway.migration.rules import GatewayFile

    path = tmp_path / "gateway.toml"
    path.write_text('[apps]\nnew = "tests.thirdapp:echo_app"\n')
    with_it = Config().with_file(path)
    assert with_it.config_file == path.resolve() and dict(with_it.file.apps) == {"new": "tests.thirdapp:echo_app"}
    assert dict(load_config({}, {}, path).file.apps) == {"new": "tests.thirdapp:echo_app"}
    without = with_it.with_file(None)
    assert without.config_file is None and without.file == GatewayFile()


def test_the_gateway_toml_here_is_read_unless_one_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.core.config import config_path

    monkeypatch.chdir(tmp_path)
    assert config_path({}) is None
    (tmp_path / "gateway.toml").write_text("[gateway]\nthreads = 3\n")
    assert config_path({}) == Path("gateway.toml")
    assert config_path({"GATEWAY_CONFIG": " other.toml "}) == Path("other.toml")
    assert Config.from_env({}).threads == 3


@pytest.mark.parametrize(("name", "value", "message"), [
    pytest.param("GATEWAY_MAX_BODY_SIZES", "/a=b=1K", 'GATEWAY_MAX_BODY_SIZES /a="b=1K" must be a size in bytes, '
                 "e.g. 10485760 or 10M.", id="size-of-a-prefix"),
    pytest.param("GATEWAY_TRUSTED_PROXIES", "10.0.0.1/8,x", 'GATEWAY_TRUSTED_PROXIES item "x" must be an IP address '
                 "or network, e.g. 10.0.0.0/8.", id="proxy"),
    pytest.param("GATEWAY_DRAIN_DELAY", "inf", 'GATEWAY_DRAIN_DELAY="inf" must be a number of seconds, e.g. '
                 "GATEWAY_DRAIN_DELAY=5.", id="infinite"),
    pytest.param("GATEWAY_STREAM_BODIES", "/", 'GATEWAY_STREAM_BODIES item "/" must be a mount prefix, e.g. '
                 '"/uploads".', id="root"),
    pytest.param("GATEWAY_THREADS", "x", 'GATEWAY_THREADS="x" must be a positive whole number, e.g. '
                 "GATEWAY_THREADS=100.", id="threads"),
    pytest.param("GATEWAY_THREADS", "-3", 'GATEWAY_THREADS="-3" must be a positive whole number, e.g. '
                 "GATEWAY_THREADS=100.", id="negative"),
])
def test_bad_values_quoted_in_full(name: str, value: str, message: str) -> None:
    with pytest.raises(ValueError) as refused:
        Config.from_env({name: value})
    assert str(refused.value) == message


def test_values_at_the_edges() -> None:
    config = Config.from_env({"GATEWAY_THREADS": "1", "GATEWAY_DRAIN_DELAY": "0", "GATEWAY_MAX_BODY_SIZES": "/aX/=1K",
                              "GATEWAY_TRUSTED_PROXIES": "10.0.0.1/8", "GATEWAY_STREAM_BODIES": "/upX//"})
    assert (config.threads, config.drain_delay, dict(config.max_body_sizes)) == (1, 0.0, {"/aX": 1024})
    assert [str(n) for n in config.trusted_proxies] == ["10.0.0.0/8"] and config.stream_bodies == ("/upX",)


def test_a_files_empty_strings_false_and_lists(tmp_path: Path) -> None:
    from gateway.core.config import load_config

    path = tmp_path / "gateway.toml"
    path.write_text('[gateway]\nthreads = ""\ndrain_delay = ""\naccess_log = false\n')
    config = load_config({}, {}, path)
    assert (config.threads, config.drain_delay, config.access_log) == (100, 0.0, False)
    for table, message in (("env = true", 'env="1" must be "development" or "production".'),
                           ('log_format = ["xml"]', 'log_format="xml" must be "text" or "json".')):
        path.write_text(f"[gateway]\n{table}\n")
        with pytest.raises(ValueError) as refused:
            load_config({}, {}, path)
        assert str(refused.value) == f"{path}, line 2: {message}"


def test_a_migration_directory_this_user_cannot_write_is_refused(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.setattr(os, "access", lambda path, mode: mode != os.W_OK | os.X_OK)
    with pytest.raises(ValueError, match="is not a writable directory"):
        Config.from_env({"GATEWAY_MIGRATION_DIR": str(tmp_path)})
