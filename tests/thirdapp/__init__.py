"""Apps the tests mount next to the defaults with ``--mount``."""


async def asgi_app(scope, receive, send):  # type: ignore[no-untyped-def]
    """A bare ASGI app that reports its root_path and path, and keeps a lifespan log."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                STATE.append("startup")
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                STATE.append("shutdown")
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": f"root_path={scope['root_path']}"})
        await send({"type": "websocket.close", "code": 1000})
        return
    body = f"asgi root_path={scope['root_path']} path={scope['path']}".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"set-cookie", b"third=1; Path=/")]})
    await send({"type": "http.response.body", "body": body})


def wsgi_app(environ, start_response):  # type: ignore[no-untyped-def]
    """A bare WSGI app that reports SCRIPT_NAME and PATH_INFO."""
    body = f"wsgi script_name={environ['SCRIPT_NAME']} path_info={environ['PATH_INFO']}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


STATE: list[str] = []
not_callable = 42


def echo_app(environ, start_response):  # type: ignore[no-untyped-def]
    """A bare WSGI app that reports, as JSON, what the server and gateway told it."""
    import json

    keys = ("HTTP_HOST", "SERVER_NAME", "SERVER_PORT", "wsgi.url_scheme", "REMOTE_ADDR", "SCRIPT_NAME",
            "PATH_INFO", "QUERY_STRING", "HTTP_X_REQUEST_ID", "CONTENT_LENGTH", "HTTP_X_THING", "HTTP_COOKIE")
    body = json.dumps({key: environ.get(key) for key in keys}).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    for cookie in environ.get("QUERY_STRING", "").split("&"):
        if cookie.startswith("cookie="):  # a Set-Cookie the test asks for, percent-encoded
            from urllib.parse import unquote

            headers.append(("Set-Cookie", unquote(cookie[7:])))
    start_response("200 OK", headers)
    return [body]


async def failing_asgi_app(scope, receive, send):  # type: ignore[no-untyped-def]
    """An ASGI app that is up but not ready: 503 to everything."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 503, "headers": [(b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})


def lazy_app(environ, start_response):  # type: ignore[no-untyped-def]
    """A WSGI generator: it starts its response (201, with headers) at its first chunk, as PEP 3333 allows."""
    start_response("201 Created", [("Location", "/made"), ("Content-Type", "text/plain")])
    yield b"made "
    yield environ["PATH_INFO"].encode()


async def asgi_items(scope, receive, send):  # type: ignore[no-untyped-def]
    """An ASGI app of the shared URL space: ``/<anything>/<n>`` for n below 10, else 404."""
    number = scope["path"].rsplit("/", 1)[-1]
    found = number.isdigit() and int(number) < 10
    body = f"asgi item {number}".encode() if found else b"not here"
    await send({"type": "http.response.start", "status": 200 if found else 404,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class _Wrapped:
    """An ASGI app behind a plain ``__call__`` (a decorator's wrapper, say): the gateway
    cannot tell it from a WSGI app, so a gateway.toml declares it ``@asgi``."""

    def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
        return asgi_items(scope, receive, send)


wrapped_asgi_items = _Wrapped()


async def asgi_where(scope, receive, send):  # type: ignore[no-untyped-def]
    """An ASGI app of the shared URL space that says how it was reached: ``/<anything>/<n>``
    for n below 10 (else 404), with the body it was sent and whether its scope came from
    a2wsgi (which adds ``wsgi_environ``)."""
    import json

    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    number = scope["path"].rsplit("/", 1)[-1]
    found = number.isdigit() and int(number) < 10
    answer = json.dumps({"app": "asgi_where", "a2wsgi": "wsgi_environ" in scope, "path": scope["path"],
                         "method": scope["method"], "body": body.decode("latin-1")}).encode()
    await send({"type": "http.response.start", "status": 200 if found else 404,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]})
    await send({"type": "http.response.body", "body": answer})


#: What :func:`asgi_candidate` saw of each call: its thread, and whether a2wsgi was in the way.
CANDIDATE_CALLS: list[dict[str, object]] = []


async def asgi_candidate(scope, receive, send):  # type: ignore[no-untyped-def]
    """A shadow comparison's ASGI candidate that answers as ``echo_app`` does for the fields
    it shares, and notes how it was called (:data:`CANDIDATE_CALLS`)."""
    import json
    import threading

    CANDIDATE_CALLS.append({"thread": threading.get_ident(), "a2wsgi": "wsgi_environ" in scope,
                            "path": scope["path"], "root_path": scope["root_path"]})
    answer = json.dumps({"PATH_INFO": scope["path"]}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": answer})


def big_answer(environ, start_response):  # type: ignore[no-untyped-def]
    """A WSGI app whose answer, 2 MiB with its Content-Length, is longer than a shadow
    comparison takes; a server stops iterating once the declared bytes are out."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(2 * 1024 * 1024))])
    yield b"a" * 1024 * 1024
    yield b"b" * 1024 * 1024


def wsgi_where(environ, start_response):  # type: ignore[no-untyped-def]
    """The WSGI twin of :func:`asgi_where`, for the other numbers: n of 10 and more, else 404."""
    import json

    body = environ["wsgi.input"].read()
    path = (environ["SCRIPT_NAME"] + environ["PATH_INFO"]).encode("latin-1").decode("utf-8")
    number = path.rsplit("/", 1)[-1]
    found = number.isdigit() and int(number) >= 10
    answer = json.dumps({"app": "wsgi_where", "a2wsgi": False, "path": path, "method": environ["REQUEST_METHOD"],
                         "body": body.decode("latin-1")}).encode()
    start_response("200 OK" if found else "404 Not Found",
                   [("Content-Type", "application/json"), ("Content-Length", str(len(answer)))])
    return [answer]
