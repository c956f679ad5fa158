"""gunicorn is not offered bare: it gives the app no way to bound a slow client, so the
gateway warns under it, and refuses to start in production, unless a buffering proxy is
said to be in front (GATEWAY_BUFFERING_PROXY=1)."""

from __future__ import annotations

import logging
import sys
import types
from dataclasses import replace

import pytest

from gateway.core.config import Config
from gateway.serve.builder import APP_LOAD_ERROR, BARE_GUNICORN, build, refuse_bare_gunicorn


@pytest.fixture
def under_gunicorn(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process looks like a gunicorn worker (its arbiter's module is loaded)."""
    monkeypatch.setitem(sys.modules, "gunicorn.arbiter", types.ModuleType("gunicorn.arbiter"))


def gateway_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "gateway"]


def test_production_refuses_to_start_bare_under_gunicorn(under_gunicorn: None,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    config = replace(Config.from_env({}), env="production")
    with caplog.at_level(logging.WARNING, logger="gateway"), pytest.raises(SystemExit) as exited:
        refuse_bare_gunicorn(config)
    assert exited.value.code == APP_LOAD_ERROR == 4  # gunicorn's master stops: "App failed to load"
    assert gateway_lines(caplog) == [
        (logging.CRITICAL, f"{BARE_GUNICORN} The gateway does not start bare under gunicorn in production.")]


def test_development_warns_and_serves(under_gunicorn: None, caplog: pytest.LogCaptureFixture) -> None:
    from werkzeug.test import Client

    with caplog.at_level(logging.WARNING, logger="gateway"):
        app = build(Config.from_env({}), "wsgi")
    assert gateway_lines(caplog) == [(logging.WARNING, BARE_GUNICORN)]
    assert Client(app).get("/healthz").status_code == 200


@pytest.mark.parametrize("env", ["development", "production"])
def test_a_buffering_proxy_in_front_says_nothing(under_gunicorn: None, caplog: pytest.LogCaptureFixture,
                                                 env: str) -> None:
    config = replace(Config.from_env({"GATEWAY_BUFFERING_PROXY": "1"}), env=env)
    assert config.buffering_proxy
    with caplog.at_level(logging.WARNING, logger="gateway"):
        refuse_bare_gunicorn(config)
    assert gateway_lines(caplog) == []


def test_other_servers_say_nothing(caplog: pytest.LogCaptureFixture) -> None:
    assert "gunicorn.arbiter" not in sys.modules
    with caplog.at_level(logging.WARNING, logger="gateway"):
        refuse_bare_gunicorn(replace(Config.from_env({}), env="production"))
    assert gateway_lines(caplog) == []


def test_the_setting_is_read_strictly() -> None:
    assert Config.from_env({}).buffering_proxy is False
    with pytest.raises(ValueError, match="GATEWAY_BUFFERING_PROXY"):
        Config.from_env({"GATEWAY_BUFFERING_PROXY": "maybe"})
