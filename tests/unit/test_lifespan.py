"""ASGI mounts' lifespans under the gateway: state, start-up failure, shutdown failure."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.adapters.asgi import create_asgi_app
from gateway.core.config import Config
from gateway.core.mounts import Mount, MountTable


def stateful_app(name: str, *, fail_startup: bool = False, fail_shutdown: bool = False):  # type: ignore[no-untyped-def]
    """An ASGI app that keeps a counter in its lifespan state, as Starlette apps do."""
    events: list[str] = []

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    if fail_startup:
                        await send({"type": "lifespan.startup.failed", "message": f"{name} has no database"})
                        return
                    scope["state"]["count"] = 0
                    scope["state"]["name"] = name
                    events.append("startup")
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    events.append("shutdown")
                    if fail_shutdown:
                        await send({"type": "lifespan.shutdown.failed", "message": f"{name} could not flush"})
                    else:
                        await send({"type": "lifespan.shutdown.complete"})
                    return
        state = scope["state"]  # a bare server copies its lifespan state into each request
        state["count"] += 1
        body = f"{state['name']} count={state['count']}".encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": body})

    app.events = events  # type: ignore[attr-defined]
    return app


def table(**apps: Any) -> MountTable:
    return MountTable(Mount(f"/{name}", f"tests:{name}", "asgi", app) for name, app in apps.items())


async def run(app: Any, paths: list[str]) -> tuple[list[dict[str, Any]], list[tuple[int, bytes]]]:
    """Start the lifespan, GET each path, shut down; return the lifespan answers and responses."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    answers: list[dict[str, Any]] = []
    server_state: dict[str, Any] = {}

    async def send_lifespan(message: dict[str, Any]) -> None:
        answers.append(message)

    task = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": server_state},
                                   inbox.get, send_lifespan))
    await inbox.put({"type": "lifespan.startup"})
    while not answers:
        await asyncio.sleep(0)
        if task.done():
            break
    responses = []
    if answers and answers[-1]["type"] == "lifespan.startup.complete":
        for path in paths:
            sent: list[dict[str, Any]] = []

            async def receive() -> dict[str, Any]:
                return {"type": "http.request", "body": b"", "more_body": False}

            async def send(message: dict[str, Any], sent: list[dict[str, Any]] = sent) -> None:
                sent.append(message)

            scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
                     "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
                     "query_string": b"", "headers": [(b"host", b"localhost")], "server": ("localhost", 80),
                     "client": ("127.0.0.1", 5000), "state": dict(server_state)}
            await app(scope, receive, send)
            responses.append((sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])))
        await inbox.put({"type": "lifespan.shutdown"})
    await asyncio.wait_for(task, 10)
    return answers, responses


def test_each_mounts_lifespan_state_reaches_its_requests() -> None:
    one, two = stateful_app("one"), stateful_app("two")
    gateway = create_asgi_app(table(one=one, two=two), Config.from_env({}), threads=1)
    answers, responses = asyncio.run(run(gateway, ["/one/", "/one/", "/two/", "/one/"]))
    assert [a["type"] for a in answers] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    # A shallow copy per request, as on a bare server: the values are the lifespan's.
    assert responses == [(200, b"one count=1"), (200, b"one count=1"), (200, b"two count=1"), (200, b"one count=1")]
    assert one.events == two.events == ["startup", "shutdown"]
    gateway.executor.shutdown()


def test_a_failed_shutdown_is_reported_with_the_mounts_message() -> None:
    good, bad = stateful_app("good"), stateful_app("bad", fail_shutdown=True)
    gateway = create_asgi_app(table(good=good, bad=bad), Config.from_env({}), threads=1)
    answers, _ = asyncio.run(run(gateway, []))
    assert answers[-1] == {"type": "lifespan.shutdown.failed", "message": "The app at /bad failed to shut down: "
                           "bad could not flush"}
    assert good.events == bad.events == ["startup", "shutdown"]  # the others still shut down
    gateway.executor.shutdown()


def test_a_failed_startup_fails_the_gateways_and_stops_the_started_mounts() -> None:
    first, broken, never = stateful_app("first"), stateful_app("broken", fail_startup=True), stateful_app("never")
    gateway = create_asgi_app(table(first=first, broken=broken, never=never), Config.from_env({}), threads=1)
    answers, responses = asyncio.run(run(gateway, ["/first/"]))
    assert answers == [{"type": "lifespan.startup.failed",
                        "message": "The app at /broken failed to start: broken has no database"}]
    assert responses == []
    assert first.events == ["startup", "shutdown"] and never.events == []
    gateway.executor.shutdown()


def test_root_path_is_stripped_only_on_a_segment_boundary() -> None:
    from tests.thirdapp import asgi_app

    gateway = create_asgi_app(MountTable([Mount("/foo-123", "t:a", "asgi", asgi_app)]), Config.from_env({}),
                              threads=1)

    async def get(path: str, root_path: str) -> tuple[int, bytes]:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b""}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await gateway({"type": "http", "method": "GET", "path": path, "root_path": root_path, "query_string": b"",
                       "headers": [(b"host", b"localhost")], "scheme": "http", "server": ("localhost", 80)},
                      receive, send)
        return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])

    # "/foo-123/bar" is not under "/foo": it is taken as relative to it (as servers before
    # uvicorn 0.26 sent paths), not cut to "-123/bar".
    assert asyncio.run(get("/foo-123/bar", "/foo")) == (200, b"asgi root_path=/foo/foo-123 path=/foo/foo-123/bar")
    assert asyncio.run(get("/foo/foo-123/bar", "/foo")) == (200, b"asgi root_path=/foo/foo-123 path=/foo/foo-123/bar")
    gateway.executor.shutdown()


def test_a_mount_that_raises_after_taking_startup_fails_the_start() -> None:
    async def raises(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "lifespan":
            await receive()
            raise OSError("no database")

    gateway = create_asgi_app(table(raises=raises), Config.from_env({}), threads=1)
    answers, _ = asyncio.run(run(gateway, []))
    assert answers == [{"type": "lifespan.startup.failed",
                        "message": "The app at /raises failed: OSError: no database"}]
    gateway.executor.shutdown()


def test_a_mount_that_reports_a_failure_and_then_raises_logs_it_once(caplog: Any) -> None:
    # Starlette's lifespan sends lifespan.startup.failed, then raises the error again.
    import gc
    import logging

    async def starlette_like(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.failed", "message": "no database"})
            raise OSError("no database")

    gateway = create_asgi_app(table(broken=starlette_like), Config.from_env({}), threads=1)
    with caplog.at_level(logging.DEBUG):
        answers, _ = asyncio.run(run(gateway, []))
        gc.collect()  # asyncio reports an exception never retrieved when the task is collected
    assert answers == [{"type": "lifespan.startup.failed", "message": "The app at /broken failed to start: "
                        "no database"}]
    assert not [r for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR], caplog.text
    assert [r.getMessage() for r in caplog.records if r.name == "gateway"] == [
        "The lifespan of an ASGI mount ended with OSError: no database"]  # once, at debug
    gateway.executor.shutdown()


def test_a_mount_gets_a_lifespan_scope_of_its_own() -> None:
    scopes: list[dict[str, Any]] = []
    inner = stateful_app("one")

    async def recording(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "lifespan":
            scopes.append(dict(scope))
        await inner(scope, receive, send)

    gateway = create_asgi_app(table(one=recording), Config.from_env({}), threads=1)
    answers, _ = asyncio.run(run(gateway, []))
    assert [a["type"] for a in answers] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert scopes == [{"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"},
                       "state": {"count": 0, "name": "one"}}]
    gateway.executor.shutdown()


def test_a_mount_without_lifespan_is_skipped_and_said_so_once(caplog: Any) -> None:
    import logging

    async def refuses(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "lifespan":  # as Django's ASGI handler does, before it receives anything
            raise ValueError("Django can only handle ASGI/HTTP connections, not lifespan.")

    gateway = create_asgi_app(table(dj=refuses), Config.from_env({}), threads=1)
    with caplog.at_level(logging.DEBUG, logger="gateway"):
        answers, _ = asyncio.run(run(gateway, []))
    assert [a["type"] for a in answers] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    said = [r.getMessage() for r in caplog.records if r.name == "gateway" and "lifespan" in r.getMessage()]
    # Once each: the mount is not stopped at shutdown, as it never started.
    assert said == ["The lifespan of an ASGI mount ended with ValueError: Django can only handle ASGI/HTTP "
                    "connections, not lifespan.", "The app at /dj does not support lifespan."]
    gateway.executor.shutdown()


def test_failures_without_a_message_and_several_at_shutdown() -> None:
    async def terse(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.failed"})

    gateway = create_asgi_app(table(terse=terse), Config.from_env({}), threads=1)
    answers, _ = asyncio.run(run(gateway, []))
    assert answers == [{"type": "lifespan.startup.failed", "message": "The app at /terse failed to start: "}]
    gateway.executor.shutdown()

    async def quiet(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.failed"})

    gateway = create_asgi_app(table(quiet=quiet, bad=stateful_app("bad", fail_shutdown=True)), Config.from_env({}),
                              threads=1)
    answers, _ = asyncio.run(run(gateway, []))
    assert answers[-1] == {"type": "lifespan.shutdown.failed", "message": "The app at /bad failed to shut down: bad "
                           "could not flush The app at /quiet failed to shut down: "}  # in reverse order
    gateway.executor.shutdown()


def test_the_gateways_own_start_and_stop_run_around_the_mounts() -> None:
    """``serve_lifespan``'s hooks: ``on_startup`` once every mount has started, before the
    server hears so; ``on_shutdown`` once they have stopped, even when one failed to."""
    from gateway.adapters.lifespan import Lifespans, serve_lifespan

    async def serve(app: Any) -> list[str]:
        events: list[str] = []
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        for message in ("lifespan.startup", "lifespan.shutdown"):
            inbox.put_nowait({"type": message})

        async def send(message: dict[str, Any]) -> None:
            events.append(message["type"])

        await serve_lifespan(Lifespans(table(app=app)), inbox.get, send, on_startup=lambda: events.append("up"),
                             on_shutdown=lambda: events.append("down"))
        return events

    good, bad = stateful_app("good"), stateful_app("bad", fail_shutdown=True)
    assert asyncio.run(serve(good)) == ["up", "lifespan.startup.complete", "down", "lifespan.shutdown.complete"]
    assert asyncio.run(serve(bad)) == ["up", "lifespan.startup.complete", "lifespan.shutdown.failed", "down"]
    assert good.events == bad.events == ["startup", "shutdown"]
