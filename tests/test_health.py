"""``/readyz``'s probe in process: one check at a time, a timeout, and nothing left to
hold the process at exit."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from gateway.adapters.health import ReadinessProbe
from gateway.core.config import Config
from gateway.core.mounts import MountTable
from gateway.core.pipeline import Pipeline


def stuck_app(release: threading.Event) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        release.wait(30)
        start_response("200 OK", [])
        return [b""]
    return app


def test_a_stuck_check_says_busy_and_holds_no_thread_the_process_waits_for() -> None:
    release = threading.Event()
    probe = ReadinessProbe(Pipeline(MountTable([]), Config.from_env({})), {"/stuck": stuck_app(release)}, 0.2)
    try:
        started = time.monotonic()
        reply = probe.check()
        assert reply.status == 503 and json.loads(reply.body)["status"] == "busy"
        assert time.monotonic() - started < 5
        again = probe.check()  # waits for the same check, starts no second one
        assert again.status == 503
        threads = [t for t in threading.enumerate() if t.name == "gateway-readyz"]
        assert len(threads) == 1 and threads[0].daemon  # the interpreter does not join it at exit
        stuck = probe.running
    finally:
        release.set()
    assert stuck is not None
    assert stuck.result(timeout=5)["/stuck"] == "ok"  # released, the check finishes
    assert probe.start() is not stuck  # and the next probe runs a new one
