"""The pipeline's work at each mount's boundary, where only the protocol's own code can do it.

The decisions (which mount, the rewritten head, refusals, the bare-prefix redirect, a
``Content-Length`` over the limit) are the pipeline's (:mod:`gateway.pipeline`). What is
left happens while the app runs:

- a request body of unknown length (chunked, or HTTP/2 without ``Content-Length``)
  within the mount's limit is collected (in memory up to 1 MiB,
  then in a temporary file) and handed on with a ``Content-Length``: Django reads no
  body without one. One past the limit gets a 413; one cut short, a 400;
- an ASGI app's body past the limit ends, for the app, in ``http.disconnect``;
- the response headers are completed by :meth:`gateway.pipeline.Pipeline.complete`
  (cookies scoped to the mount, security headers, request ID, draining), for a WSGI app
  in its ``start_response`` (on the ASGI side that runs in the bridge's worker thread,
  before the headers are encoded), for an ASGI app in its ``send``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from typing import Any

from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.wsgi import ClosingIterator

from gateway.pipeline import CURRENT, Decision, Pipeline
from gateway.replies import BODY_ENDED_EARLY, Reply, too_large
from gateway.types import ASGIApp, Environ, Message, Receive, Scope, Send, StartResponse, WSGIApp

SPOOL_IN_MEMORY = 1024 * 1024


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


class WSGIBoundary:
    """Serve a WSGI app as a mount: collect a chunked body, complete the response headers.

    The request's :class:`~gateway.pipeline.Decision` is :data:`gateway.pipeline.CURRENT`,
    set by the entry point; called outside such a request (the readiness probe), the
    app is called as it is.
    """

    def __init__(self, app: WSGIApp, pipeline: Pipeline) -> None:
        self.app = app
        self.pipeline = pipeline

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        decision = CURRENT.get()
        if decision is None:
            return self.app(environ, start_response)
        spool = None
        limit = decision.body_limit
        if limit is not None and not environ.get("CONTENT_LENGTH") and (
                "HTTP_TRANSFER_ENCODING" in environ or environ.get("SERVER_PROTOCOL", "").startswith("HTTP/2")):
            # A body of unknown length: chunked, or HTTP/2 without a Content-Length (its
            # frames carry no Transfer-Encoding).
            spool = collect_body(environ, limit)
            if spool is None:
                return wsgi_reply(self.pipeline, too_large(limit), decision, start_response)
            if spool is False:
                return wsgi_reply(self.pipeline, BODY_ENDED_EARLY, decision, start_response)
        complete = self.pipeline.complete

        def start_completed(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            complete(headers, decision)
            return start_response(status, headers, exc_info)

        result = self.app(environ, start_completed)
        # Closing the response also closes the collected body.
        return result if spool is None else ClosingIterator(result, spool.close)


def collect_body(environ: Environ, limit: int) -> Any:
    """Read a body of unknown length up to ``limit``.

    Return the spooled body, ``None`` if it is longer than ``limit``, or ``False`` if
    the client went away (or broke the chunked framing) before its end.
    """
    stream = environ["wsgi.input"]
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115 - closed with the response
    size = 0
    try:
        while chunk := stream.read(64 * 1024):
            size += len(chunk)
            if size > limit:
                spool.close()
                return None
            spool.write(chunk)
    except OSError:  # the bridge's ClientDisconnected, or a server's equivalent
        spool.close()
        return False
    spool.seek(0)
    environ["wsgi.input"] = spool
    environ["CONTENT_LENGTH"] = str(size)
    # The body now has a length: nothing may read it as chunked or unterminated again
    # (Werkzeug reads no body at all while Transfer-Encoding is still there).
    environ.pop("wsgi.input_terminated", None)
    environ.pop("HTTP_TRANSFER_ENCODING", None)
    return spool


class ASGIBoundary:
    """Serve an ASGI app as a mount: limit its body, complete its response headers."""

    def __init__(self, app: ASGIApp, pipeline: Pipeline) -> None:
        self.app = app
        self.pipeline = pipeline

    async def serve(self, scope: Scope, receive: Receive, send: Send, decision: Decision) -> None:
        """Call the app for a request the pipeline gave to this mount."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if decision.body_limit is not None:
            receive = limited(receive, decision.body_limit)
        complete = self.pipeline.complete

        async def send_completed(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(bytes(n).decode("latin-1"), bytes(v).decode("latin-1"))
                           for n, v in message.get("headers", ())]
                complete(headers, decision)
                message = {**message, "headers": [(n.lower().encode("latin-1"), v.encode("latin-1"))
                                                  for n, v in headers]}
            await send(message)

        await self.app(scope, receive, send_completed)


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
