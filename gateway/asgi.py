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
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from gateway.bridge import WSGIBridge, refuse_websocket
from gateway.config import Config
from gateway.front import (
    HEALTH_PATHS,
    REQUEST_ID,
    HostPolicy,
    StatusRecorder,
    access_log,
    forwarded,
    is_trusted,
    log_access,
    refusal,
    refuse,
    request_id,
)
from gateway.headers import Drain, WSGIHeaders
from gateway.mountpolicy import ASGIMount
from gateway.mounts import MountTable
from gateway.pages import Pages
from gateway.types import ASGIApp, Message, Receive, Scope, Send
from gateway.wsgi import health_app, load_table, mounted_wsgi_apps

logger = logging.getLogger("gateway")


class Gateway:
    """ASGI app that applies the front policy and routes each request to its mount."""

    def __init__(self, table: MountTable, config: Config, *, threads: int | None = None) -> None:
        self.table = table
        self.config = config
        # A name of this gateway's own, so that exit_when_stuck counts only its threads.
        self.thread_prefix = f"wsgi-{id(self):x}"
        self.executor = ThreadPoolExecutor(max_workers=threads or config.threads, thread_name_prefix=self.thread_prefix)
        wsgi_apps = mounted_wsgi_apps(table, config, adapt_asgi=False)
        self.routes: dict[str, ASGIApp] = {}
        self.wsgi_prefixes: set[str] = set()
        for mount in table:
            if mount.interface == "wsgi":
                self.routes[mount.prefix] = WSGIBridge(wsgi_apps[mount.prefix], self.executor)
                self.wsgi_prefixes.add(mount.prefix)
            else:
                self.routes[mount.prefix] = ASGIMount(mount.app, config.body_limit(mount.prefix))
        self.fallback = WSGIBridge(WSGIHeaders(Pages(table)), self.executor)
        self.health = WSGIBridge(WSGIHeaders(health_app(table, wsgi_apps, config)), self.executor)
        self.hosts = HostPolicy(config.allowed_hosts)
        self.max_header_size = config.max_header_size
        self.proxies = config.trusted_proxies
        self.lifespans: list[MountLifespan] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self.lifespan(receive, send)
            return
        started = time.perf_counter()
        hosts: list[bytes] = []
        offered = None
        proxy_headers: dict[bytes, bytes] = {}
        header_size = 0
        headers = scope.get("headers", ())
        for name, value in headers:
            header_size += len(name) + len(value)
            if name == b"host":
                hosts.append(value)
            elif name == b"x-request-id":
                offered = value.decode("latin-1")
            elif self.proxies and name.startswith(b"x-forwarded-"):
                proxy_headers[name] = value
        if proxy_headers and is_trusted((scope.get("client") or ("",))[0], self.proxies):
            scope = forwarded(scope, proxy_headers)
            headers = scope["headers"]
            if b"x-forwarded-host" in proxy_headers:
                hosts = [v for n, v in headers if n == b"host"]
        rid = request_id(offered)
        REQUEST_ID.set(rid)
        if offered is not None:
            headers = [(n, v) for n, v in headers if n != b"x-request-id"]
        # The server makes a scope for each request: change it in place, as Starlette's
        # router does, rather than copy it.
        scope["headers"] = [*headers, (b"x-request-id", rid.encode("latin-1"))]

        root_path: str = scope.get("root_path", "")
        path: str = scope["path"]
        route = path[len(root_path) :] if root_path and path.startswith(root_path) else path
        mount, prefix, _ = self.table.match(route)
        logged = kind == "http" and access_log.isEnabledFor(logging.INFO)
        if logged:
            send = StatusRecorder(send)
        if route in HEALTH_PATHS:
            app: ASGIApp = self.health
        elif (refused := refusal(
            scope.get("method", "GET"), len(hosts) == 1 and self.hosts.allows(hosts[0].decode("latin-1")),
            header_size, self.max_header_size,
        )) is not None:
            if kind == "websocket":
                await receive()
                await send({"type": "websocket.close", "code": 1008})
                return
            await refuse(refused, send)
            app, prefix = None, ""  # type: ignore[assignment]
        elif mount is None:
            app = self.fallback
        elif kind == "websocket" and prefix in self.wsgi_prefixes:
            await refuse_websocket(receive, send)
            return
        else:
            app = self.routes[prefix]
            scope["root_path"] = root_path + prefix
        if app is not None:
            await app(scope, receive, send)
        if logged:
            assert isinstance(send, StatusRecorder)
            query = scope.get("query_string", b"").decode("latin-1")
            log_access(
                (scope.get("client") or ("-",))[0], scope["method"], f"{path}?{query}" if query else path,
                f"HTTP/{scope.get('http_version', '1.1')}", send.status, send.size, started, prefix,
            )

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
                self.drain_on_sigterm()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for lifespan in reversed(self.lifespans):
                    await lifespan.shutdown()
                self.executor.shutdown(wait=False, cancel_futures=True)
                await send({"type": "lifespan.shutdown.complete"})
                if self.config.graceful_timeout is not None:
                    exit_when_stuck(f"{self.thread_prefix}_")
                return


    def drain_on_sigterm(self) -> None:
        """With a drain delay, put off the server's SIGTERM handling by that long.

        Meanwhile the gateway keeps serving, asks every client to close its connection
        after the response, and answers ``/readyz`` with 503, so that a proxy in front
        lets go of its idle connections (nginx: ``keepalive_timeout`` shorter than the
        delay) and stops sending new ones before the server closes anything. Without
        it, an idle pooled connection closed at shutdown just as the proxy sends a POST
        on it is a failed request the proxy may not retry.
        """
        delay = self.config.drain_delay
        if delay <= 0 or threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        server_handler = signal.getsignal(signal.SIGTERM)
        if not callable(server_handler):
            return

        def on_sigterm(signum: int, frame: Any) -> None:
            if Drain.active:  # a second SIGTERM: no more waiting
                server_handler(signum, frame)
                return
            Drain.active = True  # responses say Connection: close, /readyz says 503
            logger.info("SIGTERM: draining for %.1f s before shutting down.", delay)
            loop.call_soon_threadsafe(loop.call_later, delay, server_handler, signum, frame)

        signal.signal(signal.SIGTERM, on_sigterm)


def exit_when_stuck(thread_prefix: str, grace: float = 1.0) -> None:
    """Exit the process if this gateway's WSGI requests still run after the shutdown.

    Only under ``gateway serve --graceful-timeout``: the server has waited for them that
    long and cut their connections; the pool's threads would otherwise hold the process
    at exit, joined by the interpreter, for as long as the slowest view runs.
    """

    def watch() -> None:
        time.sleep(grace)
        running = [t for t in threading.enumerate() if t.name.startswith(thread_prefix) and t.is_alive()]
        if running:
            logger.warning("%d WSGI request(s) still running after shutdown; exiting without them.",
                           len(running))
            logging.shutdown()
            os._exit(0)

    threading.Thread(target=watch, name="gateway-exit-watch", daemon=True).start()


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


def create_asgi_app(table: MountTable, config: Config | None = None, *, threads: int | None = None) -> Gateway:
    """Route the apps of ``table``; WSGI ones run on a pool of ``threads`` threads."""
    return Gateway(table, config or Config.from_env(), threads=threads)


def __getattr__(name: str) -> Gateway:
    # Built on first access, like gateway.wsgi.application.
    if name == "application":
        from gateway.logs import configure_logging_if_unset

        config = Config.from_env()
        configure_logging_if_unset(config.log_format, config.access_log)
        app = create_asgi_app(load_table(config), config)
        globals()["application"] = app
        return app
    raise AttributeError(name)
