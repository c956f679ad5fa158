"""The gateway as an ASGI app: ``gateway.asgi:application``.

The same mount table as ``gateway.wsgi``, routed with the same rules. WSGI apps run
through :class:`gateway.bridge.WSGIBridge` on one thread pool (``GATEWAY_THREADS``);
ASGI apps are called directly with ``root_path`` extended by their prefix and ``path``
left whole, as current ASGI servers do. The gateway answers ``lifespan`` itself (and
passes it on to ASGI mounts that take it); a websocket to a WSGI mount is refused::

    uvicorn gateway.asgi:application
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from gateway.bridge import WSGIBridge, refuse_websocket
from gateway.config import Config
from gateway.mountpolicy import ASGIMount, WSGIMount
from gateway.mounts import MountTable
from gateway.pages import Pages
from gateway.types import ASGIApp, Message, Receive, Scope, Send
from gateway.wsgi import load_table

logger = logging.getLogger("gateway")


class Gateway:
    """ASGI app that routes each request to the mount its path names."""

    def __init__(self, table: MountTable, *, threads: int) -> None:
        self.table = table
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="wsgi")
        self.routes: dict[str, ASGIApp] = {}
        self.wsgi_prefixes: set[str] = set()
        for mount in table:
            if mount.interface == "wsgi":
                self.routes[mount.prefix] = WSGIBridge(WSGIMount(mount.app), self.executor)
                self.wsgi_prefixes.add(mount.prefix)
            else:
                self.routes[mount.prefix] = ASGIMount(mount.app)
        self.fallback = WSGIBridge(Pages(table), self.executor)
        self.lifespans: list[MountLifespan] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self.lifespan(receive, send)
            return
        root_path: str = scope.get("root_path", "")
        path: str = scope["path"]
        route = path[len(root_path) :] if root_path and path.startswith(root_path) else path
        mount, prefix, _ = self.table.match(route)
        if mount is None:
            app: ASGIApp = self.fallback
        else:
            if kind == "websocket" and prefix in self.wsgi_prefixes:
                await refuse_websocket(receive, send)
                return
            app = self.routes[prefix]
            scope = dict(scope)
            scope["root_path"] = root_path + prefix
        await app(scope, receive, send)

    async def lifespan(self, receive: Receive, send: Send) -> None:
        """Answer the lifespan protocol, starting and stopping ASGI mounts that use it."""
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    for mount in self.table:
                        if mount.interface == "asgi":
                            lifespan = MountLifespan(mount.app, mount.prefix)
                            if await lifespan.startup():
                                self.lifespans.append(lifespan)
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for lifespan in reversed(self.lifespans):
                    await lifespan.shutdown()
                self.executor.shutdown(wait=False)
                await send({"type": "lifespan.shutdown.complete"})
                return


class MountLifespan:
    """Drive one ASGI mount's lifespan; a mount that does not speak it is skipped."""

    def __init__(self, app: ASGIApp, prefix: str) -> None:
        self.app = app
        self.prefix = prefix
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.outbox: asyncio.Queue[Message] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        await self.app(scope, self.inbox.get, self.outbox.put)

    async def _answer(self) -> Message | None:
        assert self.task is not None
        getter = asyncio.ensure_future(self.outbox.get())
        await asyncio.wait({getter, self.task}, return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            return getter.result()
        getter.cancel()
        if self.task.exception() is not None:
            logger.debug("The app at %s does not support lifespan.", self.prefix)
        return None

    async def startup(self) -> bool:
        """Start the mount; True if it took part in the protocol."""
        self.task = asyncio.create_task(self._run())
        await self.inbox.put({"type": "lifespan.startup"})
        answer = await self._answer()
        if answer is None:
            return False
        if answer["type"] == "lifespan.startup.failed":
            raise RuntimeError(f"The app at {self.prefix} failed to start: {answer.get('message', '')}")
        return True

    async def shutdown(self) -> None:
        """Stop the mount and wait for it to say so."""
        await self.inbox.put({"type": "lifespan.shutdown"})
        await self._answer()


def create_asgi_app(table: MountTable, *, threads: int) -> Gateway:
    """Route the apps of ``table``; WSGI ones run on a pool of ``threads`` threads."""
    return Gateway(table, threads=threads)


def __getattr__(name: str) -> Gateway:
    # Built on first access, like gateway.wsgi.application.
    if name == "application":
        global application
        config = Config.from_env()
        application = create_asgi_app(load_table(config), threads=config.threads)
        return application
    raise AttributeError(name)
