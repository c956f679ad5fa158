"""What the gateway does for every request, before any app sees it, on both sides.

- From a trusted proxy (``GATEWAY_TRUSTED_PROXIES``), ``X-Forwarded-For``, ``-Proto``,
  ``-Host``, ``-Port`` and ``-Prefix`` (one hop) replace the client address, scheme, host
  and script root: Werkzeug's ``ProxyFix`` on the WSGI side, the same rewrite of the
  scope on the ASGI side. From anyone else they are left alone.
- ``/healthz`` and ``/readyz`` are answered by :mod:`gateway.health` (no Host check,
  so that probes by address work).
- A ``Host`` that is missing, malformed, repeated or not in ``GATEWAY_ALLOWED_HOSTS``
  gets a 400 before any app runs: one check for every mount.
- Request headers larger than ``GATEWAY_MAX_HEADER_SIZE`` in all get a 431 (uvicorn's
  httptools parser has no limit of its own; a proxy in front should also have one).
- ``TRACE``, ``TRACK`` and ``CONNECT`` get a 405: no app here should answer them.
- A request ID: the client's ``X-Request-ID`` when it is a sane token, else a new one;
  passed on as that header, returned in the response, and in every log record.
- Security headers and the request ID on every response: :mod:`gateway.headers`.
- One access-log line per request (``gateway.access``), when that logger is enabled.

The WSGI and ASGI classes share the policy functions below; only the plumbing differs.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import os
import re
import secrets
import time
from collections.abc import Iterable, Iterator
from typing import Any

from werkzeug.middleware.proxy_fix import ProxyFix

from gateway.config import Config, Network
from gateway.headers import REQUEST_ID, WSGIHeaders, complete_asgi_headers
from gateway.types import Environ, Message, Scope, Send, StartResponse, WSGIApp

__all__ = ["REQUEST_ID"]  # re-exported: the logging filter and the apps read it from here

HEALTH_PATHS = frozenset({"/healthz", "/readyz"})

access_log = logging.getLogger("gateway.access")
_TOKEN = re.compile(r"[A-Za-z0-9._:=+/@-]{1,128}")
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::(\d{1,5}))?")


class _IdSource:
    """Request IDs: a random 64-bit prefix per process and a counter, as 32 hex digits.

    Unique across processes and restarts without a system call per request: the
    ``secrets.token_hex`` this replaced read ``os.urandom`` on the event loop, which
    gives up the GIL and measured 6-7% of a hello request's time on uvicorn.
    """

    def __init__(self) -> None:
        self.reseed()
        os.register_at_fork(after_in_child=self.reseed)

    def reseed(self) -> None:
        self.prefix = secrets.token_hex(8)
        self.counter = itertools.count(1)

    def __call__(self) -> str:
        return f"{self.prefix}{next(self.counter):016x}"


new_request_id = _IdSource()


def request_id(offered: str | None) -> str:
    """Keep the client's request ID when it is a sane token, else make a new one."""
    if offered and _TOKEN.fullmatch(offered):
        return offered
    return new_request_id()


class HostPolicy:
    """Django's ``ALLOWED_HOSTS`` rules: exact names, ``.suffix`` for subdomains, ``*``."""

    def __init__(self, allowed: Iterable[str]) -> None:
        names = [h.lower().rstrip(".") for h in allowed]
        self.any = "*" in names
        self.exact = frozenset(n for n in names if not n.startswith("."))
        self.suffixes = tuple(n[1:] for n in names if n.startswith("."))
        self.seen: dict[str, bool] = {}  # a few Host values come back on every request

    def allows(self, host: str | None) -> bool:
        """True if ``host`` (a ``Host`` header, port optional) is well formed and allowed."""
        if not host:
            return False
        known = self.seen.get(host)
        if known is not None:
            return known
        allowed = self._allows(host)
        if len(self.seen) < 1024:  # bounded: a client sending random hosts fills nothing
            self.seen[host] = allowed
        return allowed

    def _allows(self, host: str) -> bool:
        match = _HOST.fullmatch(host)
        if match is None or (match.group(2) and not 0 < int(match.group(2)) < 65536):
            return False
        if self.any:
            return True
        name = match.group(1).lower().rstrip(".")
        return name in self.exact or any(name == s or name.endswith("." + s) for s in self.suffixes)


def is_trusted(address: str | None, proxies: tuple[Network, ...]) -> bool:
    """True if ``address`` lies in one of the trusted proxy networks."""
    if not address or not proxies:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in proxies)


def log_access(
    client: str, method: str, target: str, protocol: str, status: int, size: int, started: float,
    mount: str,
) -> None:
    """Write one access-log line (the caller checked that the logger is enabled)."""
    duration = (time.perf_counter() - started) * 1000
    access_log.info(
        '%s "%s %s %s" %d %d %.1fms %s',
        client, method, target, protocol, status, size, duration, mount or "-",
        extra={"client": client, "method": method, "path": target, "status": status,
               "bytes": size, "duration_ms": round(duration, 2), "mount": mount or "-"},
    )


REFUSED_METHODS = frozenset({"TRACE", "TRACK", "CONNECT"})
_BAD_HOST = b"Bad Request: the Host header is missing, malformed or not allowed here.\n"
_BAD_METHOD = b"Method Not Allowed.\n"
_BIG_HEADERS = b"Request Header Fields Too Large.\n"
# status line, body, extra headers: the gateway's own refusals, the same on both sides
REFUSALS = {
    "host": ("400 Bad Request", _BAD_HOST, ()),
    "method": ("405 Method Not Allowed", _BAD_METHOD, (("Allow", "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),)),
    "headers": ("431 Request Header Fields Too Large", _BIG_HEADERS, (("Connection", "close"),)),
}


def refusal(method: str, host_ok: bool, header_size: int, limit: int) -> str | None:
    """Name what is wrong with a request before any app sees it, or None."""
    if header_size > limit:
        return "headers"
    if not host_ok:
        return "host"
    if method in REFUSED_METHODS:
        return "method"
    return None


def _refuse(kind: str) -> WSGIApp:
    status, body, extra = REFUSALS[kind]

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                                ("Content-Length", str(len(body))), *extra])
        return [body]

    return app


_REFUSE = {kind: WSGIHeaders(_refuse(kind)) for kind in REFUSALS}


class WSGIFront:
    """The front policy around the WSGI dispatcher."""

    def __init__(self, app: WSGIApp, health: WSGIApp, config: Config) -> None:
        self.app = app
        self.health = WSGIHeaders(health)
        self.hosts = HostPolicy(config.allowed_hosts)
        self.max_header_size = config.max_header_size
        self.proxies = config.trusted_proxies
        self.proxy_fix = ProxyFix(self._serve, x_for=1, x_proto=1, x_host=1, x_port=1, x_prefix=1)

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if self.proxies and is_trusted(environ.get("REMOTE_ADDR"), self.proxies):
            return self.proxy_fix(environ, start_response)
        return self._serve(environ, start_response)

    def _serve(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        started = time.perf_counter()
        rid = request_id(environ.get("HTTP_X_REQUEST_ID"))
        environ["HTTP_X_REQUEST_ID"] = rid
        REQUEST_ID.set(rid)
        if environ.get("PATH_INFO") in HEALTH_PATHS:
            app: WSGIApp = self.health
        else:
            header_size = sum(len(k) + len(v) for k, v in environ.items()
                              if k.startswith("HTTP_") and isinstance(v, str))
            refused = refusal(environ.get("REQUEST_METHOD", ""), self.hosts.allows(environ.get("HTTP_HOST")),
                              header_size, self.max_header_size)
            app = self.app if refused is None else _REFUSE[refused]
        if not access_log.isEnabledFor(logging.INFO):
            return app(environ, start_response)
        base = environ.get("SCRIPT_NAME", "")
        status = [0]

        def start(status_line: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            status[0] = int(status_line[:3])
            return start_response(status_line, headers, exc_info)

        return _Logged(app(environ, start), environ, base, status, started)


class _Logged:
    """The app's response iterable, counted and logged when closed."""

    __slots__ = ("base", "environ", "result", "size", "started", "status")

    def __init__(self, result: Iterable[bytes], environ: Environ, base: str, status: list[int],
                 started: float) -> None:
        self.result = result
        self.environ = environ
        self.base = base
        self.status = status
        self.started = started
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
            e = self.environ
            query = e.get("QUERY_STRING")
            path = e.get("SCRIPT_NAME", "") + e.get("PATH_INFO", "")
            mount = e.get("SCRIPT_NAME", "")[len(self.base) :]
            log_access(
                e.get("REMOTE_ADDR", "-"), e.get("REQUEST_METHOD", "-"), f"{path}?{query}" if query else path,
                e.get("SERVER_PROTOCOL", "-"), self.status[0], self.size, self.started, mount,
            )


def forwarded(scope: Scope, headers: dict[bytes, bytes]) -> Scope:
    """Apply one hop of ``X-Forwarded-*`` headers to an ASGI scope, as ProxyFix does."""
    scope = dict(scope)
    if value := headers.get(b"x-forwarded-for"):
        client = value.decode("latin-1").split(",")[-1].strip()
        scope["client"] = (client, 0)
    if value := headers.get(b"x-forwarded-proto"):
        scheme = value.decode("latin-1").split(",")[-1].strip().lower()
        scope["scheme"] = ("wss" if scheme == "https" else "ws") if scope["type"] == "websocket" else scheme
    raw = list(scope.get("headers", ()))
    if value := headers.get(b"x-forwarded-host"):
        host = value.split(b",")[-1].strip()
        raw = [(n, v) for n, v in raw if n.lower() != b"host"] + [(b"host", host)]
        scope["server"] = (host.decode("latin-1").rsplit(":", 1)[0], (scope.get("server") or (None, None))[1])
    if value := headers.get(b"x-forwarded-port"):
        port = value.split(b",")[-1].strip()
        if port.isdigit() and scope.get("server"):
            scope["server"] = (scope["server"][0], int(port))
    if value := headers.get(b"x-forwarded-prefix"):
        prefix = value.decode("latin-1").split(",")[-1].strip().rstrip("/")
        scope["root_path"] = prefix + scope.get("root_path", "")
        scope["path"] = prefix + scope["path"]
    scope["headers"] = raw
    return scope


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


async def refuse(kind: str, send: Send) -> None:
    """Send the gateway's refusal of ``kind`` (see ``REFUSALS``)."""
    status, body, extra = REFUSALS[kind]
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
               *((n.lower().encode(), v.encode()) for n, v in extra)]
    await send({"type": "http.response.start", "status": int(status[:3]), "headers": complete_asgi_headers(headers)})
    await send({"type": "http.response.body", "body": body})


