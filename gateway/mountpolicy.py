"""What the gateway does at each mount's boundary, the same on the WSGI and ASGI side.

- A bare prefix (``/django``) redirects to its slash form (``/django/``), keeping the
  query string, so that relative links on the app's root page resolve under it.
- A request body larger than the mount's limit is refused with a 413 before it is read
  (``Content-Length`` over the limit), or as soon as it passes the limit (chunked). A
  chunked body within the limit is collected (in memory up to 1 MiB, then in a temporary
  file) and handed on with a ``Content-Length``: Django reads no body without one.
- Every response gets the gateway's headers (``gateway.headers``): security headers the
  app did not set, ``X-Request-ID``, and ``Connection: close`` while draining.
- Cookies an app sets for the whole site (``Path=/``, Flask's and Django's default, or
  no ``Path``) are scoped to the mount's full script name (``Path=/django``, or
  ``/apps/django`` behind a proxy prefix), so one app's cookies are never sent to the
  other. A cookie with any other explicit path is left as the app set it.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote

from werkzeug.wsgi import ClosingIterator

from gateway.headers import complete_asgi_headers, complete_wsgi_headers
from gateway.types import ASGIApp, Environ, Message, Receive, Scope, Send, StartResponse, WSGIApp

# Characters a path may carry unquoted, less ";" and "," that would end a cookie attribute.
_SAFE = "/:@!$&'()*+=-._~"


def scope_cookie(value: str, path: str) -> str:
    """Return the ``Set-Cookie`` value with a site-wide path narrowed to ``path``.

    Leading white space goes too: Django 5.2 writes one, which h11 rejects.
    """
    parts = value.lstrip().split(";")
    for i in range(1, len(parts)):
        name, _, attr = parts[i].strip().partition("=")
        if name.lower() == "path":
            if attr.strip() in {"", "/"}:
                parts[i] = f" Path={path}"
                return ";".join(parts)
            return ";".join(parts)
    return f"{';'.join(parts)}; Path={path}"


def slash_location(path: str, query_string: str) -> str:
    """Return the URL of a mount's root, given its quoted path and query string."""
    return f"{path}/?{query_string}" if query_string else f"{path}/"


SPOOL_IN_MEMORY = 1024 * 1024


def too_large(limit: int) -> bytes:
    """The body of a 413 answer."""
    return f"Request body too large: the limit here is {limit} bytes.\n".encode()


def _plain(start_response: StartResponse, status: str, body: bytes, *extra: tuple[str, str]) -> list[bytes]:
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))), *extra]
    complete_wsgi_headers(headers)
    start_response(status, headers)
    return [body]


class WSGIMount:
    """Apply the mount policy to a WSGI app (``SCRIPT_NAME`` is the mount's path)."""

    def __init__(self, app: WSGIApp, max_body_size: int | None = None) -> None:
        self.app = app
        self.max_body_size = max_body_size
        # SCRIPT_NAME -> its quoted form and cookie scoper (there are few distinct ones)
        self.paths: dict[str, tuple[str, Callable[[str], str]]] = {}

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        script_name = environ.get("SCRIPT_NAME", "")
        known = self.paths.get(script_name)
        if known is None:
            quoted = quote(script_name.encode("latin-1"), safe=_SAFE)
            known = (quoted, functools.partial(scope_cookie, path=quoted))
            if len(self.paths) < 256:
                self.paths[script_name] = known
        path, scoper = known
        if not environ.get("PATH_INFO"):
            location = slash_location(path, environ.get("QUERY_STRING", ""))
            return _plain(start_response, "308 Permanent Redirect", b"", ("Location", location))
        spool = None
        limit = self.max_body_size
        if limit is not None:
            length = environ.get("CONTENT_LENGTH")
            if length:
                if not length.isdigit():
                    return _plain(start_response, "400 Bad Request",
                                  b"Bad Request: invalid Content-Length.\n", ("Connection", "close"))
                if int(length) > limit:
                    # Connection: close, so the server does not read the rest of the body.
                    return _plain(start_response, "413 Content Too Large", too_large(limit),
                                  ("Connection", "close"))
            elif "HTTP_TRANSFER_ENCODING" in environ:
                spool = _collect_body(environ, limit)
                if spool is None:
                    return _plain(start_response, "413 Content Too Large", too_large(limit),
                                  ("Connection", "close"))
                if spool is False:
                    return _plain(start_response, "400 Bad Request",
                                  b"Bad Request: the request body ended early.\n", ("Connection", "close"))

        def start_scoped(status: str, headers: list[tuple[str, str]], exc_info: object = None):  # type: ignore[no-untyped-def]
            complete_wsgi_headers(headers, scoper)
            return start_response(status, headers, exc_info)

        result = self.app(environ, start_scoped)
        # Closing the response also closes the collected body.
        return result if spool is None else ClosingIterator(result, spool.close)


def _collect_body(environ: Environ, limit: int) -> Any:
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


class ASGIMount:
    """Apply the mount policy to an ASGI app (``root_path`` is the mount's path).

    A body longer than the limit without a ``Content-Length`` ends, for the app, in
    ``http.disconnect`` once it passes the limit.
    """

    def __init__(self, app: ASGIApp, max_body_size: int | None = None) -> None:
        self.app = app
        self.max_body_size = max_body_size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        root_path: str = scope.get("root_path", "")
        path = quote(root_path, safe=_SAFE)
        if scope["path"] == root_path:
            location = slash_location(path, scope.get("query_string", b"").decode("latin-1"))
            headers = [(b"location", location.encode("latin-1")), (b"content-length", b"0")]
            await send({"type": "http.response.start", "status": 308, "headers": complete_asgi_headers(headers)})
            await send({"type": "http.response.body", "body": b""})
            return
        limit = self.max_body_size
        if limit is not None:
            for name, value in scope.get("headers", ()):
                if name.lower() == b"content-length" and value.isdigit() and int(value) > limit:
                    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close")]
                    await send({"type": "http.response.start", "status": 413,
                                "headers": complete_asgi_headers(headers)})
                    await send({"type": "http.response.body", "body": too_large(limit)})
                    return
            receive = _limited(receive, limit)

        def scoper(value: bytes) -> bytes:
            return scope_cookie(value.decode("latin-1"), path).encode("latin-1")

        async def send_scoped(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = complete_asgi_headers(list(message.get("headers", ())), scoper)
            await send(message)

        await self.app(scope, receive, send_scoped)


def _limited(receive: Receive, limit: int) -> Receive:
    """Wrap ``receive`` so that a body past ``limit`` ends in ``http.disconnect``."""
    seen = 0

    async def limited() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                return {"type": "http.disconnect"}
        return message

    return limited
