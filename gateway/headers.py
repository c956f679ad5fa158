"""The headers the gateway adds to every response, applied where headers are handled anyway.

Every response, from any mount or from the gateway itself, gets:

- the security headers ``X-Content-Type-Options: nosniff``, ``Referrer-Policy:
  same-origin``, ``X-Frame-Options: DENY`` (not with a CSP ``frame-ancestors``) and
  ``Cross-Origin-Opener-Policy: same-origin``, unless the app set them itself;
- ``X-Request-ID``, the request's ID (:data:`REQUEST_ID`);
- ``Connection: close`` while the process drains before shutting down (ASGI side).

A WSGI app's headers are completed in the same pass that scopes its cookies
(:class:`gateway.mountpolicy.WSGIMount`); an ASGI app's in its ``send`` wrapper. That
pass happens anyway, so the policy costs no extra walk over the headers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextvars import ContextVar
from typing import Any

from gateway.types import Environ, StartResponse, WSGIApp

REQUEST_ID: ContextVar[str] = ContextVar("request_id", default="-")

SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
    ("X-Frame-Options", "DENY"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
)
_SECURITY = tuple((name.lower(), name, value) for name, value in SECURITY_HEADERS)
_SECURITY_BYTES = tuple((name.lower().encode(), value.encode()) for name, value in SECURITY_HEADERS)


class Drain:
    """Process-wide: whether the gateway is draining before shutdown."""

    active = False


def complete_wsgi_headers(
    headers: list[tuple[str, str]], scope_cookie: Callable[[str], str] | None = None
) -> None:
    """Complete a WSGI response's headers in place (and scope its cookies, if asked)."""
    present = set()
    frame_ancestors = False
    for i, (name, value) in enumerate(headers):
        lower = name.lower()
        present.add(lower)
        if lower == "set-cookie" and scope_cookie is not None:
            headers[i] = (name, scope_cookie(value))
        elif lower == "content-security-policy" and "frame-ancestors" in value:
            frame_ancestors = True
    for lower, name, value in _SECURITY:
        if lower not in present and not (frame_ancestors and lower == "x-frame-options"):
            headers.append((name, value))
    headers.append(("X-Request-ID", REQUEST_ID.get()))
    if Drain.active:
        headers.append(("Connection", "close"))


def complete_asgi_headers(
    headers: list[tuple[bytes, bytes]], scope_cookie: Callable[[bytes], bytes] | None = None
) -> list[tuple[bytes, bytes]]:
    """Return an ASGI response's headers, completed (and its cookies scoped, if asked)."""
    done = []
    present = set()
    frame_ancestors = False
    for name, value in headers:
        lower = bytes(name).lower()
        present.add(lower)
        if lower == b"set-cookie" and scope_cookie is not None:
            value = scope_cookie(bytes(value))
        elif lower == b"content-security-policy" and b"frame-ancestors" in value:
            frame_ancestors = True
        done.append((lower, value))
    for name, value in _SECURITY_BYTES:
        if name not in present and not (frame_ancestors and name == b"x-frame-options"):
            done.append((name, value))
    done.append((b"x-request-id", REQUEST_ID.get().encode("latin-1")))
    if Drain.active:
        done.append((b"connection", b"close"))
    return done


class WSGIHeaders:
    """Complete the headers of a WSGI app the gateway serves itself (pages, health)."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            complete_wsgi_headers(headers)
            return start_response(status, headers, exc_info)

        return self.app(environ, start)
