"""The tests' levels hold, read from their source (``ast``, nothing imported or run; the
fixtures' plugin also fails a unit test that connects or binds a socket while it runs):

- a unit test (``tests/unit``) opens no socket, starts no subprocess and never sleeps: no
  import of ``socket``, ``subprocess`` and the like (httpx is allowed: its ASGI transport
  calls an app in process), none of ``tests/support.py``'s server
  helpers or the fixtures that start a server, no ``time.sleep`` and no ``asyncio.sleep``
  but ``asyncio.sleep(0)`` (one turn of the loop), no ``server`` or ``soak`` marker;
- no test module imports another, by an import statement or by a mount's import string
  (``"/x=tests.unit.test_y:app"``): what tests share lives in tests/support.py,
  tests/entries.py, tests/fixtures.py (the fixtures' plugin) or tests/apps/. A test module
  that imports another runs the other's import-time code, and ties the two together.
"""

from __future__ import annotations

import ast
import re
import socket
from pathlib import Path

import pytest

from tests.support import ROOT

TESTS = ROOT / "tests"
#: This file, whose examples and tables hold what it looks for.
ITSELF = Path(__file__).resolve()

#: Modules whose import means a socket, a subprocess or a server.
NETWORK_OR_PROCESS = ("socket", "ssl", "selectors", "subprocess", "multiprocessing", "concurrent.futures.process",
                      "http.client", "http.server", "socketserver", "urllib.request", "requests",
                      "uvicorn", "granian", "gunicorn", "tests.apps.rawhttp", "tests.netns")
#: tests/support.py's names that start a process or open a socket.
SERVER_HELPERS = {"GATEWAY", "ServerProcess", "PostgresCluster", "free_port", "server_env", "wsgi_server"}
#: The plugin's fixtures that start a server (tests/fixtures.py).
SERVER_FIXTURES = {"start_gateway", "gateway_server", "gunicorn_server", "werkzeug_server", "postgres"}
#: ``os`` functions that start a process.
OS_PROCESS = re.compile(r"system|popen|fork|forkpty|spawn.*|exec.*|posix_spawn.*")


def _within(module: str, names: tuple[str, ...]) -> bool:
    return any(module == name or module.startswith(name + ".") for name in names)


def unit_problems(source: str) -> list[str]:
    """What in a unit test's source opens a socket, starts a subprocess or sleeps, by line."""
    problems: list[str] = []
    for node in ast.walk(ast.parse(source)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import):
            problems += [f"{line}: imports {a.name}" for a in node.names if _within(a.name, NETWORK_OR_PROCESS)]
            problems += [f"{line}: imports time.sleep" for a in node.names if a.name == "time.sleep"]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            names = {alias.name for alias in node.names}
            if _within(module, NETWORK_OR_PROCESS) or any(_within(f"{module}.{n}", NETWORK_OR_PROCESS) for n in names):
                problems.append(f"{line}: imports from {module}")
            if module == "tests.support" and names & SERVER_HELPERS:
                problems.append(f"{line}: imports {', '.join(sorted(names & SERVER_HELPERS))} from tests.support")
            if module in ("time", "asyncio") and "sleep" in names:
                problems.append(f"{line}: imports {module}.sleep")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
            if (owner, node.func.attr) == ("time", "sleep"):
                problems.append(f"{line}: time.sleep")
            elif (owner, node.func.attr) == ("asyncio", "sleep") and not (
                    node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value == 0):
                problems.append(f"{line}: asyncio.sleep other than asyncio.sleep(0)")
            elif owner == "os" and OS_PROCESS.fullmatch(node.func.attr):
                problems.append(f"{line}: os.{node.func.attr}")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            arguments = {a.arg for a in [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]}
            problems += [f"{line}: uses the fixture {name}" for name in sorted(arguments & SERVER_FIXTURES)]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in SERVER_FIXTURES:
            problems.append(f"{line}: names the fixture {node.value}")  # usefixtures("start_gateway")
        elif (isinstance(node, ast.Attribute) and node.attr in ("server", "soak")
              and isinstance(node.value, ast.Attribute) and node.value.attr == "mark"):
            problems.append(f"{line}: marked {node.attr}")
    return sorted(problems, key=lambda problem: int(problem.split(":")[0]))


def imported_test_modules(source: str, own: str) -> list[str]:
    """The test modules a test module imports, by line: by import statements, and by the import
    strings of mounts (``"tests.unit.test_x:app"``) other than its own."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import):
            found += [f"{line}: {a.name}" for a in node.names if a.name.split(".")[-1].startswith("test_")]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if module.split(".")[-1].startswith("test_"):
                found.append(f"{line}: {module}")
            elif module.split(".")[0] == "tests" or node.level:
                found += [f"{line}: {module}.{a.name}" for a in node.names if a.name.startswith("test_")]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            for named in re.findall(r"\btests(?:\.\w+)*\.(test_\w+):", node.value):
                if named != own:
                    found.append(f"{line}: {named} (in {node.value!r})")
    return found


@pytest.mark.parametrize("source", [
    pytest.param("import socket", id="socket"),
    pytest.param("import subprocess as sp", id="subprocess"),
    pytest.param("from multiprocessing import Process", id="multiprocessing"),
    pytest.param("import urllib.request", id="urllib-request"),
    pytest.param("from urllib import request", id="urllib-request-from"),
    pytest.param("from http import client", id="http-client"),
    pytest.param("import requests", id="requests"),
    pytest.param("from tests.apps.rawhttp import request", id="rawhttp"),
    pytest.param("from tests.support import ROOT, free_port", id="free-port"),
    pytest.param("from tests.support import GATEWAY", id="gateway-command"),
    pytest.param("import time\ntime.sleep(0.1)", id="time-sleep"),
    pytest.param("from time import sleep", id="sleep-imported"),
    pytest.param("import asyncio\nasync def f():\n    await asyncio.sleep(0.01)", id="asyncio-sleep"),
    pytest.param("import os\nos.system('ls')", id="os-system"),
    pytest.param("import os\nos.fork()", id="os-fork"),
    pytest.param("def test_x(start_gateway):\n    pass", id="server-fixture"),
    pytest.param("import pytest\n@pytest.mark.usefixtures('postgres')\ndef test_x():\n    pass", id="usefixtures"),
    pytest.param("import pytest\npytestmark = pytest.mark.server", id="server-marker"),
    pytest.param("import pytest\n@pytest.mark.soak\ndef test_x():\n    pass", id="soak-marker"),
])
def test_what_a_unit_test_may_not_do_is_found(source: str) -> None:
    assert len(unit_problems(source)) == 1, unit_problems(source)


def test_what_a_unit_test_may_do_is_not_flagged() -> None:
    source = ("import asyncio, io, threading\nfrom tests.support import ROOT, SyncASGIClient\n"
              "async def f():\n    await asyncio.sleep(0)\n"
              "def test_x(wsgi_client, tmp_path, monkeypatch):\n    assert 'socket' and 'subprocess'\n")
    assert unit_problems(source) == []


def test_no_unit_test_opens_a_socket_starts_a_subprocess_or_sleeps() -> None:
    problems = {str(path.relative_to(ROOT)): unit_problems(path.read_text())
                for path in sorted((TESTS / "unit").rglob("*.py")) if path.resolve() != ITSELF}
    assert {path: found for path, found in problems.items() if found} == {}, (
        "move the test to tests/integration (in process) or tests/system (servers), or do without")


@pytest.mark.parametrize("source", [
    pytest.param("import tests.unit.test_config", id="import"),
    pytest.param("from tests.integration import test_admin_doors as doors", id="from-package"),
    pytest.param("from tests.unit.test_pages import legacy", id="from-module"),
    pytest.param("from . import test_pages", id="relative"),
    pytest.param("import test_pages", id="bare"),
    pytest.param("SPECS = ['/x=tests.unit.test_pages:app']", id="mount-string"),
])
def test_a_test_module_importing_another_is_found(source: str) -> None:
    assert len(imported_test_modules(source, "test_self")) == 1, imported_test_modules(source, "test_self")


def test_a_module_mounting_its_own_apps_and_shared_code_is_not_flagged() -> None:
    source = ("from tests.support import ROOT\nfrom tests.apps.shop import SHOP\nimport tests.thirdapp\n"
              "SPECS = ['/x=tests.unit.test_self:app', '/y=tests.thirdapp:wsgi_app']\n")
    assert imported_test_modules(source, "test_self") == []


def test_no_test_module_imports_another() -> None:
    found = {str(path.relative_to(ROOT)): imported_test_modules(path.read_text(), path.stem)
             for path in sorted(TESTS.rglob("test_*.py")) if path.resolve() != ITSELF}
    assert {path: names for path, names in found.items() if names} == {}


@pytest.mark.parametrize("use", [pytest.param(lambda s: s.bind(("127.0.0.1", 0)), id="bind"),
                                 pytest.param(lambda s: s.connect(("127.0.0.1", 9)), id="connect")])
def test_a_unit_test_that_opens_a_socket_fails_as_it_runs(use: object) -> None:
    with socket.socket() as made, pytest.raises(pytest.fail.Exception, match="this unit test opens a socket"):
        use(made)  # type: ignore[operator]
