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
import io
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from types import MappingProxyType
from typing import IO, Any

from gateway.adapters.boundary import READ_SIZE, ASGIBoundary, WSGIBoundary, asgi_reply, enter, read_body
from gateway.adapters.bridge import DEFAULT_SEND_PIECE, WSGIBridge, refuse_websocket
from gateway.adapters.health import ReadinessProbe, check_asgi_mount, probe_host
from gateway.adapters.lifespan import Lifespans, serve_lifespan
from gateway.core.config import Config
from gateway.core.mounts import MountTable, load_rules
from gateway.core.pipeline import Body, Chain, Head, Pipeline, Request, join_values, strip_root, without_cookie
from gateway.observe.logs import access
from gateway.observe.tracing import TRACE_HEADERS
from gateway.replies import BODY_ENDED_EARLY, BODY_TIMED_OUT, Reply
from gateway.types import Message, Receive, Scope, Send, WSGIApp

logger = logging.getLogger("gateway")

_FORWARDED = frozenset({"for", "proto", "host", "port", "prefix"})
_NO_FORWARDED: Mapping[str, str] = MappingProxyType({})
_TRACE_HEADERS = frozenset(name.encode() for name in TRACE_HEADERS)
#: The most a WSGI response's body message carries under Granian (bridge.DEFAULT_SEND_PIECE).
GRANIAN_SEND_PIECE = 8 * 1024


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
    return join_values(values, cookie=wanted == b"cookie") if values else None


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
        granian = config.server.kind == "granian"
        #: Granian (2.8) ends a request body whose framing breaks (a chunk size of ``zz``,
        #: or past 2**64) in ``http.disconnect``, as it ends one whose client left, and
        #: answers 500 for an app that then sends nothing: the gateway answers 400, which
        #: reaches a client still there. (uvicorn answers a broken framing 400 itself;
        #: its ``http.disconnect`` always means the client left, logged 499.)
        self.body_breaks_answered = granian
        #: Granian queues up to 4 body messages a response ahead of its connection's
        #: buffer, whatever their size: smaller pieces hold less per slow client (300
        #: slow readers: 65 MiB with 16 KiB pieces, 40 MiB with 8 KiB).
        self.send_piece = GRANIAN_SEND_PIECE if granian else DEFAULT_SEND_PIECE
        self.wsgi: dict[str, WSGIBridge] = {}
        self.asgi: dict[str, ASGIBoundary] = {}
        self.probed: dict[str, WSGIApp] = {}
        self.probed_asgi: dict[str, Any] = {}
        self.add_mounts(table)
        self.readiness = ReadinessProbe(self.pipeline, self.probed, config.ready_timeout)
        self.lifespans = Lifespans(table)
        self.forwarded = bool(config.trusted_proxies)
        self.reloads: set[asyncio.Task[None]] = set()  # the SIGHUPs' one task, held until it is done
        #: SIGHUPs received, and the last whose file a reload has read (:meth:`on_sighup`).
        self.reloads_asked = self.reloads_read = 0

    def head(self, scope: Scope) -> Head:
        """Read the request head the pipeline needs from ``scope``."""
        hosts: list[str] = []
        offered = None
        content_length = content_type = None
        codings: list[str] | None = None  # Transfer-Encoding's lines (a list only when sent)
        forwarded: dict[str, list[str]] = {}
        size = 0
        nul = False
        for name, value in scope.get("headers", ()):
            size += len(name) + len(value)
            if b"\x00" in value:
                nul = True
            if name == b"host":
                hosts.append(value.decode("latin-1"))
            elif name == b"x-request-id":
                offered = value.decode("latin-1")
            elif name == b"content-length":
                content_length = value.decode("latin-1")
            elif name == b"content-type":
                content_type = value.decode("latin-1")
            elif name == b"transfer-encoding":
                if codings is None:
                    codings = []
                codings.append(value.decode("latin-1"))
            elif self.forwarded and name.startswith(b"x-forwarded-"):
                key = name[12:].decode("latin-1")
                if key in _FORWARDED:
                    forwarded.setdefault(key, []).append(value.decode("latin-1"))
        root_path: str = scope.get("root_path", "")
        path: str = scope["path"]
        if root_path:
            path = strip_root(root_path, path)
            root_path = wsgi_string(root_path)
        client = scope.get("client")
        return Head.of(
            method=scope.get("method", "GET"), root_path=root_path,
            path=path if path.isascii() else wsgi_string(path),  # wsgi_string(), without the call
            query=scope.get("query_string", b"").decode("latin-1"),
            # Several Host headers are one value joined by commas, as a WSGI server hands them over.
            host=(hosts[0] if len(hosts) == 1 else join_values(hosts)) if hosts else None,
            scheme=scope.get("scheme", "http"), server=tuple(scope.get("server") or ("localhost", None)),
            client=client[0] if client else None, request_id=offered,
            forwarded={key: join_values(values) for key, values in forwarded.items()} if forwarded else _NO_FORWARDED,
            header_size=size, header_nul=nul,
            body=Body(content_length, content_type, join_values(codings) if codings is not None else None)
            if content_length or content_type or codings is not None else None,
            http_version=scope.get("http_version", "1.1"),
            fetch=functools.partial(_header, scope.get("headers", ())) if self.pipeline.wants_headers else None,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await serve_lifespan(self.lifespans, receive, send, self.started, self.stopped)
            return
        started = time.perf_counter()
        head = self.head(scope)
        request = self.pipeline.begin(head, started, f"HTTP/{head.http_version}", counted=kind == "http")
        decision = request.decision
        if kind == "websocket":
            await self.websocket(scope, receive, send, request)
            return
        logged = self.pipeline.observing
        reply = decision.reply
        if reply is None and decision.render is not None:
            reply = await asyncio.to_thread(decision.render)  # it reads files: off the loop
        elif reply is None and decision.ready:
            reply = self.pipeline.readiness_for(
                decision, await self.readiness.check_async(self.probe_asgi_mounts if self.probed_asgi else None))
        if reply is not None:
            await asgi_reply(self.pipeline, reply, decision, send)
            if logged:
                request.status, request.size = reply.status, len(reply.body)
                self.pipeline.done(request)
            return
        assert decision.mount is not None
        prefix = decision.mount.prefix
        if logged:
            send = noting_status(send, request)
        try:
            bridge = self.wsgi.get(prefix)
            if decision.chain is not None:
                await self.chain(scope, receive, send, request, decision.chain)
            elif bridge is not None:
                prepare = functools.partial(enter, request=request)
                if not decision.buffered or head.bodiless:
                    # Streaming, or no body at all: the server has the whole request already.
                    await bridge.handle(scope, receive, send, prepare=prepare)
                    return
                body = await self.whole_body(scope, receive, send, request)
                if body is not None:
                    await bridge.handle(scope, receive, send, body, prepare=prepare)
            else:
                self.enter_asgi(scope, request, prefix)
                await self.asgi[prefix].serve(scope, receive, send, request)
        finally:
            if logged:
                # No status: an ASGI app raised (the server answers 500), or the client
                # left before a WSGI app's response (499, as nginx logs it).
                request.status = request.status or (500 if bridge is None else 499)
                self.pipeline.done(request)

    async def whole_body(self, scope: Scope, receive: Receive, send: Send, request: Request
                         ) -> tuple[IO[bytes], int] | None:
        """Read the request body whole on the loop, before a thread or an app of a chain is
        spent on it; None when it was answered instead (413, 408, a body cut short) or the
        client left."""
        decision = request.decision
        body = await read_body(receive, decision.body_limit, self.config.body_timeout)
        if body is None:  # the client left before its body was complete
            if self.body_breaks_answered:
                await asgi_reply(self.pipeline, BODY_ENDED_EARLY, decision, send)
            return None
        if isinstance(body, Reply):
            if body is BODY_TIMED_OUT:
                logger.warning("The request body of %s %s stopped arriving for %g s; answered 408.",
                               request.head.method, scope["path"], self.config.body_timeout)
            await asgi_reply(self.pipeline, body, decision, send)
            return None
        request.body_read = True
        return body

    def enter_asgi(self, scope: Scope, request: Request, prefix: str) -> None:
        """Make ``scope`` what the ASGI app of mount ``prefix`` must see of ``request``."""
        self.rewrite(scope, request)
        if (state := self.lifespans.states.get(prefix)) is not None:
            scope["state"] = state.copy()

    async def chain(self, scope: Scope, receive: Receive, send: Send, request: Request, chain: Chain) -> None:
        """Ask the apps of ``chain`` in turn, each in its own protocol (an ASGI app natively,
        a WSGI one in the bridge): an answer with a status the chain passes over is held
        back, and the next app is asked with the same body, read whole first."""
        stream: IO[bytes]
        if request.head.bodiless:
            stream, size = io.BytesIO(b""), 0
            request.body_read = True
        else:
            body = await self.whole_body(scope, receive, send, request)
            if body is None:
                return
            stream, size = body
        prepare = functools.partial(enter, request=request)
        last = len(chain.mounts) - 1
        try:
            for position, mount in enumerate(chain.mounts):
                held = Held(send, chain.passed_over if position < last else frozenset())
                stream.seek(0)
                bridge = self.wsgi.get(mount.prefix)
                if bridge is not None:
                    await bridge.handle(dict(scope), receive, held, (stream, size), prepare=prepare, close_body=False)
                else:
                    member = dict(scope)
                    self.enter_asgi(member, request, mount.prefix)
                    await self.asgi[mount.prefix].serve(member, replayed(stream, receive), held, request)
                if not held.passed:
                    return
                self.pipeline.fell_back(chain)
        finally:
            stream.close()

    def add_mounts(self, table: MountTable) -> None:
        """Make the bridge or boundary of each mount of ``table`` (a reload adds the new rules'),
        and the readiness check of what the table says to check."""
        for mount in table.served():
            if mount.interface == "wsgi":
                self.wsgi[mount.prefix] = WSGIBridge(
                    WSGIBoundary(mount.app, self.pipeline), self.executor, name=mount.prefix,
                    observer=self.pipeline.metrics, send_timeout=self.config.send_timeout,
                    body_timeout=self.config.body_timeout,
                    stream_response=mount.prefix in self.config.stream_responses, send_piece=self.send_piece)
            else:
                self.asgi[mount.prefix] = ASGIBoundary(mount.app, self.pipeline)
        for name, (app, interface) in table.checked().items():
            if interface == "wsgi":
                bridge = self.wsgi.get(name)
                self.probed[name] = bridge.app if bridge is not None else WSGIBoundary(app, self.pipeline)
            else:
                self.probed_asgi[name] = app

    def reload(self) -> bool:
        """Re-read the ``gateway.toml`` and serve its route rules from now on.

        Requests already decided finish on the rules they were given. A file that cannot
        be read, parsed or loaded is refused with one line, and the rules stay as they
        were. Prefix mounts are not reloaded: they need a restart. It imports and reads
        files: on ``SIGHUP`` it runs off the event loop (:meth:`reload_later`).
        """
        loaded = self.load_rules()
        if loaded is None:
            return False
        self.use_rules(*loaded)
        return True

    def load_rules(self) -> tuple[MountTable, Config] | None:
        """The table with the file's route rules, loaded anew, or None (said in one line)."""
        path = self.config.config_file
        if path is None:
            logger.warning("SIGHUP: there is no gateway.toml to re-read (--config, GATEWAY_CONFIG).")
            return None
        try:
            config, rules = load_rules(self.config, self.pipeline.table.route_table, self.set_up)
        except ValueError as exc:  # ConfigFileError, MountError
            logger.error("%s was not reloaded: %s The route rules stay as they were.", path, exc)
            return None
        except BaseException as exc:  # sys.exit() in an app's import, raised on here, ended the server
            logger.error("%s was not reloaded: %s. The route rules stay as they were.", path,
                         f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
            logger.debug("The reload's exception:", exc_info=True)
            return None
        return self.pipeline.table.with_rules(rules), config

    def use_rules(self, table: MountTable, config: Config) -> None:
        """Serve ``table`` from now on (on the event loop, between two decisions)."""
        self.add_mounts(table)
        self.pipeline.use(table)
        self.config = config
        logger.info("Reloaded %s: %d route rule(s).", config.config_file, len(config.file.routes))

    async def reload_later(self) -> None:
        """:meth:`reload`, with the loading in a thread: the loop serves on meanwhile."""
        loaded = await asyncio.to_thread(self.load_rules)
        if loaded is not None:
            self.use_rules(*loaded)

    def on_sighup(self) -> None:
        """On the loop, at each ``SIGHUP``: reload, one reload at a time, the last signal's file winning.

        Each reload once ran in a thread of its own: a slow one (a file importing a
        large app) finished after a later, quick one and put the older file's rules back.
        Now one task reads the file; a signal that comes while it reads makes it read
        the file again, and only a reading that no later signal overtook is served.
        """
        self.reloads_asked += 1
        if not self.reloads:
            task = asyncio.get_running_loop().create_task(self.reload_until_current())
            self.reloads.add(task)
            task.add_done_callback(self.reloads.discard)

    async def reload_until_current(self) -> None:
        """Read the file until a reading starts after the last ``SIGHUP``; serve that one."""
        while self.reloads_read < self.reloads_asked:
            asked = self.reloads_asked
            loaded = await asyncio.to_thread(self.load_rules)
            self.reloads_read = asked
            if loaded is not None and self.reloads_asked == asked:
                self.use_rules(*loaded)

    def reload_on_sighup(self) -> None:
        """At start-up, in the main thread: re-read the route rules on ``SIGHUP``."""
        if self.config.config_file is None or threading.current_thread() is not threading.main_thread():
            return
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.on_sighup)

    async def probe_asgi_mounts(self) -> dict[str, str]:
        """``/readyz``'s check of each ASGI app it checks, on the loop (their readiness is theirs)."""
        host = probe_host(self.pipeline)
        names = list(self.probed_asgi)
        results = await asyncio.gather(*(check_asgi_mount(name, self.probed_asgi[name], host,
                                                          self.lifespans.states.get(name)) for name in names))
        return dict(zip(names, results, strict=True))

    def rewrite(self, scope: Scope, request: Request) -> None:
        """Change the scope in place to what an ASGI mount's app must see.

        The server makes a scope for each request: changing it, as Starlette's router
        does, costs less than a copy.
        """
        head, decision = request.head, request.decision
        rid = decision.request_id.encode("latin-1")
        headers = scope.get("headers", ())
        if head.request_id is not None or (decision.proxied and decision.host != head.host):
            headers = [(n, v) for n, v in headers if n != b"x-request-id" and n != b"host"]
            if decision.host is not None:
                headers.append((b"host", decision.host.encode("latin-1")))
        if request.trace_headers:  # the gateway's span, as the app's parent
            headers = [(n, v) for n, v in headers if n not in _TRACE_HEADERS]
            headers += [(n.encode("latin-1"), v.encode("latin-1")) for n, v in request.trace_headers]
        if request.hidden_cookie is not None:
            name = request.hidden_cookie
            headers = [(n, without_cookie(v.decode("latin-1"), name).encode("latin-1") if n == b"cookie" else v)
                       for n, v in headers]
        scope["headers"] = [*headers, (b"x-request-id", rid)]
        if decision.proxied:
            scope["server"] = decision.server
            scope["scheme"] = decision.scheme
            if decision.client is not None:
                client = scope.get("client")
                scope["client"] = (decision.client, client[1] if client else 0)
        root = asgi_string(decision.script_name)
        scope["root_path"] = root
        scope["path"] = root + asgi_string(decision.path_info)

    async def websocket(self, scope: Scope, receive: Receive, send: Send, request: Request) -> None:
        """Serve a websocket: only an ASGI mount can take one."""
        decision = request.decision
        boundary = self.asgi.get(decision.mount.prefix) if decision.mount is not None else None
        if boundary is None or (decision.reply is not None and decision.reply.status >= 400):
            await refuse_websocket(receive, send)
            return
        self.rewrite(scope, request)
        await boundary.serve(scope, receive, send, request)

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


class Held:
    """``send`` for an app of a fallback chain: an answer whose status is one of
    ``passed_over`` is held back whole (:attr:`passed`), any other goes on."""

    __slots__ = ("passed", "passed_over", "send")

    def __init__(self, send: Send, passed_over: frozenset[int]) -> None:
        self.send = send
        self.passed_over = passed_over
        self.passed = False

    async def __call__(self, message: Message) -> None:
        if self.passed:
            return
        if message["type"] == "http.response.start" and message["status"] in self.passed_over:
            self.passed = True
            return
        await self.send(message)


def replayed(stream: IO[bytes], receive: Receive) -> Receive:
    """``receive`` for an ASGI app of a fallback chain: the body read whole, from ``stream``'s
    start, then the client's own messages (its disconnect). A body past
    :data:`~gateway.adapters.boundary.SPOOL_IN_MEMORY` is read back from its temporary file
    on the loop, a piece at a time, as :func:`~gateway.adapters.boundary.read_body` wrote it
    there: from the page cache, which does not block for long."""
    over = False

    async def receive_again() -> Message:
        nonlocal over
        if over:
            return await receive()
        data = stream.read(READ_SIZE)
        over = len(data) < READ_SIZE
        return {"type": "http.request", "body": data, "more_body": not over}

    return receive_again


def noting_status(send: Send, request: Request) -> Send:
    """Wrap ``send`` to note a response's status and size in the request's state, for the
    access log and the metrics. A closure, not an instance with ``__call__`` (a class
    before): calling an instance looks its ``__call__`` up each time (callgrind)."""

    async def send_noted(message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            request.status = message["status"]
        elif kind == "http.response.body":
            request.size += len(message.get("body", b""))
        await send(message)

    return send_noted


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
