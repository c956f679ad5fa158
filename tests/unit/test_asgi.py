"""ASGI specifics: lifespan, path semantics, websockets."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.adapters.asgi import create_asgi_app
from gateway.core.config import Config
from gateway.core.mounts import MountTable


def third_table() -> MountTable:
    return MountTable.from_specs(["/third=tests.thirdapp:asgi_app", "/plain=tests.thirdapp:wsgi_app"],
                                 defaults=False)


async def lifespan(app: Any) -> list[str]:
    """Run startup then shutdown; return the message types the app sent."""
    inbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    sent: list[str] = []

    async def send(message: dict[str, str]) -> None:
        sent.append(message["type"])

    task = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, send))
    await inbox.put({"type": "lifespan.startup"})
    await inbox.put({"type": "lifespan.shutdown"})
    await asyncio.wait_for(task, 10)
    return sent


def test_lifespan_is_answered_and_passed_to_asgi_mounts() -> None:
    import tests.thirdapp as third

    third.STATE.clear()
    app = create_asgi_app(third_table(), Config.from_env(), threads=2)
    assert asyncio.run(lifespan(app)) == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert third.STATE == ["startup", "shutdown"]


def test_lifespan_with_django_asgi_mount_still_completes() -> None:
    """Django's ASGI handler raises on lifespan; the gateway skips it and starts."""
    table = MountTable.from_specs(["/dj=django_hello.asgi:application"], defaults=False)
    assert [m.interface for m in table] == ["asgi"]
    app = create_asgi_app(table, Config.from_env(), threads=2)
    assert asyncio.run(lifespan(app)) == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


async def http(app: Any, path: str, root_path: str = "") -> tuple[int, bytes]:
    messages = [{"type": "http.request", "body": b"", "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
             "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": root_path,
             "query_string": b"", "headers": [(b"host", b"localhost")], "server": ("localhost", 80),
             "client": ("127.0.0.1", 5000)}
    await app(scope, receive, send)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], body


def test_path_keeps_full_path_and_root_path_gains_prefix() -> None:
    app = create_asgi_app(third_table(), Config.from_env(), threads=2)
    assert asyncio.run(http(app, "/third/x")) == (200, b"asgi root_path=/third path=/third/x")
    # Behind a server-level root_path (uvicorn --root-path /apps), both gain it.
    assert asyncio.run(http(app, "/apps/third/x", "/apps")) == (
        200, b"asgi root_path=/apps/third path=/apps/third/x")
    assert asyncio.run(http(app, "/apps/plain/y", "/apps")) == (
        200, b"wsgi script_name=/apps/plain path_info=/y")
    app.executor.shutdown()


def test_websocket_reaches_asgi_mount_and_is_refused_by_wsgi_mount() -> None:
    app = create_asgi_app(third_table(), Config.from_env(), threads=2)

    async def connect(path: str) -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []
        inbox = [{"type": "websocket.connect"}]

        async def receive() -> dict[str, Any]:
            return inbox.pop(0) if inbox else {"type": "websocket.disconnect", "code": 1000}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "websocket", "path": path, "root_path": "", "query_string": b"",
                 "headers": [(b"host", b"localhost")]}
        await app(scope, receive, send)
        return sent

    accepted = asyncio.run(connect("/third/ws"))
    assert [m["type"] for m in accepted] == ["websocket.accept", "websocket.send", "websocket.close"]
    assert accepted[1]["text"] == "root_path=/third"
    assert asyncio.run(connect("/plain/ws")) == [{"type": "websocket.close", "code": 1008}]  # policy violation
    app.executor.shutdown()
