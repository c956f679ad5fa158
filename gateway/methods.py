"""The HTTP methods the gateway names in what it counts and traces.

A client chooses its method: h11 and Granian take any token, so a count or a span name
per method would grow with every one a client makes up. OpenTelemetry's semantic
conventions name the others ``_OTHER`` (``http.request.method``), keeping the original
in ``http.request.method_original``; the gateway's counts do the same.
"""

from __future__ import annotations

#: RFC 9110's methods and PATCH (RFC 5789), as OpenTelemetry knows them.
KNOWN = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})
OTHER = "_OTHER"


def method_label(method: str) -> str:
    """``method`` as counted: one of :data:`KNOWN` in upper case (Werkzeug and Django serve
    ``get`` as GET), else ``_OTHER``."""
    if method in KNOWN:
        return method
    upper = method.upper()
    return upper if upper in KNOWN else OTHER
