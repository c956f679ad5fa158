"""uvicorn's HTTP protocol with a deadline for request headers, and answers after a half-close.

uvicorn starts no timer while a request's headers arrive (Kludex/uvicorn#157): a
connection that sends nothing, or trickles its headers a byte at a time, stays open
as long as the client likes, and enough of them exhaust the server's file descriptors
(slowloris). nginx has ``client_header_timeout``, gunicorn's workers and Granian time
out a silent connection; this class, on uvicorn's public ``HttpToolsProtocol``, does
the same:

- the clock starts when the connection opens, and again when the first byte after a
  response arrives (between requests, uvicorn's keep-alive timeout runs);
- once the headers are complete the clock stops: reading the body has its own timeout
  (``GATEWAY_BODY_TIMEOUT``, in :func:`gateway.adapters.boundary.read_body`);
- at the deadline, a connection that began a request and did not finish its headers
  gets a ``408`` and is closed, with one warning; one that began none is closed quietly
  with a debug line: it sent nothing (browsers open spare connections they may never
  use), or only the rest of a body its last response did not read (which also cancels
  uvicorn's keep-alive timer, so without this clock it would stay open).

The same protocol answers a request sent on a connection accepted just before the
server stopped (:meth:`HeaderTimeoutProtocol.shutdown`), and gives each request the
``gateway.abort`` ASGI extension (:meth:`HeaderTimeoutProtocol.abort`), with which the
bridge cuts off a client that stopped reading its response.

The timeout comes from the uvicorn config (:class:`TimedConfig`), so that workers
built by uvicorn's supervisor get it too.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httptools
import uvicorn
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.core.config import DEFAULT_HEADER_TIMEOUT

logger = logging.getLogger("gateway")

#: How long a stopping server waits, at most, for the first request of a connection it
#: accepted just before it stopped listening (seconds).
SHUTDOWN_GRACE = 0.5

#: The bytes a connection may send for one request's line and headers before it is cut off
#: with a 431. httptools keeps them all in memory, with no limit of its own: 8 connections
#: streaming one endless header grew uvicorn to 512 MiB before the header timeout. The
#: gateway refuses more than GATEWAY_MAX_HEADER_SIZE (16 KiB) of headers anyway, once they
#: are whole; this bound leaves room for a long URL and still caps what is held.
HEAD_LIMIT = 1024 * 1024

#: Requests a connection may send ahead of its responses (HTTP/1.1 pipelining). Past them,
#: nothing more of it is read, the request in progress and the next are answered, and the
#: connection closes (a 400 at once made the running request write to a closed transport,
#: an error and a traceback). httptools parses every request of what
#: uvicorn reads at once, and uvicorn queues each, reading on after every response: one
#: client pipelining 50,000 GETs grew the process by 131 MiB, eight by 540 MiB, with the
#: event loop busy 11 s. Browsers do not pipeline; a client that does sends a few.
PIPELINE_LIMIT = 64

#: A connection's write buffer: past this many bytes unsent, a response's ``send`` waits
#: until a quarter of it is left (asyncio's ratio; uvloop's own low mark is 16 bytes).
WRITE_BUFFER = 32 * 1024

_TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
              b"content-length: 62\r\nconnection: close\r\n\r\n"
              b"Request Header Fields Too Large: the request head is too long.")
_TIMED_OUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
              b"content-length: 51\r\nconnection: close\r\n\r\n"
              b"Request Timeout: the request headers took too long.")


class TimedConfig(uvicorn.Config):
    """A uvicorn config that carries the header timeout, and serves with the protocol below."""

    def __init__(self, *args: Any, header_timeout: float = DEFAULT_HEADER_TIMEOUT, **kwargs: Any) -> None:
        kwargs["http"] = HeaderTimeoutProtocol
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` that closes a connection whose request headers are late, and
    answers the first request of a connection accepted just before the server stopped."""

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self.header_timeout: float = getattr(config, "header_timeout", DEFAULT_HEADER_TIMEOUT)
        self.header_deadline: asyncio.TimerHandle | None = None
        self.began = False  # a request began since the clock started
        self.head_bytes = 0  # bytes of the request head being read (HEAD_LIMIT)
        self.overrun = False  # requests were pipelined past PIPELINE_LIMIT: nothing more is read
        #: The body pieces of this read, joined once it is parsed (:meth:`on_body`).
        self.pieces: list[bytes] = []
        self.grace: asyncio.TimerHandle | None = None  # the server stopped: the end of the wait for a first request

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # uvloop pauses a response's send past 64 KiB unsent and resumes it only once 16
        # bytes are left: a client at 1 KiB/s would take over a minute per send, past the
        # send timeout. Smaller limits hold less per slow connection, too.
        transport.set_write_buffer_limits(high=WRITE_BUFFER, low=WRITE_BUFFER // 4)
        self._start_clock()

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing() or self.overrun:
            return  # cut off (431, 408, a pipeline overrun): nothing more of this connection is read
        if self.header_deadline is None and self.cycle_done():
            self._start_clock()  # the first byte after a response
        if self.header_deadline is not None:  # a request's head is on its way: bounded
            self.head_bytes += len(data)
            if self.head_bytes > HEAD_LIMIT:
                self._head_too_large()
                return
        super().data_received(data)
        self._hand_over_body()

    def on_message_begin(self) -> None:
        if len(self.pipeline) >= PIPELINE_LIMIT:
            self.overrun = True
            raise httptools.HttpParserError("requests pipelined too far ahead")  # stops the parse
        self.began = True
        super().on_message_begin()

    def on_body(self, body: bytes) -> None:
        """Keep a piece of the body until the read is parsed. uvicorn adds each piece to the
        request's body with ``bytes +=``, which copies what is there: a read of 256 KiB in
        chunks of one byte copied about a gigabyte, and 1,000,000 such chunks held the event
        loop 2.3 s (four clients, /healthz 4.4 s late)."""
        if (self.parser.should_upgrade() and self._should_upgrade()) or self.cycle.response_complete:
            return
        self.pieces.append(body)

    def on_message_complete(self) -> None:
        self._hand_over_body()
        super().on_message_complete()

    def _hand_over_body(self) -> None:
        """Give the request the pieces of its body read so far, as uvicorn's ``on_body`` does."""
        if not self.pieces:
            return
        cycle = self.cycle
        cycle.body += b"".join(self.pieces)
        self.pieces.clear()
        if len(cycle.body) > HIGH_WATER_LIMIT:
            self.flow.pause_reading()
        cycle.message_event.set()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request it cannot parse; for a pipeline overrun, the end of
        the connection once the request in progress and the next one are answered."""
        if not self.overrun:
            super().send_400_response(msg)
            return
        client = "%s:%d" % self.client if self.client else "unknown client"  # noqa: UP031 - uvicorn's form
        logger.warning("A connection from %s sent more than %d requests ahead of their responses; the next "
                       "is answered, the others dropped, and the connection closed.", client, PIPELINE_LIMIT)
        following = self.pipeline.pop()  # the oldest waiting
        self.pipeline.clear()
        following[0].keep_alive = False
        self.pipeline.append(following)

    def eof_received(self) -> bool | None:  # type: ignore[override]  # asyncio.Protocol allows True
        """The client half-closed: it will send no more.

        uvicorn's ``HttpToolsProtocol`` closes the connection at once, so a client that
        sends a whole request and then shuts down its side (``curl -T``, many scripts)
        never reads the answer, though the app ran and the access log says 200. A request
        already complete is answered first, then the connection closes; one whose body
        was cut short is closed now (its app sees ``http.disconnect``).
        """
        cycle = self.cycle
        if self.scheme == "https":
            return None  # TLS cannot be half-closed: asyncio closes it whatever is returned
        if cycle is not None and not cycle.response_complete and not cycle.more_body:
            cycle.keep_alive = False
            return True  # keep the transport open to write the response
        return None

    def on_headers_complete(self) -> None:
        self._stop_clock()
        # Before uvicorn's cycle starts the app: the app can cut the connection off at once
        # (the bridge, when a client takes nothing of its response for the send timeout).
        extensions: dict[str, Any] = self.scope.setdefault("extensions", {})
        extensions["gateway.abort"] = self.abort
        super().on_headers_complete()
        if self.grace is not None:
            # The first request came while the server stops: it is answered, and then
            # the connection closes, as uvicorn's shutdown does for a request in progress.
            self.grace.cancel()
            self.grace = None
            if self.cycle is not None:  # None: a WebSocket upgrade, its own protocol's now
                self.cycle.keep_alive = False

    async def abort(self) -> None:
        """Close the connection now, dropping what is unsent (the ``gateway.abort`` extension).

        ``transport.close()`` would wait for a client that reads nothing to take the write
        buffer first. Once this returns, uvicorn knows the client is gone: an app that
        returns then, its response incomplete, is not logged as an error.
        """
        self.transport.abort()
        await asyncio.sleep(0)  # connection_lost was scheduled by abort(): it runs first

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_clock()
        if self.grace is not None:
            self.grace.cancel()
            self.grace = None
        super().connection_lost(exc)

    def shutdown(self) -> None:
        """The server stopped listening: uvicorn's ``Server.shutdown`` calls this on every
        connection, then waits until they have all closed.

        uvicorn's ``HttpToolsProtocol`` closes at once a connection on which no request
        has been parsed yet: one accepted a moment earlier, whose request is in its socket
        unread or still on its way, is reset unanswered (Kludex/uvicorn#3124, discussion
        #2315). Every worker that stops does so: one replaced by SIGHUP's rolling restart
        or by ``--limit-max-requests``, one stopped by SIGTERM. Here such a connection is
        given :data:`SHUTDOWN_GRACE` for its first request, which is answered, and the
        connection then closed; one that sends none in time is closed, quietly.

        A connection that has answered a request before is closed at once, as uvicorn
        does: closing an idle keep-alive connection is the race HTTP clients retry
        (RFC 9110, section 9.2.2). One with a request in progress is uvicorn's case too:
        answered, then closed.

        This is the protocol's part, not the server's: uvicorn's supervisor (``--workers``,
        ``--limit-max-requests``) runs its own ``uvicorn.Server`` in each worker and takes
        no server class, but every worker serves with this protocol (:class:`TimedConfig`).
        """
        if self.cycle is not None or self.transport.is_closing():
            super().shutdown()
            return
        if self.grace is None:
            self.grace = self.loop.call_later(SHUTDOWN_GRACE, self._grace_over)

    def _grace_over(self) -> None:
        self.grace = None
        super().shutdown()  # no request parsed (none sent, or one cut short): closed

    def cycle_done(self) -> bool:
        """No request is being served: the next byte starts a new one."""
        return self.cycle is None or self.cycle.response_complete

    def _start_clock(self) -> None:
        self.header_deadline = self.loop.call_later(self.header_timeout, self._headers_late)
        self.began = False
        self.head_bytes = 0

    def _head_too_large(self) -> None:
        self._stop_clock()
        if self.transport.is_closing():
            return
        client = "%s:%d" % self.client if self.client else "unknown client"  # noqa: UP031 - uvicorn's form
        logger.warning("Request head from %s passed %d bytes before its end; answered 431 and closed.", client,
                       HEAD_LIMIT)
        self.transport.write(_TOO_LARGE)
        self.transport.close()

    def _stop_clock(self) -> None:
        if self.header_deadline is not None:
            self.header_deadline.cancel()
            self.header_deadline = None

    def _headers_late(self) -> None:
        self.header_deadline = None
        if self.transport.is_closing():
            return
        client = "%s:%d" % self.client if self.client else "unknown client"  # noqa: UP031 - uvicorn's form
        if self.began:
            logger.warning("Request headers from %s took longer than %g s; answered 408 and closed.",
                           client, self.header_timeout)
            self.transport.write(_TIMED_OUT)
        else:
            logger.debug("Connection from %s sent nothing in %g s; closed.", client, self.header_timeout)
        self.transport.close()
