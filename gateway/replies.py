"""The responses the gateway makes itself, as plain data both entry points can send."""

from __future__ import annotations

from typing import NamedTuple


class Reply(NamedTuple):
    """A response the gateway makes itself: status, headers, body."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    #: Why the gateway refused the request (``bad_host``), for the metrics; "" if it did not.
    reason: str = ""


def plain(status: int, text: str, *headers: tuple[str, str], reason: str = "") -> Reply:
    """A ``text/plain`` reply; ``reason``: the refusal's name in the metrics."""
    body = text.encode()
    return Reply(status, (("Content-Type", "text/plain; charset=utf-8"),
                          ("Content-Length", str(len(body))), *headers), body, reason)


def json_reply(status: int, body: bytes) -> Reply:
    """An ``application/json`` reply that no cache keeps (the health answers)."""
    return Reply(status, (("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                          ("Cache-Control", "no-store")), body)


def too_large(limit: int) -> Reply:
    """The 413 for a body over ``limit`` bytes."""
    return plain(413, f"Request body too large: the limit here is {limit} bytes.\n", ("Connection", "close"),
                 reason="body_too_large")


# Connection: close where the server would otherwise go on to read a body nobody wants.
HEADERS_TOO_LARGE = plain(431, "Request Header Fields Too Large.\n", ("Connection", "close"),
                          reason="headers_too_large")
BAD_HOST = plain(400, "Bad Request: the Host header is missing, malformed or not allowed here.\n", reason="bad_host")
BAD_METHOD = plain(405, "Method Not Allowed.\n", ("Allow", "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
                   reason="method_refused")
BAD_LENGTH = plain(400, "Bad Request: invalid Content-Length.\n", ("Connection", "close"), reason="bad_length")
BODY_ENDED_EARLY = plain(400, "Bad Request: the request body ended early.\n", ("Connection", "close"),
                         reason="body_ended_early")
FORM_CUT_SHORT = plain(400, "Bad Request: the multipart form has no closing boundary; it was cut short.\n",
                       reason="form_cut_short")
BODY_TIMED_OUT = plain(408, "Request Timeout: the request body stopped arriving.\n", ("Connection", "close"),
                       reason="body_timeout")
LENGTH_REQUIRED = plain(411, "Length Required: send this request body with a Content-Length.\n",
                        ("Connection", "close"), reason="length_required")
NUL_IN_URL = plain(400, "Bad Request: the URL contains a NUL character (%00).\n", reason="nul_in_url")
NUL_IN_HEADER = plain(400, "Bad Request: a header value contains a NUL character (RFC 9110, 5.5).\n",
                      reason="nul_in_header")
#: A body the server had no room to store (its temporary files' disk is full): the
#: server's failure, not the client's, and likely to pass.
NO_SPACE = plain(503, "Service Unavailable: there is no room to store this request body now; try again later.\n",
                 ("Retry-After", "30"), ("Connection", "close"))
HEALTHY = json_reply(200, b'{"status": "ok"}')


def bad_charset(charset: str) -> Reply:
    """The 415 for a form body in a charset the apps cannot read."""
    shown = charset if charset.isascii() and charset.isprintable() and len(charset) <= 40 else "(unreadable)"
    return plain(415, f"Unsupported Media Type: form data in charset {shown!r} cannot be read here; "
                      "send it as UTF-8.\n", ("Connection", "close"), reason="unreadable_charset")


def verdicts_only(reply: Reply) -> Reply:
    """A ``/readyz`` reply with each check's verdict (``ok`` or ``fail``) and not its text,
    which names what failed and how (a database's host, port and user, say)."""
    import json

    try:
        data = json.loads(reply.body)
        checks = {name: "ok" if value == "ok" else "fail" for name, value in data["checks"].items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return reply
    return json_reply(reply.status, json.dumps({**data, "checks": checks}).encode())
