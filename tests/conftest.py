"""Runs first: the environment the in-process apps need, each test's level (``unit``,
``integration`` or ``system``, by its folder) and the time report. The fixtures are in the
plugin ``tests/fixtures.py``, the helpers in ``tests/support.py``."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

pytest_plugins = ["tests.fixtures"]

#: Variables of the caller's shell that would change what the in-process apps serve.
CLEARED = ("DJANGO_DATA_DIR", "DJANGO_ALLOWED_HOSTS", "FLASK_TRUSTED_HOSTS", "FLASK_SECRET_KEY", "DATABASE_URL",
           "GATEWAY_MOUNTS", "SCRIPT_NAME")
_saved: dict[str, str | None] = {}


def pytest_configure(config: pytest.Config) -> None:
    """Before any test module is imported: the in-process apps read their settings when
    first imported, so point them at a data directory of the run's own, and clear what the
    caller's shell may have set. Undone at the end of the run."""
    for name in ("GATEWAY_DATA_DIR", *CLEARED):
        _saved[name] = os.environ.pop(name, None)
    django_settings = sys.modules.get("django_hello.settings")
    if django_settings is None:
        os.environ["GATEWAY_DATA_DIR"] = tempfile.mkdtemp(prefix="gateway-tests-")
    else:  # a second run in this process (mutmut's): Django keeps the directory it read at the first
        django_settings.DATA_DIR.mkdir(mode=0o700, exist_ok=True)
        os.environ["GATEWAY_DATA_DIR"] = str(django_settings.DATA_DIR)
        # ... and the name of its embedded database, which it opens read-write only: the
        # first run's end removed the file with its directory ("unable to open database file").
        sqlite = getattr(django_settings, "_sqlite", None)
        if sqlite is not None and not sqlite.exists():
            sqlite.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.close(os.open(sqlite, os.O_RDONLY | os.O_CREAT, 0o600))


def pytest_unconfigure(config: pytest.Config) -> None:
    data_dir = os.environ.pop("GATEWAY_DATA_DIR", None)
    if data_dir and _saved:
        shutil.rmtree(data_dir, ignore_errors=True)
    for name, value in _saved.items():
        if value is not None:
            os.environ[name] = value


# -- The levels, and the time spent in each, printed at the end of a run (.ci/run shows it) --

TESTS = Path(__file__).resolve().parent
#: The levels, by folder; each test gets its level's marker, so ``-m unit`` works as ``tests/unit`` does.
LEVELS = {"unit": "unit (tests/unit)", "integration": "integration (tests/integration)",
          "system": "system (tests/system, -m 'not soak')"}
#: The tiers of the time report: the levels, the load tests (marked ``soak``, in tests/system)
#: apart, and the files not yet in a level.
TIERS = {**LEVELS, "soak": "load tests (-m soak)", "": "not in a level (tests/test_*.py)"}
_spent: dict[str, list[float]] = {}  # tier -> [tests, seconds]


def level_of(path: Path) -> str:
    """``unit``, ``integration`` or ``system`` for a test file in that folder of tests/, else ``""``."""
    parts = path.resolve().relative_to(TESTS).parts if path.resolve().is_relative_to(TESTS) else ()
    return parts[0] if len(parts) > 1 and parts[0] in LEVELS else ""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its level, and name its tier in its reports (``user_properties``
    reach xdist's controller)."""
    for item in items:
        level = level_of(item.path)
        if level:
            item.add_marker(level)
        item.user_properties.append(("tier", TIERS["soak" if item.get_closest_marker("soak") else level]))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Add each phase's duration to its test's tier (reports from xdist's workers too)."""
    tier = dict(report.user_properties).get("tier")
    if tier is None:
        return
    spent = _spent.setdefault(str(tier), [0, 0.0])
    spent[1] += report.duration
    if report.when == "teardown":
        spent[0] += 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _spent:
        return
    terminalreporter.write_sep("-", "time by tier: setup, call and teardown, summed over the tests")
    for tier in TIERS.values():
        if tier in _spent:
            tests, seconds = _spent[tier]
            terminalreporter.write_line(f"{tier:<42} {int(tests):5d} tests {seconds:8.1f} s")
