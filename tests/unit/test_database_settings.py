"""django_hello's PostgreSQL options: the limits PostgreSQL enforces on the app's sessions.

Each case runs the settings file afresh (``runpy``, its own namespace: the settings Django
may have loaded in this process stay as they are) with the environment given. That
PostgreSQL applies them is in ``tests/system/test_netns.py`` (``test_database_flaps``: the app's
connection shows them, and a transaction it leaves open is ended by the server).
"""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

import pytest

from tests.support import ROOT

SETTINGS = ROOT / "django_hello" / "settings.py"
URL = "postgres://gateway:secret@db.internal:5432/gateway"
NAMES = ("DJANGO_DB_IDLE_IN_TRANSACTION_TIMEOUT", "DJANGO_DB_LOCK_TIMEOUT", "DJANGO_DB_STATEMENT_TIMEOUT")


def options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **env: str) -> dict[str, Any]:
    """The default database's OPTIONS, from the settings file run with ``env``."""
    for name in NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("DJANGO_DATA_DIR", str(tmp_path))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return dict(runpy.run_path(str(SETTINGS))["DATABASES"]["default"]["OPTIONS"])


@pytest.mark.parametrize(("env", "expected"), [
    pytest.param({}, "-c idle_in_transaction_session_timeout=10000 -c lock_timeout=5000 -c statement_timeout=30000",
                 id="defaults"),
    pytest.param({"DJANGO_DB_LOCK_TIMEOUT": "2.5", "DJANGO_DB_STATEMENT_TIMEOUT": "0"},
                 "-c idle_in_transaction_session_timeout=10000 -c lock_timeout=2500 -c statement_timeout=0",
                 id="set"),
])
def test_session_limits_go_to_libpq_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: dict[str, str],
                                            expected: str) -> None:
    found = options(monkeypatch, tmp_path, DATABASE_URL=URL, **env)
    assert found["options"] == expected
    assert (found["keepalives"], found["tcp_user_timeout"], found["connect_timeout"]) == (1, 2000, 5)


def test_options_in_the_url_are_kept(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    found = options(monkeypatch, tmp_path, DATABASE_URL=URL + "?options=-c%20search_path%3Dapp")
    assert found["options"].startswith("-c search_path=app -c idle_in_transaction_session_timeout=10000 "), found


def test_a_bad_limit_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r'^DJANGO_DB_LOCK_TIMEOUT="5s" must be a number of seconds, '
                                         r"e\.g\. DJANGO_DB_LOCK_TIMEOUT=5\.$"):
        options(monkeypatch, tmp_path, DATABASE_URL=URL, DJANGO_DB_LOCK_TIMEOUT="5s")
