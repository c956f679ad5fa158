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
  list or tuple (already produced), is collected in the worker thread and sent in one
  go. Anything else streams: each chunk is sent as the app produces it, waiting for the
  server to take it (back-pressure), and the app stops being iterated once the client
  has gone.
- The request body is handed over as it arrives (``wsgi.input`` pulls the next ASGI
  message on demand); without a ``Content-Length`` the stream ends at the end of the
  body and ``wsgi.input_terminated`` is set. The first message is read before the app
  is called, so a small body costs no extra hop.
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
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any

from werkzeug.exceptions import ClientDisconnected as _WerkzeugClientDisconnected

from gateway.core.pipeline import WEBSOCKET_REFUSED, join_values, strip_root
from gateway.types import Environ, ExcInfo, Message, Receive, Scope, Send, WSGIApp

logger = logging.getLogger("gateway.bridge")

DEFAULT_BUFFER_SIZE = 64 * 1024
_ERROR_BODY = b"Internal Server Error"

# A response collected whole in the worker thread: status, headers, body.
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]


class ClientDisconnected(_WerkzeugClientDisconnected, OSError):
    """The client went away before the request body was read in full.

    A Werkzeug ``BadRequest`` (Flask answers it with a 400 and logs no traceback) and an
    ``OSError`` (Django turns it into ``UnreadablePostError``).
    """


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
    ) -> None:
        self.app = app
        self.executor = executor or ThreadPoolExecutor(thread_name_prefix="wsgi")
        self.buffer_size = buffer_size
        self.name = name
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
        *, prepare: Callable[[Environ], None] | None = None,
    ) -> None:
        """Serve one HTTP request; ``body`` is its body and length if already read whole;
        ``prepare`` changes the environ before the app sees it (the gateway's decision)."""
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
            # Reading now would make the server send "100 Continue" before the app
            # could refuse the body (a 413, say): let the app's first read do it.
            stream = RequestBody(loop, receive, b"")
        else:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before sending its request body
            first = message.get("body", b"")
            more = message.get("more_body", False)
            stream = RequestBody(loop, receive, first) if more else io.BytesIO(first)
        environ["wsgi.input"] = stream
        exchange = Exchange(loop, send, receive, self.buffer_size, stream, self.name or scope["path"])
        context = contextvars.copy_context()
        run: Callable[[WSGIApp, Environ], Answer | None] = exchange.run
        if self.observer is not None:
            run = functools.partial(_observed, self.observer, time.perf_counter(), exchange.run)
        try:
            answer = await loop.run_in_executor(self.executor, context.run, run, self.app, environ)
        except asyncio.CancelledError:
            # The server gave up on this request (its graceful shutdown timed out): say
            # so in one line and, if nothing was sent yet, answer 503, not a traceback.
            logger.warning("Request %s %r was still running at shutdown and was cut off.",
                           environ["REQUEST_METHOD"], environ["PATH_INFO"])
            if not exchange.started:
                await send({"type": "http.response.start", "status": 503, "headers": [
                    (b"content-type", b"text/plain"), (b"connection", b"close"), (b"content-length", b"20")]})
                await send({"type": "http.response.body", "body": b"Service Unavailable\n"})
            return
        if body is not None:
            stream.close()  # a temporary file, once the app is done with it
        if answer is not None:
            status, headers, data = answer
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": data})


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


class RequestBody(io.RawIOBase):
    """``wsgi.input`` that pulls the request body from ASGI ``receive`` on demand.

    Read from a worker thread; each pull waits on the event loop for the next message,
    so at most one message is held in memory at a time.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, receive: Receive, first: bytes
    ) -> None:
        self._loop = loop
        self._receive = receive
        self._buffer = bytearray(first)
        self.complete = False

    def readable(self) -> bool:
        return True

    def _pull(self) -> bool:
        """Append the next body message to the buffer; False at the end of the body."""
        if self.complete:
            return False
        message = asyncio.run_coroutine_threadsafe(self._next(), self._loop).result()
        if message["type"] == "http.disconnect":
            self.complete = True
            raise ClientDisconnected("The client closed the connection while sending the body.")
        self._buffer += message.get("body", b"")
        if not message.get("more_body", False):
            self.complete = True
        return True

    async def _next(self) -> Message:
        # receive() is called here, on the loop: an ASGI server's callables are not
        # thread-safe, and may return any awaitable rather than a coroutine.
        return await self._receive()

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            while self._pull():
                pass
            size = len(self._buffer)
        while len(self._buffer) < size and self._pull():
            pass
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def readinto(self, target: Any) -> int:
        data = self.read(len(target))
        target[: len(data)] = data
        return len(data)

    def readline(self, size: int | None = -1) -> bytes:
        limit = size if size is not None and size >= 0 else None
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0 and (limit is None or end < limit):
                return self.read(end + 1)
            if limit is not None and len(self._buffer) >= limit:
                return self.read(limit)
            if not self._pull():
                rest = len(self._buffer)
                return self.read(rest if limit is None else min(limit, rest))


class Exchange:
    """One request's WSGI call, run in a worker thread."""

    __slots__ = (
        "buffer_ok",
        "buffer_size",
        "disconnected",
        "headers",
        "length",
        "loop",
        "overrun",
        "receive",
        "remaining",
        "send",
        "started",
        "status",
        "stream",
        "watcher",
        "where",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        send: Send,
        receive: Receive,
        buffer_size: int,
        stream: Any,
        where: str,
    ) -> None:
        self.loop = loop
        self.send = send
        self.receive = receive
        self.buffer_size = buffer_size
        self.stream = stream
        self.where = where  # the mount (or the path) that warnings name
        self.status: int | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.buffer_ok = False
        self.length = -1  # the declared Content-Length, -1 without one
        self.remaining = -1  # what is left of it to send
        self.overrun = False
        self.started = False
        self.disconnected = False
        self.watcher: Future[None] | None = None

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
        """Call the app; return a small response whole, or stream it and return None."""
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
                if self.watcher is not None:
                    self.watcher.cancel()

    def _failed(self, environ: Environ) -> Answer:
        """Log the app's exception and answer 500, or re-raise once headers are out."""
        if self.started:
            raise  # (called in an except block) headers are out: the server must abort the connection
        logger.exception("Exception in WSGI application %r", environ.get("PATH_INFO"))
        return 500, [(b"content-type", b"text/plain"), (b"content-length", b"21")], _ERROR_BODY

    def _respond(self, result: Iterable[bytes]) -> Answer | None:
        if isinstance(result, (list, tuple)) and not self.started:
            body = self._clip(b"".join(result))
            if len(body) <= self.buffer_size:
                return self._whole(body)
            self._send_start()
            view = memoryview(body)
            for i in range(0, len(body), self.buffer_size):
                if self.disconnected:
                    return None
                self._send_body(bytes(view[i : i + self.buffer_size]))
            self._send_end()
            return None
        chunks: list[bytes] = []
        size = 0
        buffering = not self.started
        # Once write() has gone past the declared length, nothing the app yields is sent.
        source: Iterable[bytes] = () if self.overrun else result
        for chunk in source:
            chunk = self._clip(chunk)
            if chunk:
                if buffering:
                    chunks.append(chunk)
                    size += len(chunk)
                    if not (self.buffer_ok and size <= self.buffer_size):
                        buffering = False
                        self._send_start()
                        self._send_body(b"".join(chunks))
                        chunks.clear()
                elif self.disconnected:
                    return None  # stop iterating: the finally in run() closes the iterable
                else:
                    self._send_body(chunk)
            if self.overrun:
                break  # the rest would be dropped: stop asking the app for it
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

    def _call(self, message: Message) -> None:
        """Send ``message`` from the worker thread and wait until the server has taken it."""
        asyncio.run_coroutine_threadsafe(self._send(message), self.loop).result()

    async def _send(self, message: Message) -> None:
        # send() is called here, on the loop, for the reasons given in RequestBody._next.
        await self.send(message)

    def _send_start(self) -> None:
        if self.started:
            return
        if self.status is None:
            raise RuntimeError("The WSGI application sent a body before calling start_response().")
        self.started = True
        self._call({"type": "http.response.start", "status": self.status, "headers": self.headers})
        # While streaming, watch for the client leaving, unless the app still reads
        # the body (then a disconnect surfaces there).
        if getattr(self.stream, "complete", True):
            self.watcher = asyncio.run_coroutine_threadsafe(self._watch(), self.loop)

    def _send_body(self, data: bytes) -> None:
        self._call({"type": "http.response.body", "body": data, "more_body": True})

    def _send_end(self) -> None:
        self._call({"type": "http.response.body", "body": b"", "more_body": False})

    async def _watch(self) -> None:
        while True:
            message: Message = await self.receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
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
