"""The WSGI bridge alone, driven in-process with no server: for instruction counts.

Each request is one ASGI call of :class:`gateway.adapters.bridge.WSGIBridge` on one event
loop, with a ``receive``/``send`` pair that answers at once, for the Flask hello page
(a small response: the bridge's fast path) or a large one (``--size``). Run it under
callgrind and divide the instructions by the number of requests; a run with ``-n 0`` is
the fixed cost (imports, start-up) to subtract::

    valgrind --tool=callgrind --callgrind-out-file=/dev/null python -m bench.bridge_calls -n 2000
    valgrind --tool=callgrind --callgrind-out-file=/dev/null python -m bench.bridge_calls -n 0
"""

from __future__ import annotations

import argparse
import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from gateway.adapters.bridge import WSGIBridge
from gateway.types import Environ, Message, StartResponse


def big_app(size: int) -> Any:
    """A WSGI app answering ``size`` bytes as a list, with their Content-Length."""
    body = b"x" * size

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))])
        return [body]

    return app


async def serve(bridge: WSGIBridge, count: int) -> int:
    """Call ``bridge`` ``count`` times; return the bytes of body received."""
    received = 0
    pulled = False
    scope = {"type": "http", "http_version": "1.1", "method": "GET", "scheme": "http", "path": "/",
             "raw_path": b"/", "query_string": b"", "root_path": "", "headers": [(b"host", b"localhost")],
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)}

    never = asyncio.Event()

    async def receive() -> Message:
        # The request (no body) at the first call; later calls wait, as a server's do
        # while the client stays.
        nonlocal pulled
        if pulled:
            await never.wait()
        pulled = True
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        nonlocal received
        received += len(message.get("body", b""))

    for _ in range(count):
        pulled = False
        await bridge(dict(scope), receive, send)
    return received


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1000, help="requests")
    parser.add_argument("--size", type=int, default=0, help="a body of this many bytes instead of Flask's hello")
    args = parser.parse_args()
    if args.size:
        app = big_app(args.size)
    else:
        from flask_hello import app
    bridge = WSGIBridge(app, ThreadPoolExecutor(max_workers=4))
    received = asyncio.run(serve(bridge, args.n))
    print(f"{args.n} requests, {received} bytes")


if __name__ == "__main__":
    main()
