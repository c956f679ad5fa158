"""The gateway as a WSGI app: ``gateway.wsgi:application``.

A thin adapter: each request's environ becomes a :class:`gateway.core.pipeline.Head`, the
pipeline decides, and the environ is rewritten as the mount must see it (``SCRIPT_NAME``
and ``PATH_INFO`` split on segment boundaries, longest prefix first, exactly as
Werkzeug's ``DispatcherMiddleware`` splits them; a test holds the two equal). Runs
unchanged under gunicorn, Granian's WSGI interface or Werkzeug's development server::

    gunicorn gateway.wsgi:application

ASGI mounts are served through a2wsgi on this side.
"""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Iterable, Iterator
from typing import Any

from werkzeug.wsgi import ClosingIterator

from gateway.adapters.boundary import WSGIBoundary, wsgi_reply
from gateway.adapters.health import ReadinessProbe
from gateway.core.config import Config
from gateway.core.mounts import Mount, MountTable
from gateway.core.pipeline import Decision, Head, Pipeline
from gateway.types import Environ, StartResponse, WSGIApp

_UNPREFIXED = (("CONTENT_TYPE", len("content-type")), ("CONTENT_LENGTH", len("content-length")))
_FORWARDED = tuple((name, "HTTP_X_FORWARDED_" + name.upper()) for name in ("for", "proto", "host", "port", "prefix"))


def _header(environ: Environ, name: str) -> str | None:
    """A request header of ``environ`` by its name (``X-User-ID``)."""
    return environ.get("HTTP_" + name.upper().replace("-", "_"))


class WSGIGateway:
    """WSGI app that runs the pipeline and calls the mount it chooses."""

    def __init__(self, table: MountTable, config: Config) -> None:
        self.pipeline = Pipeline(table, config)
        self.apps = {m.prefix: WSGIBoundary(as_wsgi(m), self.pipeline) for m in table.all()}
        # Readiness probes every mount as mounted, ASGI ones through their a2wsgi wrapper,
        # and each app of the route rules once, at its root.
        self.probed = {**{m.prefix: self.apps[m.prefix] for m in table},
                       **{f"app:{name}": WSGIBoundary(app, self.pipeline) for name, app in table.route_apps.items()}}
        self.readiness = ReadinessProbe(self.pipeline, self.probed, config.ready_timeout)
        self.forwarded = bool(config.trusted_proxies)

    def head(self, environ: Environ) -> Head:
        """Read the request head the pipeline needs from ``environ``."""
        size = 0
        for key in environ:
            # The first character before the slice: this loop over every key of every
            # environ was half of the pipeline's cost, and this form is 2.6x faster.
            if key and key[0] == "H" and key[:5] == "HTTP_":
                size += len(key) - 5 + len(environ[key])  # the header's name and value, as sent
        get = environ.get
        for key, name_size in _UNPREFIXED:  # the two headers PEP 3333 names without HTTP_
            if (value := get(key)) is not None:
                size += name_size + len(value)
        forwarded = {}
        if self.forwarded:
            for name, key in _FORWARDED:
                if (value := get(key)) is not None:
                    forwarded[name] = value
        port = get("SERVER_PORT", "")
        return Head(
            get("REQUEST_METHOD", "GET"), get("SCRIPT_NAME", ""), get("PATH_INFO", ""), get("QUERY_STRING", ""),
            get("HTTP_HOST"), get("wsgi.url_scheme", "http"),
            (get("SERVER_NAME", ""), int(port) if port.isdigit() else None), get("REMOTE_ADDR"),
            get("HTTP_X_REQUEST_ID"), forwarded, size, get("CONTENT_LENGTH") or None, get("CONTENT_TYPE"),
            functools.partial(_header, environ) if self.pipeline.wants_headers else None,
        )

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        started = time.perf_counter()
        head = self.head(environ)
        decision = self.pipeline.begin(head, started)
        environ["HTTP_X_REQUEST_ID"] = decision.request_id
        for name, value in decision.trace_headers:  # the gateway's span, as the app's parent
            environ["HTTP_" + name.upper()] = value
        if decision.proxied:
            rewrite(environ, decision)
        logged = self.pipeline.observing
        reply = decision.reply
        if reply is None and decision.ready:
            reply = self.pipeline.readiness_for(decision, self.readiness.check())
        if reply is not None:
            if logged:
                self.pipeline.done(decision, head, environ.get("SERVER_PROTOCOL", "-"), reply.status, len(reply.body))
            return wsgi_reply(self.pipeline, reply, decision, start_response)
        assert decision.mount is not None
        environ["SCRIPT_NAME"] = decision.script_name
        environ["PATH_INFO"] = decision.path_info
        app = self.apps[decision.mount.prefix]
        if not logged:
            return app(environ, start_response)
        status = [0]

        def start(status_line: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            status[0] = int(status_line[:3])
            return start_response(status_line, headers, exc_info)

        protocol = environ.get("SERVER_PROTOCOL", "-")
        try:
            result = app(environ, start)
        except BaseException:
            self.pipeline.done(decision, head, protocol, 500, 0)  # the server answers 500
            raise
        return _Logged(result, self.pipeline, decision, head, protocol, status)


def rewrite(environ: Environ, decision: Decision) -> None:
    """Put what a trusted proxy said into ``environ`` (as Werkzeug's ``ProxyFix`` would)."""
    if decision.host is not None:
        environ["HTTP_HOST"] = decision.host
    environ["SERVER_NAME"], port = decision.server
    environ["SERVER_PORT"] = str(port) if port is not None else ""
    environ["wsgi.url_scheme"] = decision.scheme
    if decision.client is not None:
        environ["REMOTE_ADDR"] = decision.client


class _Logged:
    """The app's response iterable, counted and logged when closed."""

    __slots__ = ("decision", "head", "pipeline", "protocol", "result", "size", "status")

    def __init__(self, result: Iterable[bytes], pipeline: Pipeline, decision: Decision, head: Head,
                 protocol: str, status: list[int]) -> None:
        self.result = result
        self.pipeline = pipeline
        self.decision = decision
        self.head = head
        self.protocol = protocol
        self.status = status
        self.size = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.result:
            self.size += len(chunk)
            yield chunk

    def close(self) -> None:
        try:
            close = getattr(self.result, "close", None)
            if close is not None:
                close()
        finally:
            self.pipeline.done(self.decision, self.head, self.protocol, self.status[0], self.size)


def as_wsgi(mount: Mount) -> WSGIApp:
    """Return the mount's app as a WSGI app, adapting an ASGI one with a2wsgi."""
    if mount.interface == "wsgi":
        app: WSGIApp = mount.app
        return app
    from a2wsgi import ASGIMiddleware

    return ASGIMiddleware(mount.app)  # type: ignore[return-value]


class StartFirst:
    """A WSGI app whose ``start_response`` is called before its iterable is returned.

    PEP 3333 lets an app call ``start_response`` lazily, as it yields its first chunk: a
    generator view does, and a2wsgi does for every ASGI app it wraps. Granian's WSGI
    interface (2.x) then sends ``200`` and none of the headers, whatever the app said: no
    Location, Set-Cookie or Content-Type reached the client (tests/test_your_apps.py
    found it; emmett-framework/granian#845, closed as not planned). So under Granian the
    gateway's first chunk is drawn here, which calls ``start_response``, and handed back
    first (:func:`gateway.serve.runners.load_wsgi_gateway`).
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
