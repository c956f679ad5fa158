"""A Flask app whose views echo, block, fail and stream, for the hardening tests.

    gateway serve --mount /faults=tests.apps.flaskfaults:app
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Iterator
from typing import Any

from flask import Flask, Response, jsonify, request

from tests.apps import record

# Not from_prefixed_env(): the FLASK_* variables the gateway sets are flask_hello's.
app = Flask(__name__)


@app.post("/echo")
def echo() -> Any:
    """Answer the length and SHA-256 of the request body, read as a stream."""
    record("flask-echo-called")
    digest = hashlib.sha256()
    length = 0
    stream = request.stream
    while chunk := stream.read(65536):
        digest.update(chunk)
        length += len(chunk)
    return jsonify(length=length, sha256=digest.hexdigest())


@app.post("/form")
def form() -> Any:
    """Answer the number of form fields (and files) parsed from the body."""
    return jsonify(fields=len(request.form), files=len(request.files))


@app.get("/slow")
def slow() -> Any:
    """Sleep ``?seconds=`` (default 2) and report when the request ran."""
    start = time.monotonic()
    record("flask-slow-started")
    time.sleep(float(request.args.get("seconds", "2")))
    return jsonify(start=start, end=time.monotonic())


@app.get("/boom")
def boom() -> Any:
    """Fail with an unhandled exception."""
    raise RuntimeError("boom from the Flask test view")


@app.get("/stream")
def stream() -> Response:
    """Stream ``?chunks=`` chunks of 64 KiB, recording when the generator stops."""
    tag = request.args.get("tag", "-")
    count = int(request.args.get("chunks", "1000"))
    delay = float(request.args.get("delay", "0.01"))

    def generate() -> Iterator[bytes]:
        sent = 0
        try:
            for _ in range(count):
                yield b"x" * 65536
                sent += 1
                time.sleep(delay)
        finally:
            record(f"flask-stream-stopped {tag} sent={sent} of={count}")

    return Response(generate(), mimetype="application/octet-stream")


_LARGE: dict[int, bytes] = {}


@app.get("/large")
def large() -> Response:
    """Answer ``?size=`` bytes (default 5 MiB, at most 64 MiB) with their Content-Length."""
    size = min(int(request.args.get("size", str(5 * 1024 * 1024))), 64 * 1024 * 1024)
    # Made once per size: the test measures the gateway's memory, not this view's.
    body = _LARGE.get(size) or _LARGE.setdefault(size, b"x" * size)
    return Response(body, mimetype="application/octet-stream")


@app.get("/own-headers")
def own_headers() -> Response:
    """Set the security headers the gateway would add, with values of our own."""
    response = Response("own headers", mimetype="text/plain")
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cross-Origin-Opener-Policy"] = "unsafe-none"
    return response


class RecordClose:
    """WSGI middleware that records when the server closes each response iterable."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        result = self.app(environ, start_response)
        tag = f"{environ.get('PATH_INFO', '')}?{environ.get('QUERY_STRING', '')}"
        return _Closing(result, tag)


class _Closing:
    def __init__(self, result: Iterable[bytes], tag: str) -> None:
        self.result = result
        self.tag = tag

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.result)

    def close(self) -> None:
        try:
            close = getattr(self.result, "close", None)
            if close is not None:
                close()
        finally:
            record(f"flask-closed {self.tag}")


app.wsgi_app = RecordClose(app.wsgi_app)  # type: ignore[method-assign]
