"""Property tests: generated paths, methods, headers, query strings and bodies, sent
through both in-process entry points (``wsgi_app`` and ``asgi_app``).

Whatever comes in, the gateway never answers with a 5xx, and a request lands in the app
its prefix names, by Werkzeug's ``DispatcherMiddleware`` rules (segment boundaries:
``/flask/...`` is Flask, ``/flaskx`` is nobody's): the bare prefix redirects to its
slash form, and a path no mount claims gets the gateway's own page. Which app ran is
told by each framework's ``request_started`` signal.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, quote_from_bytes

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

MOUNTS = {"/flask": "flask", "/django": "django"}
HEALTH = {"/healthz", "/readyz"}  # the gateway's own, which probe the apps
STANDARD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
ODD = ["TRACE", "PROPFIND", "FOO", "M-SEARCH"]
# What a gateway may answer for a request before any app sees it.
REFUSALS = {400, 405, 413, 415, 431, 501}

SEGMENTS = st.one_of(
    st.sampled_from(["flask", "django", "flaskx", "FLASK", "djangoadmin", "static", "admin", "login",
                     "style.css", "django_hello", "..", ".", "", "%2e%2e", "%2F", "healthz", "readyz",
                     "test", "\\", "\x00", "é"]),
    st.text(max_size=8),
)
PATHS = st.one_of(
    st.lists(SEGMENTS, max_size=5).map(lambda parts: "/" + "/".join(parts)),
    # Half of the paths start with a mount's prefix, so that both apps see plenty.
    st.tuples(st.sampled_from(sorted(MOUNTS)), st.lists(SEGMENTS, max_size=4)).map(
        lambda t: t[0] + ("/" + "/".join(t[1]) if t[1] else "")
    ),
)
QUERIES = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="#"),
            max_size=40),
    st.binary(max_size=24).map(lambda b: quote_from_bytes(b, safe="=&")),
    st.lists(st.tuples(st.sampled_from(["name", "next", "q", "a"]), st.text(max_size=10)), max_size=4)
    .map(lambda pairs: "&".join(f"{quote(k)}={quote(v)}" for k, v in pairs)),
)
HEADER_NAMES = st.one_of(
    st.sampled_from(["Cookie", "Accept", "Accept-Encoding", "Content-Type", "Range", "If-None-Match",
                     "If-Modified-Since", "Origin", "Referer", "Authorization", "X-Request-ID",
                     "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Prefix", "X-Forwarded-Proto",
                     "Upgrade", "Expect"]),
    st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,15}", fullmatch=True),
).filter(lambda n: n.lower() not in {"host", "content-length", "transfer-encoding", "connection"})
HEADER_VALUES = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40).map(
    str.strip
)
HEADERS = st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=6)
BODIES = st.one_of(st.just(b""), st.binary(max_size=64))

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def expected_owner(path: str) -> str:
    """Who answers ``path``, by the dispatcher's rules: a mount, its redirect, or the gateway."""
    for prefix, name in MOUNTS.items():
        if path == prefix:
            return "redirect"
        if path.startswith(prefix + "/"):
            return name
    return "gateway"


class Owners:
    """Record which framework started handling each request (from any thread)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[str] = []

    def flask(self, sender: Any, **extra: Any) -> None:
        with self.lock:
            self.seen.append("flask")

    def django(self, sender: Any, **extra: Any) -> None:
        with self.lock:
            self.seen.append("django")

    def take(self) -> list[str]:
        with self.lock:
            seen, self.seen = self.seen, []
        return seen


@pytest.fixture(scope="module")
def owners(table: Any) -> Iterator[Owners]:  # the table fixture imports and configures the apps
    import flask
    from django.core import signals

    import flask_hello

    recorder = Owners()
    flask.request_started.connect(recorder.flask, flask_hello.app, weak=False)
    signals.request_started.connect(recorder.django, weak=False, dispatch_uid="test_fuzz")
    yield recorder
    flask.request_started.disconnect(recorder.flask, flask_hello.app)
    signals.request_started.disconnect(dispatch_uid="test_fuzz")


def call_wsgi(app: Any, method: str, path: str, query: str, headers: list[tuple[str, str]],
              body: bytes) -> int:
    """Call the WSGI gateway with an environ as a server would build it; return the status."""
    import io

    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": path.encode("utf-8").decode("latin-1"),
        "QUERY_STRING": query,
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "localhost",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    if body:
        environ["CONTENT_LENGTH"] = str(len(body))
    for name, value in headers:
        key = name.upper().replace("-", "_")
        key = key if key == "CONTENT_TYPE" else "HTTP_" + key
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    statuses: list[str] = []

    def start_response(status: str, response_headers: Any, exc_info: Any = None) -> Any:
        statuses.append(status)
        return lambda data: None

    result = app(environ, start_response)
    try:
        for _ in result:
            pass
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return int(statuses[-1][:3])


def call_asgi(app: Any, method: str, path: str, query: str, headers: list[tuple[str, str]],
              body: bytes) -> int:
    """Call the ASGI gateway with a scope as uvicorn would build it; return the status."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": quote(path, safe="/").encode("ascii"),
        "root_path": "",
        "query_string": query.encode("latin-1"),
        "headers": [(b"host", b"localhost"),
                    *((n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in headers)]
        + ([(b"content-length", str(len(body)).encode())] if body else []),
        "client": ("127.0.0.1", 50000),
        "server": ("localhost", 80),
        "state": {},
    }
    statuses: list[int] = []

    async def run() -> None:
        done = asyncio.Event()
        first = True

        async def receive() -> dict[str, Any]:
            nonlocal first
            if first:
                first = False
                return {"type": "http.request", "body": body, "more_body": False}
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                done.set()

        await asyncio.wait_for(app(scope, receive, send), timeout=20)

    asyncio.run(run())
    return statuses[-1]


ENTRY_POINTS = {"wsgi": (call_wsgi, "wsgi_app"), "asgi": (call_asgi, "asgi_app")}


@pytest.fixture(scope="module", params=sorted(ENTRY_POINTS))
def gateway(request: pytest.FixtureRequest) -> Any:
    """Each entry point in turn, as a function (method, path, query, headers, body) -> status."""
    call, fixture = ENTRY_POINTS[request.param]
    app = request.getfixturevalue(fixture)
    return lambda *args: call(app, *args)


@pytest.mark.parametrize(
    ("path", "owner"),
    [("/flask/", ["flask"]), ("/flask/nope", ["flask"]), ("/django/", ["django"]),
     ("/django/admin/login/", ["django"]), ("/flask", []), ("/flaskx", []), ("/", []),
     ("//flask/", []), ("/FLASK/", [])],
)
def test_owner_detection(gateway: Any, owners: Owners, path: str, owner: list[str]) -> None:
    # The examples the properties rely on: the signals do tell which app ran.
    owners.take()
    assert gateway("GET", path, "", [], b"") < 500
    assert owners.take() == owner


@FUZZ
@given(method=st.sampled_from(STANDARD + ODD), path=PATHS, query=QUERIES, headers=HEADERS, body=BODIES)
def test_never_a_server_error(gateway: Any, owners: Owners, method: str, path: str, query: str,
                              headers: list[tuple[str, str]], body: bytes) -> None:
    status = gateway(method, path, query, headers, body)
    owners.take()
    assert status < 500, f"{method} {path!r}?{query!r} {headers!r} -> {status}"


@FUZZ
@given(method=st.sampled_from(STANDARD), path=PATHS, query=QUERIES, headers=HEADERS, body=BODIES)
def test_request_lands_in_the_app_its_prefix_names(
    gateway: Any, owners: Owners, method: str, path: str, query: str,
    headers: list[tuple[str, str]], body: bytes,
) -> None:
    owners.take()
    status = gateway(method, path, query, headers, body)
    seen = owners.take()
    expected = expected_owner(path)
    where = f"{method} {path!r}?{query!r} {headers!r} -> {status}, ran {seen}"
    if path in HEALTH:
        return  # the gateway's health checks probe the apps themselves
    if expected == "redirect":
        assert seen == [] and (status == 308 or status in REFUSALS), where
    elif expected == "gateway":
        assert seen == [], where
    else:
        assert seen in ([expected], []), where
        assert seen == [expected] or status in REFUSALS, where


# -- Content types and charsets, on forms both apps parse ---------------------------------

CHARSETS = st.one_of(
    st.sampled_from(["utf-8", "UTF-8", "utf-16", "utf-16-le", "utf-32", "utf-7", "latin-1", "ascii", "cp500",
                     "shift_jis", "gb18030", "iso-2022-jp", "base64", "rot13", "hex", "zlib", "", "nope",
                     '"utf-8"', "utf-8;x"]),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_categories=("Cc",)),
            max_size=12),
)
MEDIA_TYPES = st.sampled_from(["application/x-www-form-urlencoded", "multipart/form-data", "text/plain",
                               "application/json", "MULTIPART/FORM-DATA", "application/x-www-form-urlencoded "])
CHARSET_PARAMS = st.lists(st.tuples(st.sampled_from(["charset=", "charset*=utf-8''", 'x="a;charset=', "CHARSET="]),
                                     CHARSETS), max_size=3).map(
    lambda params: "".join(f"; {key}{value}" + ('"' if key.endswith('"a;charset=') else "") for key, value in params))
CONTENT_TYPES = st.tuples(MEDIA_TYPES, CHARSET_PARAMS, st.one_of(st.none(), CHARSETS)).map(
    lambda t: t[0] + t[1] + (f"; boundary={t[2]}" if t[2] else ""))
FORM_BODIES = st.one_of(
    st.binary(max_size=80),
    st.tuples(st.text(max_size=30), st.sampled_from(["utf-8", "utf-16", "latin-1"])).map(
        lambda t: t[0].encode(t[1], "replace")),
    st.just("csrfmiddlewaretoken=x&username=a&password=b".encode("utf-16")),
    st.just(b"--xyz\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nb\r\n--xyz--\r\n"),
)
TOKEN = "k" * 32


@pytest.fixture(scope="module")
def form_gateway(request: pytest.FixtureRequest, table: Any) -> Iterator[Any]:
    """Each entry point over the default mounts plus a Flask app that parses forms."""
    from gateway.adapters.asgi import create_asgi_app
    from gateway.adapters.wsgi import create_wsgi_app
    from gateway.core.config import Config
    from gateway.core.mounts import MountTable

    config = Config.from_env({})
    forms = MountTable([*table, *MountTable.from_specs(["/faults=tests.apps.flaskfaults:app"], defaults=False)])
    wsgi, asgi = create_wsgi_app(forms, config), create_asgi_app(forms, config, threads=4)
    yield {"wsgi": lambda *args: call_wsgi(wsgi, *args), "asgi": lambda *args: call_asgi(asgi, *args)}
    asgi.executor.shutdown(wait=True)


@FUZZ
@given(entry=st.sampled_from(["wsgi", "asgi"]), path=st.sampled_from(["/django/admin/login/", "/faults/form"]),
       content_type=CONTENT_TYPES, body=FORM_BODIES)
def test_no_content_type_or_charset_is_a_server_error(form_gateway: Any, entry: str, path: str, content_type: str,
                                                      body: bytes) -> None:
    headers = [("Content-Type", content_type), ("Cookie", f"csrftoken={TOKEN}"), ("X-CSRFToken", TOKEN),
               ("Referer", "http://localhost/django/admin/login/")]
    status = form_gateway[entry]("POST", path, "", headers, body)
    assert status < 500, f"{entry} POST {path} {content_type!r} {body!r} -> {status}"


@pytest.mark.parametrize("entry", ["wsgi", "asgi"])
def test_the_admin_login_in_utf16_is_a_415_not_a_500(form_gateway: Any, entry: str) -> None:
    body = f"csrfmiddlewaretoken={TOKEN}&username=a&password=b".encode("utf-16")
    headers = [("Content-Type", "application/x-www-form-urlencoded; charset=utf-16"),
               ("Cookie", f"csrftoken={TOKEN}")]
    assert form_gateway[entry]("POST", "/django/admin/login/", "", headers, body) == 415


# -- Headers and cookies as bytes, with one sign-in on -------------------------------------

#: Any byte a server passes on in a header value: all but CR and LF (which end the line;
#: servers refuse them), NUL and bytes that are not UTF-8 included.
RAW_VALUES = st.binary(max_size=40).filter(lambda b: b"\r" not in b and b"\n" not in b).map(
    lambda b: b.decode("latin-1"))
COOKIE_NAMES = st.sampled_from(["sessionid", "csrftoken", "gateway_canary", "session", "messages", "a b", ""])
COOKIES = st.lists(st.tuples(COOKIE_NAMES, RAW_VALUES), min_size=1, max_size=4).map(
    lambda pairs: "; ".join(f"{name}={value}" for name, value in pairs))
RAW_HEADERS = st.lists(st.tuples(HEADER_NAMES, RAW_VALUES), max_size=4)
SIGNED_PATHS = st.sampled_from(["/flask/", "/flask/account", "/django/", "/django/admin/", "/django/admin/login/",
                                "/nowhere", "/healthz"])


@pytest.fixture(scope="module", params=sorted(ENTRY_POINTS))
def signed_gateway(request: pytest.FixtureRequest, table: Any) -> Iterator[Any]:
    """Each entry point over the demo apps with one sign-in on (the Flask app reads Django's
    session, so cookies reach the database through both frameworks)."""
    import secrets
    from dataclasses import replace

    import flask_hello
    from gateway.adapters.asgi import create_asgi_app
    from gateway.adapters.wsgi import create_wsgi_app
    from gateway.core.config import Config
    from gateway.core.mounts import Mount, MountTable

    flask_app = flask_hello.create_app({"SHARED_SIGNIN": True, "SECRET_KEY": secrets.token_hex(16)})
    mounts = [Mount("/flask", "flask_hello:create_app", "wsgi", flask_app), *(m for m in table if m.prefix != "/flask")]
    config = replace(Config.from_env({}), shared_signin="sessionid")
    if request.param == "wsgi":
        yield lambda *args: call_wsgi(create_wsgi_app(MountTable(mounts), config), *args)
        return
    app = create_asgi_app(MountTable(mounts), config, threads=8)
    yield lambda *args: call_asgi(app, *args)
    app.executor.shutdown(wait=True)


@FUZZ
@given(method=st.sampled_from(["GET", "POST", "HEAD"]), path=SIGNED_PATHS, cookie=COOKIES, headers=RAW_HEADERS,
       body=BODIES)
def test_any_bytes_in_headers_and_cookies_are_never_a_server_error(
        signed_gateway: Any, method: str, path: str, cookie: str, headers: list[tuple[str, str]], body: bytes) -> None:
    """NUL, bytes that are not UTF-8 and control characters in any header and in the cookies
    the apps and the gateway read (Django's session and CSRF cookies, the canary's): a 4xx
    or an answer, never a 5xx, and nothing logged at ERROR (a traceback)."""
    import logging

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.ERROR:
                records.append(record)

    keep = Keep()
    root = logging.getLogger()
    root.addHandler(keep)
    try:
        status = signed_gateway(method, path, "", [("Cookie", cookie), *headers], body)
    finally:
        root.removeHandler(keep)
    assert status < 500, f"{method} {path} Cookie: {cookie!r} {headers!r} -> {status}"
    assert not records, [r.getMessage() for r in records]
