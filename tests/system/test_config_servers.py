"""One Config, handed to every worker process by the command (tests/unit/test_config.py
has the rest): options given only on the command line reach the workers, and options a
server cannot honour are refused in one line."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest

from tests.support import GATEWAY, ROOT, server_env

pytestmark = pytest.mark.server


@pytest.mark.parametrize("args", [pytest.param(["--workers", "2"], id="uvicorn-workers"),
                                  pytest.param(["--server", "granian"], id="granian"),
                                  pytest.param(["--reload"], id="uvicorn-reload")])
def test_workers_build_the_gateway_from_the_commands_config(start_gateway, args: list[str]) -> None:  # type: ignore[no-untyped-def]
    """Options given only on the command line reach every worker: nothing goes through os.environ."""
    server = start_gateway(*args, "--mount", "/echo=tests.thirdapp:echo_app", "--threads", "3",
                           "--log-format", "json")
    answer = httpx.get(server.url + "/echo/x?y=1", headers={"X-Request-ID": "from-the-test"})
    assert answer.status_code == 200, server.log
    assert answer.json()["SCRIPT_NAME"] == "/echo"
    server.wait_for('"request_id": "from-the-test"')  # the JSON log format reached the worker too


@pytest.mark.parametrize(("option", "message"), [
    pytest.param(["--drain-delay", "5"], "--drain-delay (or GATEWAY_DRAIN_DELAY) works on uvicorn only: Granian "
                 "gives an app no hook to keep serving after SIGTERM. Leave it out, or use --server uvicorn.",
                 id="drain-delay"),
    pytest.param(["--keep-alive", "5"], "--keep-alive works on uvicorn only: Granian has no idle timeout to set. "
                 "Leave it out, or use --server uvicorn.", id="keep-alive"),
])
def test_uvicorn_only_options_on_granian_are_refused_in_one_line(tmp_path: Path, option: list[str],
                                                                  message: str) -> None:
    result = subprocess.run([*GATEWAY, "serve", "--server", "granian", *option], cwd=ROOT,
                            env=server_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"gateway: error: {message} (see 'gateway serve --help')"]
