"""The pipeline's work at each mount's boundary, where only the protocol's own code can do it.

The decisions (which mount, the rewritten head, refusals, the bare-prefix redirect, a
``Content-Length`` over the limit) are the pipeline's (:mod:`gateway.core.pipeline`). What is
left happens while the app runs:

- the request body is read whole before the app is called, unless the mount streams
  its uploads (``GATEWAY_STREAM_BODIES``): on the ASGI side on the event loop
  (:func:`read_body`), so that a slow upload holds no thread, with a 408 when it stops
  arriving for ``GATEWAY_BODY_TIMEOUT`` seconds; on the WSGI side in the server's
  thread. It is kept in memory up to 64 KiB, then in a temporary file, and handed on
  with its exact ``Content-Length`` (Django reads no body without one). One past the
  limit gets a 413; one shorter than its ``Content-Length``, a 400: the app never sees a
  short body as a whole one. A streaming mount's app reads as the body arrives, and a
  short body raises :class:`gateway.adapters.bridge.ClientDisconnected` in its read;
- a Django mount's ``multipart/form-data`` body, held whole, that lacks its closing
  boundary gets a 400 (:func:`cut_form`): Django keeps the fields before the cut and
  drops the rest, so a form cut short was saved as whole;
- an ASGI app's body past the limit ends, for the app, in ``http.disconnect``;
- the response headers are completed by :meth:`gateway.core.pipeline.Pipeline.complete`
  (cookies scoped to the mount, security headers, request ID, draining), for a WSGI app
  in its ``start_response`` (on the ASGI side that runs in the bridge's worker thread,
  before the headers are encoded), for an ASGI app in its ``send``.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from typing import IO, Any

from werkzeug.http import HTTP_STATUS_CODES, parse_options_header
from werkzeug.wsgi import ClosingIterator, LimitedStream

from gateway.adapters.bridge import ClientDisconnected, build_environ
from gateway.core.pipeline import ENVIRON_KEY, Decision, Pipeline, Request, without_cookie
from gateway.migration.shadow import Capture
from gateway.replies import (
    BODY_ENDED_EARLY,
    BODY_TIMED_OUT,
    FORM_CUT_SHORT,
    LENGTH_REQUIRED,
    NO_SPACE,
    Reply,
    too_large,
)
from gateway.types import ASGIApp, Environ, Message, Receive, Scope, Send, StartResponse, WSGIApp

#: Bodies up to this size stay in memory; longer ones go to a temporary file (nginx's
#: client_body_buffer_size is 8-16 KiB). 300 stalled uploads hold at most 19 MiB of memory.
SPOOL_IN_MEMORY = 64 * 1024
READ_SIZE = 64 * 1024

logger = logging.getLogger("gateway")


def status_line(status: int) -> str:
    """A WSGI status line, e.g. ``404 Not Found``."""
    return f"{status} {HTTP_STATUS_CODES.get(status, 'Unknown')}"


def wsgi_reply(pipeline: Pipeline, reply: Reply, decision: Decision, start_response: StartResponse) -> list[bytes]:
    """Send one of the gateway's own replies to a WSGI server."""
    start_response(status_line(reply.status), pipeline.reply_headers(reply, decision))
    return [reply.body]


async def asgi_reply(pipeline: Pipeline, reply: Reply, decision: Decision, send: Send) -> None:
    """Send one of the gateway's own replies to an ASGI server."""
    headers = [(n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in pipeline.reply_headers(reply, decision)]
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})


def enter(environ: Environ, request: Request) -> None:
    """Make ``environ`` what the mount's WSGI app must see of ``request``'s decision, for
    both entry points (the ASGI one, through the bridge, after it built the environ).

    The script name and path info of the mount, the request ID, the trace context, what
    a trusted proxy said (as Werkzeug's ``ProxyFix`` would put it), the cookies without
    one the mount may not read, and the request's state, for :class:`WSGIBoundary`.
    """
    decision = request.decision
    environ["SCRIPT_NAME"] = decision.script_name
    environ["PATH_INFO"] = decision.path_info
    environ["HTTP_X_REQUEST_ID"] = decision.request_id
    for name, value in request.trace_headers:  # the gateway's span, as the app's parent
        environ["HTTP_" + name.upper()] = value
    if decision.proxied:
        if decision.host is not None:
            environ["HTTP_HOST"] = decision.host
        environ["SERVER_NAME"], port = decision.server
        environ["SERVER_PORT"] = str(port) if port is not None else ""
        environ["wsgi.url_scheme"] = decision.scheme
        if decision.client is not None:
            environ["REMOTE_ADDR"] = decision.client
    if request.hidden_cookie is not None and "HTTP_COOKIE" in environ:
        environ["HTTP_COOKIE"] = without_cookie(environ["HTTP_COOKIE"], request.hidden_cookie)
    environ[ENVIRON_KEY] = request


class WSGIBoundary:
    """Serve a WSGI app as a mount: collect a chunked body, complete the response headers.

    The request's state (:class:`~gateway.core.pipeline.Request`) is in the environ, put
    there by :func:`enter`; called without it (the readiness probe), the app is called as
    it is.
    """

    def __init__(self, app: WSGIApp, pipeline: Pipeline) -> None:
        self.app = app
        self.pipeline = pipeline

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        request = environ.get(ENVIRON_KEY)
        if request is None:
            return self.app(environ, start_response)
        decision = request.decision
        spool = None
        head = request.head
        # The first test spares a GET (no body, HTTP/1) the rest.
        if (head.body is not None or head.http_version[0] != "1") and not request.body_read:
            spool = self.take_body(environ, request)
            if isinstance(spool, Reply):
                return wsgi_reply(self.pipeline, spool, decision, start_response)
        if (spool is not None or request.body_read) and (refusal := self.refuse_form(environ, decision)) is not None:
            if spool is not None:
                spool.close()
            return wsgi_reply(self.pipeline, refusal, decision, start_response)
        complete = self.pipeline.complete
        if decision.shadow is not None:
            return self.captured(environ, start_response, request, spool)

        def start_completed(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            complete(headers, decision)
            return start_response(status, headers, exc_info)

        result = self.app(environ, start_completed)
        # Closing the response also closes the collected body.
        return result if spool is None else ClosingIterator(result, spool.close)

    def refuse_form(self, environ: Environ, decision: Decision) -> Reply | None:
        """The refusal of a form held whole that its app would take wrongly, or None: one
        cut before its closing boundary, to Django (:func:`cut_form`); one whose files the
        disk has no room to copy (:func:`no_room_for_its_files`)."""
        if decision.mount is not None and decision.mount.prefix in self.pipeline.django and cut_form(environ):
            logger.warning("A multipart form to %s had no closing boundary (cut short); answered 400.",
                           decision.mount_label)
            return FORM_CUT_SHORT
        return no_room_for_its_files(environ)

    def take_body(self, environ: Environ, request: Request) -> Any:
        """Read the request body whole before the app runs, as the decision says: return the
        spooled body (now ``wsgi.input``), None when there is nothing to hold (no body, a
        streaming mount, or no limit), or the :class:`Reply` that refuses it."""
        decision = request.decision
        limit = decision.body_limit
        length = environ.get("CONTENT_LENGTH")
        if limit is None:
            return None
        if length:
            # The pipeline has checked that it is digits within the limit.
            if not decision.buffered:
                environ["wsgi.input"] = ExactBody(environ["wsgi.input"], int(length))
                return None
            read = read_exactly(environ, int(length))
            return BODY_ENDED_EARLY if read is None else read
        if not (decision.buffered and request.head.body_unframed):
            return None
        # A body of unknown length (the pipeline's Head.body_unframed). A streaming mount's
        # app reads it as it comes, to its end (``wsgi.input_terminated``, as the server set it).
        if request.head.chunked and hides_framing_errors(environ["wsgi.input"]):
            logger.warning("A chunked request body under Granian was refused with 411: its WSGI stream "
                           "cannot tell a malformed body from a whole one.")
            return LENGTH_REQUIRED
        spool = collect_body(environ, limit)
        if spool is None:
            return too_large(limit)
        if spool is False:
            return BODY_ENDED_EARLY
        return spool

    def captured(self, environ: Environ, start_response: StartResponse, request: Request, spool: Any
                 ) -> Iterable[bytes]:
        """Serve a request with a shadow comparison: the app's answer, as it gave it, is
        copied on its way out (:meth:`Pipeline.capture`)."""
        decision = request.decision
        copy = self.pipeline.capture(request, environ)
        complete = self.pipeline.complete

        def start_copied(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            copy.start(int(status[:3]), headers)
            complete(headers, decision)
            write = start_response(status, headers, exc_info)

            def copied(chunk: bytes) -> None:  # PEP 3333's write(): copied too, before the iterable's chunks
                copy.add(chunk)
                write(chunk)

            return copied

        try:
            result = self.app(environ, start_copied)
        except BaseException:
            if spool is not None:
                spool.close()
            raise
        return Copied(result, copy, spool)


class Copied:
    """A WSGI response on its way out, each chunk also given to a shadow comparison's copy,
    which is closed with it (and the request body collected for the app, if any)."""

    __slots__ = ("copy", "result", "spool")

    def __init__(self, result: Iterable[bytes], copy: Capture, spool: Any) -> None:
        self.result = result
        self.copy = copy
        self.spool = spool

    def __iter__(self) -> Iterator[bytes]:
        copy = self.copy
        for chunk in self.result:
            copy.add(chunk)
            yield chunk
        copy.end()

    def close(self) -> None:
        try:
            close = getattr(self.result, "close", None)
            if close is not None:
                close()
        finally:
            if self.spool is not None:
                self.spool.close()
            self.copy.close()


def hides_framing_errors(stream: Any) -> bool:
    """True for Granian's ``wsgi.input`` (granian 2.8): it ends a chunked body where its
    framing breaks (a bad chunk size, data longer than its size) as if that were the end,
    so a body cut there would reach the app as whole. Measured; no setting changes it."""
    return type(stream).__module__.startswith("granian")


def no_space(error: OSError, size: int) -> Reply:
    """Say in one line that a request body of ``size`` bytes so far could not be stored
    (``error``: the disk of the temporary files is full, or refused), and answer 503:
    the server's failure, not the client's."""
    logger.error("A request body could not be stored (%s, after %d bytes, in %s): answered 503. Free space there, "
                 "or point TMPDIR at a disk with room.", error.strerror or error, size, tempfile.gettempdir())
    return NO_SPACE


#: The least a form's file must be for a framework to copy it to disk: Werkzeug's 500 KiB
#: (its parser's ``SpooledTemporaryFile``); Django's is more (2.5 MB).
FORM_IN_MEMORY = 500 * 1024


def no_room_for_its_files(environ: Environ) -> Reply | None:
    """A 503 (as :func:`no_space` answers) for a ``multipart/form-data`` body, held whole,
    that the temporary files' disk has no room to copy; else None.

    The frameworks copy a form's files there once more as they parse it (Werkzeug each
    file over 500 KiB, Django each over ``FILE_UPLOAD_MAX_MEMORY_SIZE``, 2.5 MB): with room
    for the gateway's copy and not for theirs, the disk filled inside the app, a 500 and a
    traceback. A form of :data:`FORM_IN_MEMORY` or less is not checked: no file of it
    goes to disk again.
    """
    length = environ.get("CONTENT_LENGTH") or ""
    if (not length.isdigit() or int(length) <= FORM_IN_MEMORY
            or environ.get("CONTENT_TYPE", "")[:19].lower() != "multipart/form-data"):
        return None
    folder = tempfile.gettempdir()
    try:
        stats = os.statvfs(folder)
    except OSError:
        return None  # the app will find out, as before
    free = stats.f_bavail * stats.f_frsize
    if free >= int(length):
        return None
    logger.error("A form of %s bytes came whose files its app copies to %s, which has %d bytes free: answered 503. "
                 "Free space there, or point TMPDIR at a disk with room.", length, folder, free)
    return NO_SPACE


#: How much of a form's end :func:`cut_form` reads for its closing boundary: a browser's
#: form ends with it; an epilogue longer than this is taken for a form cut short.
FORM_TAIL = 64 * 1024


def cut_form(environ: Environ) -> bool:
    """Whether a ``multipart/form-data`` body, held whole in ``wsgi.input``, lacks its
    closing boundary (``--boundary--``) after its last part.

    Django's parser keeps every field before the end of such a body and drops the part
    the end cut (a file, the fields after it): its view then saved what was left as the
    whole form. Werkzeug's parser keeps none of it. A body without a boundary parameter,
    or with no delimiter at all (no part to keep), is left to the app.
    """
    content_type = environ.get("CONTENT_TYPE", "")
    if content_type[:19].lower() != "multipart/form-data":
        return False
    boundary = parse_options_header(content_type)[1].get("boundary")
    if not boundary:
        return False
    stream = environ["wsgi.input"]
    start = stream.tell()
    head: bytes = stream.read(FORM_TAIL)
    stream.seek(0, io.SEEK_END)
    end = stream.tell()
    stream.seek(max(start, end - FORM_TAIL))
    tail: bytes = stream.read(FORM_TAIL)
    stream.seek(start)
    delimiter = b"--" + boundary.encode("latin-1", "replace")
    last = tail.rfind(delimiter)
    if last < 0:  # no part at the end; cut unless the body has none at all (a form of no fields)
        return delimiter in head
    return tail[last + len(delimiter):last + len(delimiter) + 2] != b"--"


def collect_body(environ: Environ, limit: int) -> Any:
    """Read a body of unknown length up to ``limit``.

    Return the spooled body, ``None`` if it is longer than ``limit``, ``False`` if
    the client went away (or broke the chunked framing) before its end, or the 503 of
    :func:`no_space` if it could not be stored.
    """
    stream = environ["wsgi.input"]
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115 - closed with the response
    size = 0
    while True:
        try:
            chunk = stream.read(64 * 1024)
        except OSError:  # the bridge's ClientDisconnected, or a server's equivalent
            spool.close()
            return False
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            spool.close()
            return None
        try:
            spool.write(chunk)
        except OSError as error:  # the disk, not the client
            spool.close()
            return no_space(error, size)
    spool.seek(0)
    environ["wsgi.input"] = spool
    environ["CONTENT_LENGTH"] = str(size)
    # The body now has a length: nothing may read it as chunked or unterminated again
    # (Werkzeug reads no body at all while Transfer-Encoding is still there).
    environ.pop("wsgi.input_terminated", None)
    environ.pop("HTTP_TRANSFER_ENCODING", None)
    return spool


def read_exactly(environ: Environ, length: int) -> IO[bytes] | Reply | None:
    """Read a body of ``length`` bytes, as its ``Content-Length`` says; None if it is short,
    the 503 of :func:`no_space` if it could not be stored.

    gunicorn and Granian hand a WSGI app a body that ended early (the client
    half-closed the connection) as if it were whole: Django then saves a form cut off
    mid-field. Read first and counted, it is refused instead.
    """
    stream = environ["wsgi.input"]
    try:
        spool: IO[bytes] = (io.BytesIO() if length <= SPOOL_IN_MEMORY
                            else tempfile.TemporaryFile())  # noqa: SIM115 - closed with the response
    except OSError as error:
        return no_space(error, 0)
    remaining = length
    while remaining > 0:
        try:
            chunk = stream.read(min(remaining, READ_SIZE))
        except OSError:  # a server's "client disconnected"
            break
        if not chunk:
            break
        try:
            spool.write(chunk)
        except OSError as error:  # the disk, not the client
            spool.close()
            return no_space(error, length - remaining)
        remaining -= len(chunk)
    if remaining > 0:
        spool.close()
        logger.warning("The request body ended %d bytes short of its Content-Length of %d; answered 400.",
                       remaining, length)
        return None
    spool.seek(0)
    environ["wsgi.input"] = spool
    return spool


class ExactBody(LimitedStream):
    """``wsgi.input`` of a streaming mount: the body up to its ``Content-Length``, and an
    error, not a quiet end, if it stops short (a Werkzeug ``BadRequest`` and an
    ``OSError``, which Django turns into ``UnreadablePostError``)."""

    def on_disconnect(self, error: Exception | None = None) -> None:
        raise ClientDisconnected("The request body ended before its Content-Length.") from error

    def read(self, size: int | None = -1) -> bytes:
        # A raw stream may return less than asked; an app that reads its body in one
        # read(n) would take a short body for a whole one. Read on to ``size`` bytes, or
        # to the end of the body, or to the error.
        if size is None or size < 0:
            return super().read(-1)
        parts = []
        while size > 0 and (data := super().read(size)):
            parts.append(data)
            size -= len(data)
        return b"".join(parts)


Body = tuple[IO[bytes], int]


async def read_body(receive: Receive, limit: int | None, timeout: float) -> Body | Reply | None:
    """Read a request body whole on the event loop, before a thread is spent on it.

    Return the body and its length, a :class:`Reply` (413 past ``limit``, 408 when no
    byte arrives for ``timeout`` seconds), or None if the client went away first. Up
    to :data:`SPOOL_IN_MEMORY` bytes stay in memory; a longer body goes on to a
    temporary file, written from the loop, as nginx buffers a request body before
    passing it upstream (``proxy_request_buffering``); writes to the page cache do not
    block for long.
    """
    loop = asyncio.get_running_loop()
    chunks: list[bytes] = []
    spool: IO[bytes] | None = None
    size = 0
    try:
        async with asyncio.timeout(timeout) as deadline:
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    if spool is not None:
                        spool.close()
                    return None
                if data := message.get("body", b""):
                    size += len(data)
                    if limit is not None and size > limit:
                        if spool is not None:
                            spool.close()
                        return too_large(limit)
                    try:
                        if spool is not None:
                            spool.write(data)
                        elif size > SPOOL_IN_MEMORY:
                            spool = tempfile.TemporaryFile()  # noqa: SIM115 - closed with the response
                            spool.writelines(chunks)
                            spool.write(data)
                            chunks.clear()
                        else:
                            chunks.append(data)
                    except OSError as error:  # the disk, not the client
                        if spool is not None:
                            spool.close()
                        return no_space(error, size)
                if not message.get("more_body", False):
                    break
                deadline.reschedule(loop.time() + timeout)
    except TimeoutError:
        if spool is not None:
            spool.close()
        return BODY_TIMED_OUT
    except BaseException:  # cancelled (the server's shutdown): no file left open
        if spool is not None:
            spool.close()
        raise
    if spool is None:
        return io.BytesIO(chunks[0] if len(chunks) == 1 else b"".join(chunks)), size
    spool.seek(0)
    return spool, size


class ASGIBoundary:
    """Serve an ASGI app as a mount: limit its body, complete its response headers."""

    def __init__(self, app: ASGIApp, pipeline: Pipeline) -> None:
        self.app = app
        self.pipeline = pipeline

    async def serve(self, scope: Scope, receive: Receive, send: Send, request: Request) -> None:
        """Call the app for a request the pipeline gave to this mount."""
        decision = request.decision
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if decision.body_limit is not None:
            receive = limited(receive, decision.body_limit)
        complete = self.pipeline.complete
        if decision.shadow is not None:
            await self.captured(scope, receive, send, request)
            return

        async def send_completed(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                complete(headers, decision)  # in their bytes: no decoding and encoding again
                if headers and type(headers[0][0]) is str:
                    # The app sent none (ASGI makes them optional): complete() could not
                    # tell the form from the first one and added text; a server takes bytes.
                    headers = [(n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in headers]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_completed)

    async def captured(self, scope: Scope, receive: Receive, send: Send, request: Request) -> None:
        """Serve a request with a shadow comparison: the app's answer, as it gave it, is
        copied on its way out, and handed over (never waiting) once the app is done. The
        replays are made from the request as a WSGI app would see it (the bridge's translation)."""
        decision = request.decision
        copy = self.pipeline.capture(request, build_environ(scope, None))
        complete = self.pipeline.complete

        async def send_copied(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                headers = list(message.get("headers", ()))
                copy.start(message["status"], [(bytes(n).decode("latin-1"), bytes(v).decode("latin-1"))
                                               for n, v in headers])
                complete(headers, decision)
                message = {**message, "headers": headers}
            elif kind == "http.response.body":
                copy.add(message.get("body", b""))
                if not message.get("more_body", False):
                    copy.end()
            await send(message)

        try:
            await self.app(scope, receive, send_copied)
        finally:
            copy.close()


def limited(receive: Receive, limit: int) -> Receive:
    """Wrap ``receive`` so that a body past ``limit`` ends in ``http.disconnect``."""
    seen = 0

    async def receive_limited() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                return {"type": "http.disconnect"}
        return message

    return receive_limited
