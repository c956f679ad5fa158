"""``/readyz``'s probe in process: one check at a time, a timeout, and nothing left to
hold the process at exit."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import pytest

from gateway.adapters.health import (
    ReadinessProbe,
    check_asgi_mount,
    check_databases,
    check_mount,
    probe_host,
    ready_reply,
)
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
        assert reply.status == 503
        assert json.loads(reply.body) == {"status": "busy", "checks": {}, "detail": "the check took longer than 0.2 s"}
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


def test_an_asgi_mount_is_probed_with_a_whole_get_of_its_root() -> None:
    """The scope a bare server would give a GET of the mount's root, with a copy of the
    state its lifespan filled; the body is empty, and the probe never disconnects."""
    seen: list[object] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append({**scope, "body": await receive()})
        later = asyncio.ensure_future(receive())  # as an app that watches for a disconnect
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        await asyncio.sleep(0)  # one turn of the loop: the second receive has run
        seen.append(later.done())
        later.cancel()

    state = {"db": "up"}
    checked = asyncio.run(asyncio.wait_for(check_asgi_mount("/api", app, "shop.example", state), 5))
    assert checked == "ok"  # any status below 500
    assert seen == [{"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
                     "scheme": "http", "path": "/api/", "raw_path": b"/api/", "root_path": "/api",
                     "query_string": b"", "headers": [(b"host", b"shop.example")], "client": ("127.0.0.1", 0),
                     "server": ("shop.example", 80), "state": {"db": "up"},
                     "body": {"type": "http.request", "body": b"", "more_body": False}}, False]
    assert seen[0]["state"] is not state  # type: ignore[index]


def answering(status: int | None) -> Any:
    """An ASGI app that answers ``status`` (0: nothing at all; None: it raises)."""
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if status is None:
            raise RuntimeError("no database")
        if status:
            await send({"type": "http.response.start", "status": status, "headers": []})
            await send({"type": "http.response.body", "body": b""})
    return app


@pytest.mark.parametrize(("status", "verdict"), [
    pytest.param(200, "ok", id="200"), pytest.param(499, "ok", id="499"),
    pytest.param(500, "fail: answered 500", id="500"), pytest.param(0, "fail: answered nothing", id="nothing"),
    pytest.param(None, "fail: RuntimeError: no database", id="raises"),
])
def test_an_asgi_mounts_verdict(status: int | None, verdict: str) -> None:
    assert asyncio.run(asyncio.wait_for(check_asgi_mount("/api", answering(status), "localhost"), 5)) == verdict


def wsgi_answering(status: str | None, seen: list[tuple[str, ...]]) -> Any:
    """A WSGI app that answers ``status`` ("": it never starts a response; None: it raises)."""
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append((environ["SCRIPT_NAME"], environ["PATH_INFO"], environ["REQUEST_URI"], environ["HTTP_HOST"]))
        if status is None:
            raise OSError("disk full")
        if status:
            start_response(status, [])
        return []
    return app


@pytest.mark.parametrize(("status", "verdict"), [
    pytest.param("200 OK", "ok", id="200"), pytest.param("404 Not Found", "ok", id="404"),
    pytest.param("500 Internal Server Error", "fail: answered 500 Internal Server Error", id="500"),
    pytest.param("", "fail: answered nothing", id="nothing"),
    pytest.param(None, "fail: OSError: disk full", id="raises"),
])
def test_a_wsgi_mounts_verdict_at_its_root(status: str | None, verdict: str) -> None:
    seen: list[tuple[str, ...]] = []
    assert check_mount("/flask", wsgi_answering(status, seen), "shop.example") == verdict
    assert check_mount("app:shop", wsgi_answering(status, seen), "shop.example") == verdict  # a rules' app: at /
    assert seen == [("/flask", "/", "/flask/", "shop.example"), ("", "/", "/", "shop.example")]


@pytest.mark.parametrize(("hosts", "host"), [
    pytest.param("*,.example.com,shop.example.com", "shop.example.com", id="the-first-name"),
    pytest.param("*,.example.com", "localhost", id="no-name"),
])
def test_the_probes_host_is_one_the_apps_accept(hosts: str, host: str) -> None:
    pipeline = Pipeline(MountTable([]), Config.from_env({"GATEWAY_ALLOWED_HOSTS": hosts}))
    assert probe_host(pipeline) == host


def test_the_body_is_closed_after_the_probe() -> None:
    closed: list[bool] = []

    class Body(list[bytes]):
        def close(self) -> None:
            closed.append(True)

    def app(environ: dict[str, Any], start_response: Any) -> Body:
        start_response("200 OK", [])
        return Body([b"hello"])

    assert check_mount("/flask", app, "localhost") == "ok" and closed == [True]


def test_the_reply_says_ok_only_when_every_check_does() -> None:
    assert (ready_reply({"/a": "ok"}).status, json.loads(ready_reply({"/a": "ok"}).body)) == (
        200, {"status": "ok", "checks": {"/a": "ok"}})
    failed = ready_reply({"/a": "ok", "/b": "fail: answered 500"})
    assert (failed.status, json.loads(failed.body)["status"]) == (503, "fail")


def test_the_probe_asks_by_an_allowed_host_and_hands_its_errors_to_the_waiters() -> None:
    seen: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(environ["HTTP_HOST"])
        start_response("200 OK", [])
        return []

    pipeline = Pipeline(MountTable([]), Config.from_env({"GATEWAY_ALLOWED_HOSTS": "shop.example"}))
    reply = ReadinessProbe(pipeline, {"/shop": app}, 5).check()
    assert json.loads(reply.body)["checks"]["/shop"] == "ok" and seen == ["shop.example"]

    class Broken(dict[str, Any]):
        def items(self) -> Any:
            raise LookupError("the mounts changed")

    with pytest.raises(LookupError, match="the mounts changed"):
        ReadinessProbe(pipeline, Broken(), 5).check()


def test_a_stuck_check_says_busy_on_the_event_loop_too() -> None:
    """The ASGI entry point's wait: the threaded check and the loop's own (``more``), each
    stuck; the loop's is cancelled, the thread's runs on for the next probe."""
    release = threading.Event()
    cancelled: list[bool] = []

    async def more() -> dict[str, str]:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return {}

    probe = ReadinessProbe(Pipeline(MountTable([]), Config.from_env({})), {"/stuck": stuck_app(release)}, 0.2)
    try:
        reply = asyncio.run(probe.check_async(more))
        assert reply.status == 503
        assert json.loads(reply.body) == {"status": "busy", "checks": {}, "detail": "the check took longer than 0.2 s"}
        assert cancelled == [True] and probe.running is not None and not probe.running.done()
    finally:
        release.set()


def test_a_database_that_fails_is_named_with_its_error(table: MountTable, monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Any) -> None:
    from django.db import connections  # set up by the demo apps' table

    broken = {**connections["default"].settings_dict, "NAME": str(tmp_path / "no" / "such.sqlite3")}
    monkeypatch.setitem(connections.settings, "broken", broken)
    try:
        checks = check_databases()
    finally:
        del connections["broken"]
    assert checks["database:broken"] == "fail: OperationalError: unable to open database file"
    assert (checks["database:default"], checks["migrations"]) == ("ok", "ok")
