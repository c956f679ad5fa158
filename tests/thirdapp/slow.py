"""A WSGI app whose view blocks until 64 requests are in it at once (or 20 s pass)."""

import threading

ARRIVED = threading.Barrier(64)


def app(environ, start_response):  # type: ignore[no-untyped-def]
    """Wait at the barrier; answer 200 if all 64 requests met there, else 503."""
    try:
        ARRIVED.wait(timeout=20)
        status, body = "200 OK", b"met"
    except threading.BrokenBarrierError:
        status, body = "503 Service Unavailable", b"not all requests ran at once"
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
