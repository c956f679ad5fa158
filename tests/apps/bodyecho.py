"""A bare WSGI app that answers the body it read, as far as its ``Content-Length`` says."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    data = environ["wsgi.input"].read(length) if length else environ["wsgi.input"].read()
    body = json.dumps({"length": len(data), "body": data.decode("latin-1")}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
