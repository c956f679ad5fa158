"""Serve a WSGI app to an ASGI server with one hop to a worker thread per request.

::

    from concurrent.futures import ThreadPoolExecutor
    application = WSGIBridge(wsgi_app, ThreadPoolExecutor(max_workers=100))

Why not a library: asgiref's WSGI adapter (``asgiref.wsgi``) runs every request on one shared thread,
fails requests under concurrency, never calls ``close()`` and drops chunked bodies
(see ``docs/upstream.md``). a2wsgi is correct but hops between the event loop and
its thread for every message; measured on the project's 2-core machine it served the
hello pages at about half the rate of a bridge that runs the whole WSGI call in the
thread and answers small responses with one ``start``/``body`` pair. That is what this
module does, and only that is special-cased:

- A response whose ``Content-Length`` is at most ``buffer_size``, or whose iterable is a
  list or tuple (already produced) that small, is collected in the worker thread and
  sent in one go. Any other is handed over chunk by chunk to an
  :class:`~gateway.adapters.buffering.Outbox`: the thread goes back to the app at once,
  and the loop sends the chunks as the client takes them, so that a slow reader holds
  no thread. The chunks wait in memory up to ``memory_size``, then in a temporary file;
  past ``max_buffer`` bytes waiting, the thread waits for the client. A client that
  takes nothing for ``send_timeout`` seconds is cut off (one warning), which frees the
  thread; the app stops being iterated once the client has gone. A mount that streams
  its responses (``stream_response``: server-sent events, endless downloads) sends each
  chunk before the app is asked for the next, holding its thread meanwhile.
- Once the declared ``Content-Length`` is out, the app is not asked for more (PEP 3333)
  and the end of the response goes out at once.
- The request body is handed over as it arrives: the first message is read before the
  app is called, so a small body costs no extra hop; the rest is received on the loop
  ahead of the app (:class:`~gateway.adapters.buffering.ReadAhead`, up to
  ``read_ahead`` bytes), and an app that has read all that arrived waits, at most
  ``body_timeout`` seconds per pause. With ``Expect: 100-continue`` nothing is received
  before the app's first read. Without a ``Content-Length`` the stream ends at the end
  of the body and ``wsgi.input_terminated`` is set.
- A body longer than its ``Content-Length`` is cut at the declared length (PEP 3333: a
  server should not send more), so that the response and the connection stay usable; a
  warning names the mount (``name``).
- ``close()`` of the app's iterable is always called, also when the client went away or
  the app failed; context variables of the caller are visible to the app.
- ``start_response``'s ``exc_info`` and the legacy ``write()`` callable follow PEP 3333.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import io
import logging
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

from gateway.adapters.buffering import ClientDisconnected, Outbox, ReadAhead
from gateway.core.config import DEFAULT_BODY_TIMEOUT, DEFAULT_SEND_TIMEOUT
from gateway.core.pipeline import WEBSOCKET_REFUSED, join_values, strip_root
from gateway.types import Environ, ExcInfo, Message, Receive, Scope, Send, WSGIApp

logger = logging.getLogger("gateway.bridge")

DEFAULT_BUFFER_SIZE = 64 * 1024
#: A response waits in memory up to this many bytes, then in a temporary file (nginx's
#: proxy_buffers: 8 of 4-8 KiB). 300 slow readers then hold 19 MiB here, and as much again
#: in the server's write buffers (64 KiB each).
DEFAULT_MEMORY_SIZE = 64 * 1024
#: The most a response may hold waiting for its client, memory and file together, before
#: the app's thread waits for the client (nginx's proxy_max_temp_file_size, 1 GiB).
DEFAULT_MAX_BUFFER = 1024**3
#: The most a response's ``send`` carries when it is not sent whole. With the server's
#: write buffer (32 KiB under ``gateway serve``) that is what a client must read for a
#: ``send`` to return: 40 KiB within the send timeout, so that the default 60 s cuts off
#: no reader faster than about 0.7 KiB/s.
DEFAULT_SEND_PIECE = 16 * 1024
#: How far ahead of a streaming mount's app its request body is received.
DEFAULT_READ_AHEAD = 64 * 1024
#: The ASGI extension through which the gateway's uvicorn protocol closes a connection at
#: once, unsent data dropped (:mod:`gateway.serve.protocol`); without it, a client cut
#: off is left for the server to close.
ABORT_EXTENSION = "gateway.abort"
_ERROR_BODY = b"Internal Server Error"

# A response collected whole in the worker thread: status, headers, body.
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]


__all__ = ["ClientDisconnected", "WSGIBridge", "build_environ"]


class WSGIBridge:
    """ASGI app that runs a WSGI app in a thread pool, one hop per request."""

    def __init__(
        self,
        app: WSGIApp,
        executor: Executor | None = None,
        *,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        name: str = "",
        observer: Any = None,
        send_timeout: float = DEFAULT_SEND_TIMEOUT,
        body_timeout: float = DEFAULT_BODY_TIMEOUT,
        stream_response: bool = False,
        memory_size: int = DEFAULT_MEMORY_SIZE,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        read_ahead: int = DEFAULT_READ_AHEAD,
        send_piece: int = DEFAULT_SEND_PIECE,
    ) -> None:
        self.app = app
        self.executor = executor or ThreadPoolExecutor(thread_name_prefix="wsgi")
        self.buffer_size = buffer_size
        self.name = name
        #: Seconds a response's ``send`` may wait on its client before it is cut off.
        self.send_timeout = send_timeout
        #: Seconds a streaming mount's body may pause before the app's read fails.
        self.body_timeout = body_timeout
        #: Each chunk waits until the client has taken it, holding the thread meanwhile
        #: (``GATEWAY_STREAM_RESPONSES``); otherwise the response waits in memory, then
        #: in a file, up to ``max_buffer`` bytes, and the thread goes back to the app.
        self.stream_response = stream_response
        self.memory_size = memory_size
        self.max_buffer = max_buffer
        self.read_ahead = read_ahead
        self.send_piece = min(send_piece, buffer_size)
        #: Told when a request gets its thread and how long it waited, and when it gives
        #: the thread back (``thread_started(seconds)``, ``thread_done()``): the metrics.
        self.observer = observer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self.handle(scope, receive, send)
        elif kind == "websocket":
            await refuse_websocket(receive, send)
        elif kind == "lifespan":
            await answer_lifespan(receive, send)

    async def handle(
        self, scope: Scope, receive: Receive, send: Send, body: tuple[Any, int] | None = None,
        *, prepare: Callable[[Environ], None] | None = None, close_body: bool = True,
    ) -> None:
        """Serve one HTTP request; ``body`` is its body and length if already read whole,
        closed once the app is done with it unless ``close_body`` is false (a fallback
        chain's next app reads it again); ``prepare`` changes the environ before the app
        sees it (the gateway's decision)."""
        loop = asyncio.get_running_loop()
        environ = build_environ(scope, None)
        if prepare is not None:
            prepare(environ)
        stream: Any
        if body is not None:
            stream, size = body
            if "CONTENT_LENGTH" not in environ and size:
                # Chunked (or HTTP/2 without a length): now it has one, and nothing
                # may read it as chunked or unterminated again.
                environ["CONTENT_LENGTH"] = str(size)
                environ.pop("HTTP_TRANSFER_ENCODING", None)
                environ.pop("wsgi.input_terminated", None)
        elif environ.get("HTTP_EXPECT", "").lower() == "100-continue":
            # Receiving now would make the server send "100 Continue" before the app
            # could refuse the body (a 413, say): the app's first read starts it.
            stream = ReadAhead(loop, receive, b"", limit=self.read_ahead, timeout=self.body_timeout, started=False)
        else:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before sending its request body
            first = message.get("body", b"")
            if message.get("more_body", False):
                stream = ReadAhead(loop, receive, first, limit=self.read_ahead, timeout=self.body_timeout)
            else:
                stream = io.BytesIO(first)
        environ["wsgi.input"] = stream
        exchange = Exchange(self, loop, send, receive, stream, scope)
        context = contextvars.copy_context()
        run: Callable[[WSGIApp, Environ], Answer | None] = exchange.run
        if self.observer is not None:
            run = functools.partial(_observed, self.observer, time.perf_counter(), exchange.run)
        try:
            answer = await loop.run_in_executor(self.executor, context.run, run, self.app, environ)
        except asyncio.CancelledError:
            exchange.cut()
            # The server gave up on this request (its graceful shutdown timed out): say
            # so in one line and, if nothing was sent yet, answer 503, not a traceback.
            logger.warning("Request %s %r was still running at shutdown and was cut off.",
                           environ["REQUEST_METHOD"], environ["PATH_INFO"])
            if not exchange.started:
                await send({"type": "http.response.start", "status": 503, "headers": [
                    (b"content-type", b"text/plain"), (b"connection", b"close"), (b"content-length", b"20")]})
                await send({"type": "http.response.body", "body": b"Service Unavailable\n"})
            return
        except BaseException:
            # The app failed after its headers: what it produced goes out, then the
            # server sees the error and aborts the connection.
            await exchange.delivered()
            raise
        finally:
            if type(stream) is ReadAhead:
                stream.stop()  # the app is done with its body: receive no more of it
        if body is not None and close_body:
            stream.close()  # a temporary file, once the app is done with it
        if answer is not None:
            status, headers, data = answer
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": data})
        elif exchange.outbox is not None:
            # The rest of a response the thread handed over, sent as the client takes it.
            await exchange.delivered()


def _observed(observer: Any, submitted: float, run: Callable[[WSGIApp, Environ], Answer | None],
              app: WSGIApp, environ: Environ) -> Answer | None:
    """``run`` in a worker thread, telling ``observer`` of the wait for it and the time in it."""
    observer.thread_started(time.perf_counter() - submitted)
    try:
        return run(app, environ)
    finally:
        observer.thread_done()


def build_environ(scope: Scope, stream: Any) -> Environ:
    """Translate an ASGI HTTP scope into a PEP 3333 environ."""
    root_path: str = scope.get("root_path", "")
    path: str = scope["path"]
    path = strip_root(root_path, path)
    server = scope.get("server") or ("localhost", 80)
    environ: Environ = {
        "REQUEST_METHOD": scope["method"],
        # PEP 3333 "bytes as latin-1" strings of the percent-decoded UTF-8 path.
        "SCRIPT_NAME": root_path.encode("utf-8").decode("latin-1"),
        "PATH_INFO": path.encode("utf-8").decode("latin-1"),
        "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
        "SERVER_NAME": server[0],
        "SERVER_PORT": str(server[1]) if server[1] is not None else "0",
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": stream,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    client = scope.get("client")
    if client:
        environ["REMOTE_ADDR"] = client[0]
        environ["REMOTE_PORT"] = str(client[1])
    repeated: dict[str, list[str]] = {}
    for raw_name, raw_value in scope.get("headers", ()):
        name = raw_name.decode("latin-1")
        if "_" in name:
            # "X_Forwarded_For" would land on the same key as "X-Forwarded-For";
            # drop it, as Django's runserver, gunicorn and nginx do.
            continue
        name = name.upper()
        if name == "CONTENT-LENGTH":
            key = "CONTENT_LENGTH"
        elif name == "CONTENT-TYPE":
            key = "CONTENT_TYPE"
        else:
            key = "HTTP_" + name.replace("-", "_")
        value = raw_value.decode("latin-1")
        if key in environ:
            repeated.setdefault(key, [environ[key]]).append(value)  # joined once, below
        else:
            environ[key] = value
    for key, values in repeated.items():
        environ[key] = join_values(values, cookie=key == "HTTP_COOKIE")
    if "CONTENT_LENGTH" not in environ:
        # No length: the body (chunked, or none) ends where the stream ends.
        environ["wsgi.input_terminated"] = True
    return environ


class Exchange:
    """One request's WSGI call, run in a worker thread, and the delivery of its response.

    A small response is returned whole (:meth:`run`), for the loop to send in one go.
    Any other is handed, chunk by chunk, to an :class:`~gateway.adapters.buffering.Outbox`
    that the loop drains (:meth:`delivered`) as the client takes it.
    """

    __slots__ = (
        "bridge",
        "buffer_ok",
        "buffer_size",
        "delivery",
        "dropped",
        "gone",
        "headers",
        "length",
        "loop",
        "outbox",
        "overrun",
        "receive",
        "remaining",
        "scope",
        "send",
        "started",
        "status",
        "stream",
    )

    def __init__(
        self,
        bridge: WSGIBridge,
        loop: asyncio.AbstractEventLoop,
        send: Send,
        receive: Receive,
        stream: Any,
        scope: Scope,
    ) -> None:
        self.bridge = bridge
        self.loop = loop
        self.send = send
        self.receive = receive
        self.buffer_size = bridge.buffer_size
        self.stream = stream
        self.scope = scope
        self.status: int | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.buffer_ok = False
        self.length = -1  # the declared Content-Length, -1 without one
        self.remaining = -1  # what is left of it to send
        self.overrun = False
        self.started = False
        self.outbox: Outbox | None = None
        self.delivery: asyncio.Task[None] | None = None
        self.gone = False  # (the loop's) the request was cut off: send nothing
        self.dropped = False  # (the loop's) done with the outbox

    @property
    def where(self) -> str:
        """The mount (or the path) that warnings name."""
        return self.bridge.name or str(self.scope["path"])

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
    ) -> Callable[[bytes], None]:
        """PEP 3333 ``start_response``."""
        if exc_info is not None:
            try:
                if self.started:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise RuntimeError("start_response() was called twice without exc_info.")
        self.status = int(status[:3])
        encoded = []
        length = -1
        for name, value in headers:
            name = name.lower()
            if name == "content-length":
                digits = value.strip()
                length = int(digits) if digits.isascii() and digits.isdigit() else -1
            encoded.append((name.encode("latin-1"), value.encode("latin-1")))
        self.headers = encoded
        self.length = self.remaining = length
        self.buffer_ok = 0 <= length <= self.buffer_size
        return self.write

    def write(self, data: bytes) -> None:
        """PEP 3333 ``write()``: send ``data`` now, ahead of the returned iterable."""
        self._send_start()
        data = self._clip(data)
        if data:
            self._send_body(data)

    def run(self, app: WSGIApp, environ: Environ) -> Answer | None:
        """Call the app; return a small response whole, or hand it to the outbox and return None."""
        try:
            result = app(environ, self.start_response)
        except Exception:
            return self._failed(environ)
        try:
            return self._respond(result)
        except Exception:
            return self._failed(environ)
        finally:
            try:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
            finally:
                if self.outbox is not None:
                    self.outbox.leave()

    def _failed(self, environ: Environ) -> Answer:
        """Log the app's exception and answer 500, or re-raise once headers are out."""
        if self.started:
            if self.outbox is not None:
                self.outbox.end(complete=False)  # what the app produced goes out first
            raise  # (called in an except block) headers are out: the server must abort the connection
        logger.exception("Exception in WSGI application %r", environ.get("PATH_INFO"))
        return 500, [(b"content-type", b"text/plain"), (b"content-length", b"21")], _ERROR_BODY

    def _respond(self, result: Iterable[bytes]) -> Answer | None:
        if isinstance(result, (list, tuple)) and not self.started:
            body = self._clip(b"".join(result))
            if len(body) <= self.buffer_size:
                return self._whole(body)
            self._send_start()
            if self._send_body(body):
                self._send_end()
            return None
        chunks: list[bytes] = []
        size = 0
        buffering = not self.started
        # Once the declared length is out (by write() too), nothing more is sent: the app
        # is not asked for it (PEP 3333), and the end goes out at once.
        source: Iterable[bytes] = () if self.remaining == 0 else result
        for chunk in source:
            chunk = self._clip(chunk)
            if chunk:
                if buffering:
                    chunks.append(chunk)
                    size += len(chunk)
                    if not (self.buffer_ok and size <= self.buffer_size):
                        buffering = False
                        self._send_start()
                        if not self._send_body(b"".join(chunks)):
                            return None
                        chunks.clear()
                elif not self._send_body(chunk):
                    return None  # the client is gone: stop iterating (run() closes the iterable)
            if self.remaining == 0:
                break
        if buffering:
            return self._whole(b"".join(chunks))
        self._send_end()
        return None

    def _clip(self, data: bytes) -> bytes:
        """Return the part of ``data`` that fits in the declared Content-Length."""
        if self.remaining < 0:
            return data  # no Content-Length: the body ends where the app's ends
        if len(data) <= self.remaining:
            self.remaining -= len(data)
            return data
        # PEP 3333: the server should not send more than the app declared. Sending it
        # anyway makes uvicorn drop the response and the connection (with any pipelined
        # request on it); the declared bytes make a complete response.
        if not self.overrun:
            self.overrun = True
            logger.warning(
                "The app at %s sent more than its Content-Length of %d bytes; the rest was dropped.",
                self.where, self.length,
            )
        data = data[: self.remaining]
        self.remaining = 0
        return data

    def _whole(self, body: bytes) -> Answer:
        if self.status is None:
            raise RuntimeError("The WSGI application returned without calling start_response().")
        return self.status, self.headers, body

    # -- the thread's side of a response that is not sent whole ---------------------------

    def _send_start(self) -> None:
        if self.started:
            return
        if self.status is None:
            raise RuntimeError("The WSGI application sent a body before calling start_response().")
        self.started = True
        bridge = self.bridge
        if bridge.stream_response:  # each chunk waits until it is sent: never spilled
            self.outbox = Outbox(self.loop, memory=sys.maxsize, limit=0, piece=bridge.send_piece)
        else:
            self.outbox = Outbox(self.loop, memory=bridge.memory_size, limit=bridge.max_buffer,
                                 piece=bridge.send_piece)
        self.loop.call_soon_threadsafe(self.begin)

    def _send_body(self, data: bytes) -> bool:
        """Hand ``data`` to the loop; False once the client is gone."""
        assert self.outbox is not None
        return self.outbox.put(data)

    def _send_end(self) -> None:
        assert self.outbox is not None
        self.outbox.end()

    # -- the loop's side ------------------------------------------------------------------

    def begin(self) -> None:
        """Start sending the response the thread has begun (once; not after :meth:`cut`)."""
        if self.delivery is None and self.outbox is not None:
            if self.gone:
                self._drop()
            else:
                self.delivery = self.loop.create_task(self._deliver())

    def _drop(self) -> None:
        """The loop is done with the outbox: stop it, and leave it (once)."""
        if self.outbox is not None and not self.dropped:
            self.dropped = True
            self.outbox.cut()
            self.outbox.leave()

    async def delivered(self) -> None:
        """Wait until the response is out (or cut off)."""
        self.begin()
        if self.delivery is not None:
            await self.delivery

    def cut(self) -> None:
        """Send no more: the request was cancelled (the thread may still run)."""
        self.gone = True
        if self.delivery is None:
            self._drop()  # if the thread begins a response later, begin() drops it
        elif not self.delivery.done():
            self.delivery.cancel()
        elif not self.delivery.cancelled():
            self.delivery.exception()  # retrieved: the cancellation is what is raised

    async def _deliver(self) -> None:
        outbox = self.outbox
        assert outbox is not None and self.status is not None
        timeout = self.bridge.send_timeout
        watcher = None
        try:
            async with asyncio.timeout(timeout):
                await self.send({"type": "http.response.start", "status": self.status, "headers": self.headers})
            # While sending, watch for the client leaving, unless the app still reads the
            # body (then a disconnect surfaces there).
            if getattr(self.stream, "complete", True):
                watcher = self.loop.create_task(self._watch(outbox))
            await outbox.drain(self.send, timeout)
        except TimeoutError:
            logger.warning("A client of %s took nothing of its response for %g s (GATEWAY_SEND_TIMEOUT); "
                           "the connection was cut off.", self.where, timeout)
            abort = self.scope.get("extensions", {}).get(ABORT_EXTENSION)
            if abort is not None:
                await abort()
        finally:
            self._drop()
            if watcher is not None:
                watcher.cancel()

    async def _watch(self, outbox: Outbox) -> None:
        while True:
            message: Message = await self.receive()
            if message["type"] == "http.disconnect":
                outbox.cut()
                return


async def refuse_websocket(receive: Receive, send: Send) -> None:
    """Close a websocket handshake the gateway refuses (the client sees 403): for an app
    that cannot take one, or a request the pipeline refused."""
    message = await receive()
    if message["type"] == "websocket.connect":
        await send({"type": "websocket.close", "code": WEBSOCKET_REFUSED})


async def answer_lifespan(receive: Receive, send: Send) -> None:
    """Complete the lifespan protocol for an app that needs no start-up or shutdown."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
