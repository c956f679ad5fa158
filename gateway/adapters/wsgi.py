"""The gateway as a WSGI app: ``gateway.wsgi:application``.

A thin adapter: each request's environ becomes a :class:`gateway.core.pipeline.Head`, the
pipeline decides, and the environ is rewritten as the mount must see it (``SCRIPT_NAME``
and ``PATH_INFO`` split on segment boundaries, longest prefix first, exactly as
Werkzeug's ``DispatcherMiddleware`` splits them; a test holds the two equal). Runs
unchanged under gunicorn, Granian's WSGI interface or Werkzeug's development server::

    gunicorn gateway.wsgi:application

ASGI apps (mounts, and the apps of a route rule) are served through a2wsgi on this
side; a rule's fallback order is the pipeline's decision (:class:`gateway.core.pipeline.Chain`),
run here app by app.
"""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

from werkzeug.wsgi import ClosingIterator

from gateway.adapters.boundary import WSGIBoundary, enter, wsgi_reply
from gateway.adapters.health import ReadinessProbe
from gateway.core.config import Config
from gateway.core.mounts import Mount, MountTable
from gateway.core.pipeline import ENVIRON_KEY, Body, Head, Pipeline, Request, valid_port
from gateway.replies import Reply
from gateway.types import Environ, StartResponse, WSGIApp

_NO_FORWARDED: Mapping[str, str] = MappingProxyType({})
_FORWARDED = tuple((name, "HTTP_X_FORWARDED_" + name.upper()) for name in ("for", "proto", "host", "port", "prefix"))


def _header(environ: Environ, name: str) -> str | None:
    """A request header of ``environ`` by its name (``X-User-ID``)."""
    return environ.get("HTTP_" + name.upper().replace("-", "_"))


class WSGIGateway:
    """WSGI app that runs the pipeline and calls the mount it chooses."""

    def __init__(self, table: MountTable, config: Config) -> None:
        self.pipeline = Pipeline(table, config)
        self.apps = {m.prefix: WSGIBoundary(as_wsgi(m), self.pipeline) for m in table.served()}
        # What readiness checks (the table says), ASGI apps through their a2wsgi wrapper.
        self.probed = {name: self.apps[name] if name in self.apps
                       else WSGIBoundary(as_wsgi_app(app, interface), self.pipeline)
                       for name, (app, interface) in table.checked().items()}
        self.readiness = ReadinessProbe(self.pipeline, self.probed, config.ready_timeout)
        self.forwarded = bool(config.trusted_proxies)

    def head(self, environ: Environ) -> Head:
        """Read the request head the pipeline needs from ``environ``."""
        size = 0
        nul = False
        for key in environ:
            # The first character before the slice: this loop over every key of every
            # environ was half of the pipeline's cost, and this form is 2.6x faster.
            if key and key[0] == "H" and key[:5] == "HTTP_":
                value = environ[key]
                size += len(key) - 5 + len(value)  # the header's name and value, as sent
                if "\x00" in value:
                    nul = True
        get = environ.get
        # The two headers PEP 3333 names without HTTP_, each read once.
        length, content_type = get("CONTENT_LENGTH"), get("CONTENT_TYPE")
        if length is not None:
            size += 14 + len(length)  # len("content-length")
            nul = nul or "\x00" in length
            length = length or None
        if content_type is not None:
            size += 12 + len(content_type)  # len("content-type")
            nul = nul or "\x00" in content_type
        forwarded = _NO_FORWARDED
        if self.forwarded:
            forwarded = {}
            for name, key in _FORWARDED:
                if (value := get(key)) is not None:
                    forwarded[name] = value
        # gunicorn takes SERVER_PORT from the client's Host header: "\xb2" (a "²", whose
        # isdigit() is true) or 5,000 digits made int() raise, a 500.
        port = get("SERVER_PORT", "")
        protocol = get("SERVER_PROTOCOL", "HTTP/1.1")
        coding = get("HTTP_TRANSFER_ENCODING")
        # The server joined a header sent several times with commas (PEP 3333 leaves it
        # to the server, as RFC 9110 does): several Host headers are then one malformed one.
        return Head.of(
            method=get("REQUEST_METHOD", "GET"), root_path=get("SCRIPT_NAME", ""), path=get("PATH_INFO", ""),
            query=get("QUERY_STRING", ""), host=get("HTTP_HOST"), scheme=get("wsgi.url_scheme", "http"),
            server=(get("SERVER_NAME", ""), valid_port(port)), client=get("REMOTE_ADDR"),
            request_id=get("HTTP_X_REQUEST_ID"), forwarded=forwarded, header_size=size, header_nul=nul,
            body=Body(length, content_type, coding) if length or content_type or coding is not None else None,
            http_version=protocol[5:] if protocol[:5] == "HTTP/" else "1.1",
            fetch=functools.partial(_header, environ) if self.pipeline.wants_headers else None,
        )

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        started = time.perf_counter()
        request = self.pipeline.begin(self.head(environ), started, environ.get("SERVER_PROTOCOL", "-"))
        decision = request.decision
        logged = self.pipeline.observing
        reply = decision.reply
        if reply is None and decision.render is not None:
            reply = decision.render()  # in the server's thread
        elif reply is None and decision.ready:
            reply = self.pipeline.readiness_for(decision, self.readiness.check())
        if reply is not None:
            if logged:
                request.status, request.size = reply.status, len(reply.body)
                self.pipeline.done(request)
            return wsgi_reply(self.pipeline, reply, decision, start_response)
        assert decision.mount is not None
        enter(environ, request)
        app: WSGIApp = self.apps[decision.mount.prefix]
        if decision.chain is not None:
            app = self.chain
        if not logged:
            return app(environ, start_response)

        logged_result = _Logged(self.pipeline, request, start_response)
        try:
            logged_result.result = app(environ, logged_result.start)
        except BaseException:
            request.status = 500  # the server answers 500
            self.pipeline.done(request)
            raise
        return logged_result


    def chain(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        """Ask the apps of the request's chain in turn (its decision's :class:`Chain`): an
        answer with a status the chain passes over is held back (nothing of it reaches the
        client, its body is closed unread) and the next app is asked, with the same request
        body, read whole first."""
        request: Request = environ[ENVIRON_KEY]
        chain = request.decision.chain
        assert chain is not None
        head = request.head
        spool = None
        if (head.body is not None or head.http_version[0] != "1") and not request.body_read:  # not for a GET
            spool = self.apps[chain.mounts[0].prefix].take_body(environ, request)
            if isinstance(spool, Reply):
                return wsgi_reply(self.pipeline, spool, request.decision, start_response)
        request.body_read = True  # each app's boundary leaves it to this
        passed_over = chain.passed_over
        for mount in chain.mounts[:-1]:
            held: list[str] = []

            def hold(status: str, headers: list[tuple[str, str]], exc_info: Any = None,
                     held: list[str] = held) -> Any:
                if int(status[:3]) in passed_over:
                    held.append(status)
                    return _discard
                return start_response(status, headers, exc_info)

            if spool is not None:
                spool.seek(0)
            result = self.apps[mount.prefix](dict(environ), hold)
            iterator = iter(result)
            first_chunks: list[bytes] = []
            if not held:
                # start_response may come with the first chunk (a generator app).
                for chunk in iterator:
                    first_chunks.append(chunk)
                    break
            if not held:
                rest = itertools.chain(first_chunks, iterator)
                if spool is None:
                    return ClosingIterator(rest, getattr(result, "close", None))
                return ClosingIterator(rest, [getattr(result, "close", _nothing), spool.close])
            if mount.interface == "asgi":
                # a2wsgi runs the ASGI app as its iterable is drawn: closed early, the app's
                # send of the body waits forever, a task left pending on a2wsgi's loop
                # ("Task was destroyed but it is pending!"). Its 404 is drawn to its end.
                for _ in iterator:
                    pass
            close = getattr(result, "close", None)
            if close is not None:
                close()
            self.pipeline.fell_back(chain)
        if spool is not None:
            spool.seek(0)
        result = self.apps[chain.mounts[-1].prefix](environ, start_response)
        return result if spool is None else ClosingIterator(result, spool.close)


def _discard(data: bytes) -> None:
    """The ``write()`` of an answer held back: nothing of it is sent."""


def _nothing() -> None:
    """Nothing to close."""


class _Logged:
    """The app's response iterable, counted and logged when closed; its :meth:`start` is
    the ``start_response`` the app is given, which notes the status (a method, not a
    closure made for each request: callgrind)."""

    __slots__ = ("pipeline", "request", "result", "start_response")

    def __init__(self, pipeline: Pipeline, request: Request, start_response: StartResponse) -> None:
        self.result: Iterable[bytes] = ()
        self.pipeline = pipeline
        self.request = request
        self.start_response = start_response

    def start(self, status_line: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        """Note the status, and start the response."""
        self.request.status = int(status_line[:3])
        return self.start_response(status_line, headers, exc_info)

    def __iter__(self) -> Iterator[bytes]:
        request = self.request
        for chunk in self.result:
            request.size += len(chunk)
            yield chunk

    def close(self) -> None:
        try:
            close = getattr(self.result, "close", None)
            if close is not None:
                close()
        finally:
            self.pipeline.done(self.request)


def as_wsgi(mount: Mount) -> WSGIApp:
    """Return the mount's app as a WSGI app, adapting an ASGI one with a2wsgi."""
    return as_wsgi_app(mount.app, mount.interface)


def as_wsgi_app(app: Any, interface: str) -> WSGIApp:
    """``app`` as a WSGI app: itself, or an ASGI one through a2wsgi (imported only then).
    Only this side needs it: the ASGI side serves ASGI apps natively, and a shadow
    comparison replays each app in its own interface."""
    if interface == "wsgi":
        return app  # type: ignore[no-any-return]
    from a2wsgi import ASGIMiddleware

    wrapped: WSGIApp = ASGIMiddleware(app)  # type: ignore[assignment]
    return wrapped


class StartFirst:
    """A WSGI app whose ``start_response`` is called before its iterable is returned.

    PEP 3333 lets an app call ``start_response`` lazily, as it yields its first chunk: a
    generator view does, and a2wsgi does for every ASGI app it wraps. Granian's WSGI
    interface (2.x) then sends ``200`` and none of the headers, whatever the app said: no
    Location, Set-Cookie or Content-Type reached the client (tests/integration/test_your_apps.py
    found it; emmett-framework/granian#845, closed as not planned). Wrapped in this, an
    app's first chunk is drawn here, which calls ``start_response``, and handed back
    first. ``gateway serve --server granian`` runs Granian's ASGI interface, where the
    gateway's bridge starts every response, and needs none of it; wrap
    ``gateway.wsgi:application`` in it to serve it on Granian's WSGI interface yourself.
    """

    __slots__ = ("app",)

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        result = self.app(environ, start_response)
        chunks = iter(result)
        try:
            first = next(chunks)
        except StopIteration:
            first = b""
        except BaseException:
            if hasattr(result, "close"):
                result.close()
            raise
        return ClosingIterator(itertools.chain((first,), chunks), getattr(result, "close", None))


def create_wsgi_app(table: MountTable, config: Config) -> WSGIGateway:
    """Serve every app of ``table`` behind the pipeline, as one WSGI app configured by ``config``."""
    return WSGIGateway(table, config)
