"""What the gateway does at each mount's boundary, the same on the WSGI and ASGI side.

- A bare prefix (``/django``) redirects to its slash form (``/django/``), keeping the
  query string, so that relative links on the app's root page resolve under it.
- Cookies an app sets for the whole site (``Path=/``, Flask's and Django's default, or
  no ``Path``) are scoped to the mount's full script name (``Path=/django``, or
  ``/apps/django`` behind a proxy prefix), so one app's cookies are never sent to the
  other. A cookie with any other explicit path is left as the app set it.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import quote

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


class WSGIMount:
    """Apply the mount policy to a WSGI app (``SCRIPT_NAME`` is the mount's path)."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = quote(environ.get("SCRIPT_NAME", "").encode("latin-1"), safe=_SAFE)
        if not environ.get("PATH_INFO"):
            location = slash_location(path, environ.get("QUERY_STRING", ""))
            start_response(
                "308 Permanent Redirect",
                [("Location", location), ("Content-Type", "text/plain"), ("Content-Length", "0")],
            )
            return [b""]

        def start_scoped(status: str, headers: list[tuple[str, str]], exc_info: object = None):  # type: ignore[no-untyped-def]
            for i, (name, value) in enumerate(headers):
                if name.lower() == "set-cookie":
                    headers[i] = (name, scope_cookie(value, path))
            return start_response(status, headers, exc_info)

        return self.app(environ, start_scoped)


class ASGIMount:
    """Apply the mount policy to an ASGI app (``root_path`` is the mount's path)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        root_path: str = scope.get("root_path", "")
        path = quote(root_path, safe=_SAFE)
        if scope["path"] == root_path:
            location = slash_location(path, scope.get("query_string", b"").decode("latin-1"))
            await send(
                {
                    "type": "http.response.start",
                    "status": 308,
                    "headers": [(b"location", location.encode("latin-1")), (b"content-length", b"0")],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return

        async def send_scoped(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    (name, scope_cookie(value.decode("latin-1"), path).encode("latin-1"))
                    if name.lower() == b"set-cookie"
                    else (name, value)
                    for name, value in message.get("headers", ())
                ]
            await send(message)

        await self.app(scope, receive, send_scoped)
