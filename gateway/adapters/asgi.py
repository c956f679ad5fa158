"""The gateway as an ASGI app: ``gateway.asgi:application``.

A thin adapter over the same pipeline as ``gateway.wsgi``: each scope becomes a
:class:`gateway.core.pipeline.Head`, the pipeline decides, and the scope is rewritten as the
mount must see it (``root_path`` extended by the mount's prefix, ``path`` left whole, as
current ASGI servers do). WSGI mounts run through :class:`gateway.adapters.bridge.WSGIBridge` on
one thread pool (``GATEWAY_THREADS``); ASGI mounts are called directly. The gateway
answers ``lifespan`` itself (:mod:`gateway.adapters.lifespan`); a websocket to a WSGI mount is
refused::

    uvicorn gateway.asgi:application
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from gateway.adapters.boundary import ASGIBoundary, WSGIBoundary, asgi_reply, read_body
from gateway.adapters.bridge import WSGIBridge, refuse_websocket
from gateway.adapters.health import ReadinessProbe, check_asgi_mount, probe_host
from gateway.adapters.lifespan import Lifespans, serve_lifespan
from gateway.core.config import Config
from gateway.core.mounts import MountTable, rule_options
from gateway.core.pipeline import Decision, Head, Pipeline
from gateway.observe.logs import access
from gateway.observe.tracing import TRACE_HEADERS
from gateway.replies import BODY_TIMED_OUT, Reply
from gateway.types import Message, Receive, Scope, Send

logger = logging.getLogger("gateway")

_FORWARDED = frozenset({"for", "proto", "host", "port", "prefix"})
_TRACE_HEADERS = frozenset(name.encode() for name in TRACE_HEADERS)


def wsgi_string(text: str) -> str:
    """A path as a native WSGI string (the UTF-8 bytes as latin-1), as the pipeline takes it."""
    return text if text.isascii() else text.encode("utf-8").decode("latin-1")


def asgi_string(text: str) -> str:
    """The inverse of :func:`wsgi_string`."""
    return text if text.isascii() else text.encode("latin-1").decode("utf-8")


def _header(headers: Any, name: str) -> str | None:
    """A request header by its name (``X-User-ID``); repeated ones joined as one."""
    wanted = name.lower().encode("latin-1")
    values = [v.decode("latin-1") for n, v in headers if n == wanted]
    return ("; " if wanted == b"cookie" else ",").join(values) if values else None


class ASGIGateway:
    """ASGI app that runs the pipeline and calls the mount it chooses."""

    def __init__(self, table: MountTable, config: Config, *, threads: int | None = None,
                 set_up: Callable[[Config], None] | None = None) -> None:
        """``set_up``: what prepares the frameworks for a configuration (the builder's), run
        again before a reload imports the new file's apps."""
        self.config = config
        self.set_up = set_up
        self.pipeline = Pipeline(table, config)
        # A name of this gateway's own, so that exit_when_stuck counts only its threads.
        self.thread_prefix = f"wsgi-{id(self):x}"
        self.executor = ThreadPoolExecutor(max_workers=threads or config.threads, thread_name_prefix=self.thread_prefix)
        if self.pipeline.metrics is not None:
            self.pipeline.metrics.pool(threads or config.threads)
        self.wsgi: dict[str, WSGIBridge] = {}
        self.asgi: dict[str, ASGIBoundary] = {}
        self.probed: dict[str, WSGIBoundary] = {}
        self.add_mounts(table)
        self.readiness = ReadinessProbe(self.pipeline, self.probed, config.ready_timeout)
        self.lifespans = Lifespans(table)
        self.forwarded = bool(config.trusted_proxies)

    def head(self, scope: Scope) -> Head:
        """Read the request head the pipeline needs from ``scope``."""
        hosts: list[bytes] = []
        offered = None
        content_length = content_type = None
        forwarded: dict[str, str] = {}
        size = 0
        for name, value in scope.get("headers", ()):
            size += len(name) + len(value)
            if name == b"host":
                hosts.append(value)
            elif name == b"x-request-id":
                offered = value.decode("latin-1")
            elif name == b"content-length":
                content_length = value.decode("latin-1")
            elif name == b"content-type":
                content_type = value.decode("latin-1")
            elif self.forwarded and name.startswith(b"x-forwarded-"):
                key = name[12:].decode("latin-1")
                if key in _FORWARDED:
                    text = value.decode("latin-1")
                    forwarded[key] = f"{forwarded[key]},{text}" if key in forwarded else text
        root_path: str = scope.get("root_path", "")
        path: str = scope["path"]
        # Strip root_path only on a "/" boundary ("/foo-1" is not under "/foo"); a path
        # without the prefix is taken as already relative, as the bridge does.
        if root_path and (path == root_path or path.startswith(root_path + "/")):
            path = path[len(root_path) :]
        client = scope.get("client")
        return Head(
            scope.get("method", "GET"), wsgi_string(root_path), wsgi_string(path),
            scope.get("query_string", b"").decode("latin-1"),
            hosts[0].decode("latin-1") if len(hosts) == 1 else None, scope.get("scheme", "http"),
            tuple(scope.get("server") or ("localhost", None)),
            client[0] if client else None, offered, forwarded, size, content_length, content_type,
            functools.partial(_header, scope.get("headers", ())) if self.pipeline.wants_headers else None,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await serve_lifespan(self.lifespans, receive, send, self.started, self.stopped)
            return
        started = time.perf_counter()
        head = self.head(scope)
        decision = self.pipeline.begin(head, started, counted=kind == "http")
        self.rewrite(scope, head, decision)
        logged = kind == "http" and self.pipeline.observing
        reply = decision.reply
        if kind == "websocket":
            await self.websocket(scope, receive, send, decision)
            return
        if reply is None and decision.ready:
            reply = self.pipeline.readiness_for(
                decision, await self.readiness.check_async(self.probe_asgi_mounts if self.asgi else None))
        if reply is not None:
            await asgi_reply(self.pipeline, reply, decision, send)
            if logged:
                self.done(scope, head, decision, reply.status, len(reply.body))
            return
        assert decision.mount is not None
        prefix = decision.mount.prefix
        if logged:
            send = recorder = StatusRecorder(send)
        try:
            bridge = self.wsgi.get(prefix)
            if bridge is not None:
                if not decision.buffered or (head.content_length in (None, "0")
                                             and scope.get("http_version", "1.1").startswith("1")
                                             and not any(n == b"transfer-encoding" for n, _ in scope["headers"])):
                    # Streaming, or HTTP/1 with neither Content-Length nor Transfer-Encoding
                    # (RFC 9112: no body): the server has the whole request already.
                    await bridge.handle(scope, receive, send)
                    return
                body = await read_body(receive, decision.body_limit, self.config.body_timeout)
                if body is None:  # the client left before its body was complete
                    return
                if isinstance(body, Reply):
                    if body is BODY_TIMED_OUT:
                        logger.warning("The request body of %s %s stopped arriving for %g s; answered 408.",
                                       head.method, scope["path"], self.config.body_timeout)
                    await asgi_reply(self.pipeline, body, decision, send)
                    return
                decision.body_read = True
                await bridge.handle(scope, receive, send, body)
            else:
                if (state := self.lifespans.states.get(prefix)) is not None:
                    scope["state"] = state.copy()
                await self.asgi[prefix].serve(scope, receive, send, decision)
        finally:
            if logged:
                # No status: an ASGI app raised (the server answers 500), or the client
                # left before a WSGI app's response (499, as nginx logs it).
                status = recorder.status or (500 if bridge is None else 499)
                self.done(scope, head, decision, status, recorder.size)

    def add_mounts(self, table: MountTable) -> None:
        """Make the bridge or boundary of each mount of ``table`` (a reload adds the new rules')."""
        for mount in table.all():
            if mount.interface == "wsgi":
                boundary = WSGIBoundary(mount.app, self.pipeline)
                if mount.prefix in table.mounts:
                    self.probed[mount.prefix] = boundary
                self.wsgi[mount.prefix] = WSGIBridge(
                    boundary, self.executor, name=mount.prefix, observer=self.pipeline.metrics,
                    send_timeout=self.config.send_timeout, body_timeout=self.config.body_timeout,
                    stream_response=mount.prefix in self.config.stream_responses)
            else:
                self.asgi[mount.prefix] = ASGIBoundary(mount.app, self.pipeline)
        for name, app in table.route_apps.items():  # each app of the route rules, once
            self.probed[f"app:{name}"] = WSGIBoundary(app, self.pipeline)

    def reload(self) -> bool:
        """Re-read the ``gateway.toml`` and serve its route rules from now on (``SIGHUP``).

        Requests already decided finish on the rules they were given. A file that cannot
        be read, parsed or loaded is refused with one line, and the rules stay as they
        were. Prefix mounts are not reloaded: they need a restart.
        """
        path = self.config.config_file
        if path is None:
            logger.warning("SIGHUP: there is no gateway.toml to re-read (--config, GATEWAY_CONFIG).")
            return False
        try:
            config = self.config.with_file(path)
            if self.set_up is not None:
                self.set_up(config)
            fresh = MountTable.from_specs((), defaults=False, previous=self.pipeline.table.route_table,
                                          **rule_options(config))
        except ValueError as exc:  # ConfigFileError, MountError
            logger.error("%s was not reloaded: %s The route rules stay as they were.", path, exc)
            return False
        table = MountTable(self.pipeline.table, fresh.routes.values(), fresh.route_table)
        table.route_apps = fresh.route_apps
        self.add_mounts(table)
        self.pipeline.use(table)
        self.config = config
        logger.info("Reloaded %s: %d route rule(s).", path, len(config.file.routes))
        return True

    def reload_on_sighup(self) -> None:
        """At start-up, in the main thread: re-read the route rules on ``SIGHUP``."""
        if self.config.config_file is None or threading.current_thread() is not threading.main_thread():
            return
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.reload)

    async def probe_asgi_mounts(self) -> dict[str, str]:
        """``/readyz``'s check of each ASGI mount, on the loop (their readiness is theirs)."""
        host = probe_host(self.pipeline)
        prefixes = list(self.asgi)
        results = await asyncio.gather(*(check_asgi_mount(p, self.asgi[p].app, host, self.lifespans.states.get(p))
                                         for p in prefixes))
        return dict(zip(prefixes, results, strict=True))

    def rewrite(self, scope: Scope, head: Head, decision: Decision) -> None:
        """Change the scope in place to what the app must see.

        The server makes a scope for each request: changing it, as Starlette's router
        does, costs less than a copy.
        """
        rid = decision.request_id.encode("latin-1")
        headers = scope.get("headers", ())
        if head.request_id is not None or (decision.proxied and decision.host != head.host):
            headers = [(n, v) for n, v in headers if n != b"x-request-id" and n != b"host"]
            if decision.host is not None:
                headers.append((b"host", decision.host.encode("latin-1")))
        if decision.trace_headers:  # the gateway's span, as the app's parent
            headers = [(n, v) for n, v in headers if n not in _TRACE_HEADERS]
            headers += [(n.encode("latin-1"), v.encode("latin-1")) for n, v in decision.trace_headers]
        scope["headers"] = [*headers, (b"x-request-id", rid)]
        if decision.proxied:
            scope["server"] = decision.server
            scope["scheme"] = decision.scheme
            if decision.client is not None:
                client = scope.get("client")
                scope["client"] = (decision.client, client[1] if client else 0)
        if decision.mount is not None:
            root = asgi_string(decision.script_name)
            scope["root_path"] = root
            scope["path"] = root + asgi_string(decision.path_info)

    async def websocket(self, scope: Scope, receive: Receive, send: Send, decision: Decision) -> None:
        """Serve a websocket: only an ASGI mount can take one."""
        if decision.reply is not None and decision.mount is None and decision.reply.status >= 400:
            await receive()
            await send({"type": "websocket.close", "code": 1008})
            return
        boundary = self.asgi.get(decision.mount.prefix) if decision.mount is not None else None
        if boundary is None:
            await refuse_websocket(receive, send)
            return
        await boundary.serve(scope, receive, send, decision)

    def done(self, scope: Scope, head: Head, decision: Decision, status: int, size: int) -> None:
        """An HTTP request is answered: its access-log line and its metrics."""
        self.pipeline.done(decision, head, f"HTTP/{scope.get('http_version', '1.1')}", status, size)

    def started(self) -> None:
        """After the lifespan's start-up: the signal handlers of draining and reloading."""
        self.drain_on_sigterm()
        self.reload_on_sighup()

    def stopped(self) -> None:
        """After the lifespan's shutdown: write the access log out, stop the pool (under a
        graceful timeout, without waiting on it).

        A uvicorn worker ends by raising SIGTERM again, with no ``atexit``: the log's
        queue is written here, once every request has finished.
        """
        access.close()
        self.readiness.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        if self.config.graceful_timeout is not None:
            exit_when_stuck(f"{self.thread_prefix}_")

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
            if self.pipeline.draining:  # a second SIGTERM: no more waiting
                server_handler(signum, frame)
                return
            self.pipeline.draining = True  # responses say Connection: close, /readyz says 503
            logger.info("SIGTERM: draining for %.1f s before shutting down.", delay)
            loop.call_soon_threadsafe(loop.call_later, delay, server_handler, signum, frame)

        signal.signal(signal.SIGTERM, on_sigterm)


class StatusRecorder:
    """Wrap ``send`` to note a response's status and size, for the access log."""

    __slots__ = ("send", "size", "status")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.status = 0
        self.size = 0

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif message["type"] == "http.response.body":
            self.size += len(message.get("body", b""))
        await self.send(message)


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
            access.close()
            logging.shutdown()
            os._exit(0)

    threading.Thread(target=watch, name="gateway-exit-watch", daemon=True).start()


def create_asgi_app(table: MountTable, config: Config, *, threads: int | None = None) -> ASGIGateway:
    """Route the apps of ``table``, configured by ``config``; WSGI ones run on a pool of ``threads``
    threads (default: ``config.threads``)."""
    return ASGIGateway(table, config, threads=threads)
