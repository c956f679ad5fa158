"""Shadow comparison (:mod:`gateway.migration.shadow`): what mutation testing found that no
other test held (docs/testing.md): a replay's answer read from each interface, the scope an
ASGI candidate is given, the tokens and positions compared, the outcome and what it says,
the log line of a difference, the pool's rest, the capture of the primary's answer, and
``gateway diff``'s summary.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import logging
import re
import threading
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.migration import shadow
from gateway.migration.shadow import (
    MAX_BODY,
    MAX_STUCK,
    Capture,
    ReplayTimedOut,
    Shadower,
    TooLarge,
    call,
    call_asgi,
    carries_credentials,
    changed,
    compare,
    fresh,
    scope_of,
    shown,
    summarise,
    tokens,
    unified,
)

RULE = "~/x"


class Closing:
    """A response iterable that notes its ``close()``."""

    def __init__(self, chunks: list[bytes], closed: list[str]) -> None:
        self.chunks, self.closed = chunks, closed

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.chunks)

    def close(self) -> None:
        self.closed.append("closed")


def wsgi(status: str = "200 OK", headers: list[tuple[str, str]] | None = None, chunks: list[bytes] | None = None,
         closed: list[str] | None = None, seen: list[dict[str, Any]] | None = None) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        if seen is not None:
            seen.append(environ)
        start_response(status, headers if headers is not None else [("Content-Type", "text/plain")])
        return Closing(chunks if chunks is not None else [b"hello"], closed if closed is not None else [])
    return app


ENVIRON = {"REQUEST_METHOD": "GET", "PATH_INFO": "/x", "QUERY_STRING": "q=1", "wsgi.input": io.BytesIO(b"body"),
           "wsgi.errors": io.StringIO()}


# -- One replay --------------------------------------------------------------------------------


def test_a_wsgi_replay_reads_the_status_headers_and_body_and_closes_it() -> None:
    closed: list[str] = []
    seen: list[dict[str, Any]] = []
    app = wsgi("404 Not Found", [("X-Thing", "A"), ("Content-Type", "text/plain")], [b"no", b"pe"], closed, seen)
    assert call(app, {**ENVIRON, "werkzeug.request": object()}) == (404, {"x-thing": "A", "content-type": "text/plain"},
                                                                    b"nope")
    assert closed == ["closed"]
    assert seen[0]["wsgi.input"].read() == b"" and "werkzeug.request" not in seen[0]


def test_a_wsgi_replay_over_the_limit_raises_and_is_closed() -> None:
    closed: list[str] = []
    with pytest.raises(TooLarge):
        call(wsgi(chunks=[b"x" * MAX_BODY, b"y"], closed=closed), ENVIRON)
    assert closed == ["closed"]
    assert call(wsgi(chunks=[b"x" * MAX_BODY]), ENVIRON)[2] == b"x" * MAX_BODY  # the limit itself is compared


def test_a_wsgi_app_that_never_starts_answers_status_0() -> None:
    assert call(lambda environ, start_response: [], ENVIRON) == (0, {}, b"")


def test_an_asgi_replay_reads_every_body_message_and_the_client_stays_until_the_end() -> None:
    received: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        received.append(await receive())
        await send({"type": "http.response.start", "status": 201,
                    "headers": [(b"Content-Type", b"text/plain"), (b"X-Caf\xe9", b"\xe9")]})
        await send({"type": "http.response.body", "body": b"one ", "more_body": True})
        await send({"type": "http.response.body", "body": b"two"})
        received.append(await receive())

    assert call_asgi(app, ENVIRON) == (201, {"content-type": "text/plain", "x-caf\xe9": "\xe9"}, b"one two")
    assert received == [{"type": "http.request", "body": b"", "more_body": False}, {"type": "http.disconnect"}]


def test_an_asgi_replay_over_the_limit_raises() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"x" * MAX_BODY, "more_body": True})
        await send({"type": "http.response.body", "body": b"y"})

    with pytest.raises(TooLarge):
        call_asgi(app, ENVIRON)


def test_an_asgi_app_that_sends_nothing_answers_status_0() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        return None

    assert call_asgi(app, ENVIRON) == (0, {}, b"")


def test_the_scope_of_a_replay_is_what_a_server_gives_an_asgi_app() -> None:
    environ = {"REQUEST_METHOD": "HEAD", "SCRIPT_NAME": "/app", "PATH_INFO": "/caf\xc3\xa9", "QUERY_STRING": "q=\xe9",
               "HTTP_X_THING": "a", "CONTENT_TYPE": "text/plain", "CONTENT_LENGTH": "0", "SERVER_NAME": "example.org",
               "SERVER_PORT": "8080", "SERVER_PROTOCOL": "HTTP/1.0", "REMOTE_ADDR": "10.0.0.1",
               "REMOTE_PORT": "5555", "wsgi.url_scheme": "https", "wsgi.input": io.BytesIO()}
    assert scope_of(environ) == {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.0", "method": "HEAD", "scheme": "https",
        "path": "/app/caf\xe9", "query_string": b"q=\xe9", "root_path": "/app",
        "headers": [(b"x-thing", b"a"), (b"content-type", b"text/plain"), (b"content-length", b"0")],
        "server": ("example.org", 8080), "client": ("10.0.0.1", 5555)}


def test_a_sparse_environ_gives_the_scopes_defaults() -> None:
    assert scope_of({"SERVER_PORT": "http", "SERVER_PROTOCOL": "HTTP", "REMOTE_ADDR": "10.0.0.1"}) == {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": "", "query_string": b"", "root_path": "", "headers": [], "server": ("localhost", None),
        "client": ("10.0.0.1", 0)}
    assert scope_of({})["client"] is None and scope_of({})["server"] == ("localhost", None)


def test_a_replays_environ_has_no_body_and_credentials_only_if_the_rule_says() -> None:
    errors = io.StringIO()
    environ = {**ENVIRON, "wsgi.errors": errors, "HTTP_COOKIE": "a=1", "HTTP_AUTHORIZATION": "Basic x",
               "HTTP_PROXY_AUTHORIZATION": "Basic y", "werkzeug.request": object(), "HTTP_ACCEPT": "*/*"}
    bare = fresh(environ, credentials=False)
    assert sorted(bare) == ["HTTP_ACCEPT", "PATH_INFO", "QUERY_STRING", "REQUEST_METHOD", "wsgi.errors", "wsgi.input"]
    assert bare["wsgi.errors"] is errors and bare["wsgi.input"].read() == b""
    assert fresh(environ)["HTTP_COOKIE"] == "a=1"


# -- Comparing -------------------------------------------------------------------------------------


def test_tokens_of_json_html_and_text() -> None:
    assert tokens("application/json", b'{"a": {"b": [1, "x"]}, "c": null}') == ['$.a.b[0]=1', '$.a.b[1]="x"',
                                                                                  "$.c=null"]
    assert tokens("application/json", b"not json {") == ["not", "json", "{"]
    assert tokens("text/html", b'<a href="/x" class>Hi  there</a>') == ["<a>", "@class=", "@href=/x", "Hi", "there",
                                                                        "</a>"]
    assert tokens("text/plain", b"one\n two \xff") == ["one", "two", "\ufffd"]
    assert tokens("text/plain", b"<a>x</a>") == ["<a>x</a>"]


@pytest.mark.parametrize(("a", "b", "positions"), [
    pytest.param("abc", "abc", set(), id="equal"),
    pytest.param("abc", "axc", {1}, id="replaced"),
    pytest.param("abc", "ac", {1}, id="deleted"),
    pytest.param("abc", "abxc", {1, 2}, id="inserted-marks-both-neighbours"),
    pytest.param("abc", "xabc", {0}, id="inserted-first"),
])
def test_changed_positions(a: str, b: str, positions: set[int]) -> None:
    assert changed(list(a), list(b)) == positions


TEXT = {"content-type": "text/plain"}


@pytest.mark.parametrize(("primary", "secondary", "candidate", "outcome"), [
    pytest.param((200, TEXT, b"a b"), (200, TEXT, b"a b"), (200, TEXT, b"a b"), ("equal", []), id="equal"),
    pytest.param((200, TEXT, b"a b"), (200, TEXT, b"a b"), (500, TEXT, b"a b"), ("different", ["status 200 != 500"]),
                 id="status"),
    pytest.param((200, TEXT, b"a b"), (503, TEXT, b"a b"), (500, TEXT, b"a b"), ("noise", []), id="status-noise"),
    pytest.param((200, {**TEXT, "etag": "1"}, b"a"), (200, {**TEXT, "etag": "1"}, b"a"),
                 (200, {**TEXT, "etag": "2"}, b"a"), ("different", ["header etag: '1' != '2'"]), id="header"),
    pytest.param((200, {**TEXT, "etag": "1"}, b"a"), (200, {**TEXT, "etag": "3"}, b"a"),
                 (200, {**TEXT, "etag": "2"}, b"a"), ("noise", []), id="header-noise"),
    pytest.param((200, TEXT, b"a t1 b c"), (200, TEXT, b"a t2 b c"), (200, TEXT, b"a t3 b x"),
                 ("different", ["body: 1 token(s) differ"]), id="body-beyond-the-noise"),
    pytest.param((200, TEXT, b"a t1 b"), (200, TEXT, b"a t2 b"), (200, TEXT, b"a t3 b"), ("noise", []),
                 id="body-noise"),
])
def test_compare_says_equal_noise_or_what_differs(primary: Any, secondary: Any, candidate: Any,
                                                  outcome: tuple[str, list[str]]) -> None:
    assert compare(primary, secondary, candidate, ["ETag"]) == outcome


def test_the_candidates_own_content_type_reads_its_body() -> None:
    json_type = {"content-type": "application/json"}
    assert compare((200, json_type, b'{"a": 1, "b": 2}'), (200, json_type, b'{"a": 1, "b": 2}'),
                   (200, json_type, b'{"b": 2, "a": 1}'), []) == ("equal", [])
    assert compare((200, json_type, b'{"a": 1}'), (200, {}, b'{"a": 1}'), (200, {}, b'{"a": 1}'), [])[0] != "equal"


def test_unified_shows_two_tokens_of_context() -> None:
    primary, candidate = (200, TEXT, b"a b c d e f"), (200, {}, b"a b c X e f")
    assert unified(primary, candidate) == "--- primary\n+++ candidate\n@@ -2,5 +2,5 @@\n b\n c\n-d\n+X\n e\n f"


# -- The pool ----------------------------------------------------------------------------------------


def test_counts_reach_the_listener_and_copies_are_copies() -> None:
    pool = Shadower(None)
    told: list[tuple[Any, ...]] = []
    pool.listener = lambda *args: told.append(args)
    pool.count(RULE, "compared", "equal")
    assert told == [("shadow", RULE, ("compared", "equal"))]
    copy, snapshot = pool.all_counts(), pool.snapshot(RULE)
    pool.count(RULE, "compared")
    assert copy == {RULE: {"compared": 1, "equal": 1}} and snapshot == {"compared": 1, "equal": 1}
    assert pool.snapshot("~/other") == {}


def test_take_drops_at_once_when_the_queue_is_full() -> None:
    pool = Shadower(None, size=1)
    assert pool.take(RULE) is True
    pool.queue.put_nowait(("a job",))
    assert pool.take(RULE) is False and pool.counts[RULE] == {"dropped": 1}


def test_submit_drops_past_the_stuck_replays_and_on_a_full_queue() -> None:
    pool = Shadower(None, size=1)
    pool.started = True  # no worker takes the queue: the third submit finds it full
    pool.stuck = MAX_STUCK
    pool.submit(RULE, {}, (200, {}, b""), ((wsgi(), "wsgi"), (wsgi(), "wsgi")), ())
    assert pool.counts[RULE] == {"dropped": 1} and pool.queue.empty()
    pool.stuck = MAX_STUCK - 1
    pool.submit(RULE, {}, (200, {}, b""), ((wsgi(), "wsgi"), (wsgi(), "wsgi")), ())
    pool.submit(RULE, {}, (200, {}, b""), ((wsgi(), "wsgi"), (wsgi(), "wsgi")), ())
    assert pool.counts[RULE] == {"dropped": 2} and pool.queue.qsize() == 1


def test_one_comparison_that_fails_is_logged_and_the_pool_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    pool = Shadower(None, cpu=1.0)
    apps = ((wsgi(), "wsgi"), (wsgi(), "wsgi"))
    with caplog.at_level(logging.ERROR, "gateway.shadow"):
        pool.submit(RULE, ENVIRON, (200, None, b"hello"), apps, ())  # type: ignore[arg-type]
        pool.submit(RULE, ENVIRON, (200, TEXT, b"hello"), apps, ())
        pool.drain()
    assert [r.getMessage() for r in caplog.records] == [f"Shadow comparison failed for {RULE}"]
    assert pool.counts[RULE] == {"compared": 1, "equal": 1}


@pytest.mark.parametrize(("cpu", "threads", "slept"), [
    pytest.param(0.5, 1, [0.25], id="half-a-core"),
    pytest.param(0.5, 2, [0.75], id="two-threads-share-it"),
    pytest.param(1.0, 1, [], id="a-whole-core"),
])
def test_the_pool_rests_to_stay_within_its_share(monkeypatch: pytest.MonkeyPatch, cpu: float, threads: int,
                                                 slept: list[float]) -> None:
    pool = Shadower(None, cpu=cpu, threads=threads)
    sleeps: list[float] = []
    monkeypatch.setattr(shadow.time, "sleep", sleeps.append)
    pool.rest(0.25)
    assert sleeps == slept


def test_a_difference_is_written_with_what_and_where(tmp_path: Path) -> None:
    log = tmp_path / "shadow.jsonl"
    pool = Shadower(log, keep=2)
    apps = ((wsgi(chunks=[b"new page"]), "wsgi"), (wsgi(chunks=[b"old page"]), "wsgi"))
    for _ in range(3):
        pool.compare(RULE, {**ENVIRON, "QUERY_STRING": "q=1"}, (200, TEXT, b"old page"), apps, ())
    assert pool.counts[RULE] == {"compared": 3, "different": 3}
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(records) == 2  # keep=2
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", records[0].pop("time"))
    assert records[0] == {"rule": RULE, "method": "GET", "path": "/x", "query": "q=1",
                          "status": [200, 200], "differences": ["body: 1 token(s) differ"],
                          "diff": "--- primary\n+++ candidate\n@@ -1,2 +1,2 @@\n-old\n+new\n page"}


def test_an_environ_without_a_query_is_written_with_an_empty_one(tmp_path: Path) -> None:
    log = tmp_path / "shadow.jsonl"
    pool = Shadower(log)
    pool.record(RULE, {"REQUEST_METHOD": "GET", "PATH_INFO": "/x"}, (200, TEXT, b"a"), (200, TEXT, b"b"), ["x"])
    assert json.loads(log.read_text())["query"] == ""


def test_a_too_large_replay_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    pool = Shadower(None)
    apps = ((wsgi(chunks=[b"x" * (MAX_BODY + 1)]), "wsgi"), (wsgi(), "wsgi"))
    pool.compare(RULE, ENVIRON, (200, TEXT, b"hello"), apps, ())
    assert pool.counts[RULE] == {"dropped": 1}


def test_a_failing_replay_says_which_app_raised_what(caplog: pytest.LogCaptureFixture) -> None:
    def broken(environ: dict[str, Any], start_response: Any) -> Any:
        raise KeyError("gone")

    pool = Shadower(None)
    with caplog.at_level(logging.DEBUG, "gateway.shadow"):
        pool.compare(RULE, ENVIRON, (200, TEXT, b"hello"), ((broken, "wsgi"), (wsgi(), "wsgi")), ())
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", f"Shadow comparison of rule {RULE}: the candidate raised KeyError: 'gone'; counted, and logged at "
                    "most once a minute."),
        ("DEBUG", f"The candidate KeyError of rule {RULE} failed.")]
    assert caplog.records[1].exc_info is not None and caplog.records[1].exc_info[0] is KeyError


def test_an_anonymous_request_compares_the_candidate_with_a_replay_of_the_primary() -> None:
    """The client's own answer was for its credentials: the primary is replayed without them."""
    pool = Shadower(None)
    apps = ((wsgi(chunks=[b"hello guest"]), "wsgi"), (wsgi(chunks=[b"hello guest"]), "wsgi"))
    pool.compare(RULE, ENVIRON, (200, TEXT, b"hello alice"), apps, (), anonymous=True)
    pool.compare(RULE, ENVIRON, (200, TEXT, b"hello alice"), apps, ())
    assert pool.counts[RULE] == {"compared": 2, "equal": 1, "noise": 1}  # else: the replays differ from it alike


# -- The capture -------------------------------------------------------------------------------------


class Pool(Shadower):
    """A pool that keeps what is submitted instead of comparing it."""

    def __init__(self) -> None:
        super().__init__(None)
        self.submitted: list[tuple[Any, ...]] = []

    def submit(self, *args: Any) -> None:  # type: ignore[override]
        self.submitted.append(args)


APPS = ((wsgi(), "wsgi"), (wsgi(), "asgi"))


def captured(headers: list[tuple[str, str]], chunks: list[bytes], end: bool, environ: dict[str, Any] | None = None,
             credentials: bool = False) -> Pool:
    pool = Pool()
    capture = Capture(pool, RULE, environ or ENVIRON, APPS, ("ETag",), credentials)
    capture.start(200, headers)
    for chunk in chunks:
        capture.add(chunk)
    if end:
        capture.end()
    capture.close()
    return pool


def test_a_whole_answer_is_submitted_with_its_headers_lower_cased() -> None:
    pool = captured([("Content-Type", "text/plain")], [b"he", b"llo"], end=True)
    ((rule, environ, primary, apps, compared, anonymous),) = pool.submitted
    assert (rule, primary, apps, compared, anonymous) == (RULE, (200, {"content-type": "text/plain"}, b"hello"), APPS,
                                                          ("ETag",), False)
    assert environ["wsgi.input"].read() == b"" and environ["PATH_INFO"] == "/x"


@pytest.mark.parametrize(("length", "submitted"), [
    pytest.param(" 5 ", 1, id="reached"), pytest.param("6", 0, id="short"), pytest.param("five", 0, id="not-a-number"),
])
def test_an_answer_that_reached_its_length_is_whole_without_its_end(length: str, submitted: int) -> None:
    pool = captured([("Content-Length", length)], [b"hello"], end=False)
    assert len(pool.submitted) == submitted and pool.counts == {}


def test_an_answer_over_the_limit_is_counted_dropped_and_one_at_it_is_compared() -> None:
    over = captured([], [b"x" * MAX_BODY, b"y"], end=True)
    assert over.submitted == [] and over.counts[RULE] == {"dropped": 1}
    at = captured([], [b"x" * (MAX_BODY - 1), b"y"], end=True)
    assert at.submitted[0][2][2] == b"x" * (MAX_BODY - 1) + b"y"


def test_no_answer_is_not_compared() -> None:
    pool = Pool()
    capture = Capture(pool, RULE, ENVIRON, APPS)
    capture.end()
    capture.close()  # the app failed before it started: no status
    assert pool.submitted == [] and pool.counts == {}


@pytest.mark.parametrize("name", ["HTTP_COOKIE", "HTTP_AUTHORIZATION", "HTTP_PROXY_AUTHORIZATION"])
def test_credentials_make_the_capture_anonymous_unless_the_rule_replays_them(name: str) -> None:
    (args,) = captured([], [b"a"], end=True, environ={**ENVIRON, name: "x"}).submitted
    assert args[5] is True and name not in args[1]
    (kept,) = captured([], [b"a"], end=True, environ={**ENVIRON, name: "x"}, credentials=True).submitted
    assert kept[5] is False and kept[1][name] == "x"


# -- gateway diff --------------------------------------------------------------------------------------


def record(rule: str, path: str, differences: list[str], diff: str = "-a\n+b", time: str = "t") -> str:
    return json.dumps({"time": time, "rule": rule, "method": "GET", "path": path, "query": "", "status": [200, 200],
                       "differences": differences, "diff": diff})


def test_the_summary_puts_the_rule_with_most_differences_first(tmp_path: Path) -> None:
    log = tmp_path / "shadow.jsonl"
    lines = [record("~/one", "/one", ["status 200 != 500"], time="t1")]
    lines += [record("~/many", f"/p{n % 6}", ["status 200 != 404", "header etag: '1' != '2'", "body: 3 token(s) differ",
                                              f"x{n}: y"][: 1 + n % 4], diff="\n".join(f"+{i}" for i in range(30)),
                     time=f"t{n}") for n in range(12)]
    log.write_text("\n".join(lines) + "\n\n")
    out = summarise(log)
    assert out[0] == ("~/many: 12 difference(s) on 6 path(s); status N != N x12, header etag x9, body x6")
    assert out[1:6] == ["  /p0  x2", "  /p1  x2", "  /p2  x2", "  /p3  x2", "  /p4  x2"]  # five paths at most
    assert out[6] == "  latest (t11, /p5):"
    assert out[7:27] == [f"    +{i}" for i in range(20)]  # twenty lines of the diff at most
    assert out[27:] == ["~/one: 1 difference(s) on 1 path(s); status N != N x1", "  /one  x1", "  latest (t1, /one):",
                        "    -a", "    +b"]


def test_an_empty_log_says_so(tmp_path: Path) -> None:
    log = tmp_path / "shadow.jsonl"
    log.write_text("\n")
    assert summarise(log) == [f"{log}: no differences recorded."]


def test_shown_escapes_only_what_does_not_print() -> None:
    assert shown("caf\xe9 /x") == "caf\xe9 /x"
    assert shown("a\x1bb\u202ec") == "a\\x1bb\\u202ec"


# -- Found by the third run (docs/testing.md, gateway/migration/shadow.py) ----------------------------


def fake_time(monkeypatch: pytest.MonkeyPatch, **clocks: Callable[..., Any]) -> None:
    """The shadow module's ``time`` with some of its functions replaced (the rest as they are)."""
    fake = types.SimpleNamespace(**{name: getattr(time, name) for name in dir(time) if not name.startswith("_")})
    for name, function in clocks.items():
        setattr(fake, name, function)
    monkeypatch.setattr(shadow, "time", fake)


def test_an_asgi_replay_sees_its_scope_and_its_client_stays_while_the_body_goes_on() -> None:
    """The app is given the request's scope; a body message without ``body`` is empty; the
    client does not leave before the last message; a body of exactly MAX_BODY is compared."""
    seen: list[Any] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": scope["path"].encode(), "more_body": True})
        await send({"type": "http.response.body", "more_body": True})
        waiting = asyncio.ensure_future(receive())
        for _ in range(3):
            await asyncio.sleep(0)
        seen.append(waiting.done())  # the body is not over: the client is still there
        await send({"type": "http.response.body", "body": b"x" * (MAX_BODY - 2)})
        seen.append(await waiting)

    assert call_asgi(app, ENVIRON) == (200, {}, b"/x" + b"x" * (MAX_BODY - 2))
    assert seen == [False, {"type": "http.disconnect"}]


def test_a_scope_of_undecodable_bytes_and_the_ports_bounds() -> None:
    scope = scope_of({"SCRIPT_NAME": "/\xff", "PATH_INFO": "/caf\xc3", "SERVER_PORT": "65535"})
    assert (scope["root_path"], scope["path"], scope["server"], scope["http_version"]) == (
        "/\ufffd", "/\ufffd/caf\ufffd", ("localhost", 65535), "1.1")
    assert scope_of({"SERVER_PORT": "123456"})["server"] == ("localhost", None)


def test_a_replay_leaves_out_every_credential_and_nothing_else() -> None:
    errors = io.StringIO()
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/x", "QUERY_STRING": "page=2&api_key=k&q=code&token&sort=price",
               "RAW_URI": "/x?page=2&api_key=k", "REQUEST_URI": "/x?page=2&api_key=k", "HTTP_SESSION": "s",
               "HTTP_X_API_KEY": "k", "HTTP_ACCEPT": "*/*", "wsgi.url_scheme": "https",
               "wsgi.input": io.BytesIO(b"body"), "wsgi.errors": errors, "werkzeug.request": object()}
    assert carries_credentials(environ)
    replay = fresh(environ, credentials=False)
    assert replay.pop("wsgi.input").read() == b""
    assert replay == {"REQUEST_METHOD": "GET", "PATH_INFO": "/x", "QUERY_STRING": "page=2&q=code&sort=price",
                      "HTTP_ACCEPT": "*/*", "wsgi.url_scheme": "https", "wsgi.errors": errors}
    assert not carries_credentials(replay)
    kept = fresh(environ)
    assert kept.pop("wsgi.input").read() == b""
    assert kept == {k: v for k, v in environ.items() if k not in ("wsgi.input", "werkzeug.request")}
    # A credential in the query only, and no copy of the target to drop.
    bare = fresh({"QUERY_STRING": "sig=1"}, credentials=False)
    assert (bare["QUERY_STRING"], sorted(bare)) == ("", ["QUERY_STRING", "wsgi.errors", "wsgi.input"])
    assert carries_credentials({"QUERY_STRING": "token"}) and carries_credentials({"HTTP_SESSION": "s"})
    assert not carries_credentials({"HTTP_ACCEPT": "*/*"})


def test_html_character_references_are_read_as_text() -> None:
    assert tokens("text/html", b"<p>caf&eacute; &amp; th&#233;</p>") == ["<p>", "caf\xe9", "&", "th\xe9", "</p>"]


def test_a_long_page_of_repeated_tokens_changes_where_it_changes() -> None:
    """No token is junk however often it comes (difflib's autojunk off)."""
    assert changed(["y"] + ["x"] * 250, ["z"] + ["x"] * 250) == {0}


def test_each_body_is_read_by_its_own_content_type_or_as_text_without_one() -> None:
    json_type = {"content-type": "application/json"}
    # The secondary's JSON in another order is no noise: the value that differs is real.
    assert compare((200, json_type, b'{"a": 1, "b": 2}'), (200, json_type, b'{"b": 2, "a": 1}'),
                   (200, json_type, b'{"a": 1, "b": 3}'), []) == ("different", ["body: 1 token(s) differ"])
    assert compare((200, {}, b"a b"), (200, {}, b"a b"), (200, {}, b"a c"), []) == (
        "different", ["body: 1 token(s) differ"])
    assert unified((200, json_type, b'{"a": 1}'), (200, {}, b'{"a": 2}')) == (
        "--- primary\n+++ candidate\n@@ -1 +1 @@\n-$.a=1\n+$.a=2")
    assert unified((200, {}, b"a"), (200, {}, b"b")) == "--- primary\n+++ candidate\n@@ -1 +1 @@\n-a\n+b"


def test_the_pools_threads_are_named_by_role_and_never_hold_the_process() -> None:
    pool = Shadower(None, threads=2)
    assert [(w.name, w.daemon) for w in pool.workers] == [("gateway-shadow-0", True), ("gateway-shadow-1", True)]
    threads: list[tuple[str, bool]] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        threads.append((threading.current_thread().name, threading.current_thread().daemon))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"hello"]

    pool.compare(RULE, ENVIRON, (200, TEXT, b"hello alice"), ((app, "wsgi"), (app, "wsgi")), (), anonymous=True)
    assert threads == [("gateway-shadow-primary", True), ("gateway-shadow-candidate", True),
                       ("gateway-shadow-primary", True)]
    assert pool.counts[RULE] == {"compared": 1, "equal": 1}


def test_an_asgi_candidate_is_replayed_natively_within_the_timeout() -> None:
    async def candidate(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await asyncio.sleep(0.05)  # longer than a thread's first turn: the replay is waited for
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": scope["path"].encode()})

    pool = Shadower(None)
    pool.compare(RULE, ENVIRON, (200, TEXT, b"/x"), ((candidate, "asgi"), (wsgi(chunks=[b"/x"]), "wsgi")), ())
    assert pool.counts[RULE] == {"compared": 1, "equal": 1}


def test_the_pool_rests_for_its_own_cpu_and_each_replays(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each call of the clock is a second later: the worker's own 5 (from its start to its
    end), of which the two replays, each in a thread of its own, took 1 each, added."""
    ticks, lock = itertools.count(100), threading.Lock()

    def thread_time() -> float:
        with lock:
            return float(next(ticks))

    fake_time(monkeypatch, thread_time=thread_time)
    pool = Shadower(None)
    rested: list[float] = []
    done = threading.Event()
    monkeypatch.setattr(pool, "rest", lambda spent: (rested.append(spent), done.set()))
    pool.submit(RULE, ENVIRON, (200, TEXT, b"hello"), ((wsgi(), "wsgi"), (wsgi(), "wsgi")), ())
    assert done.wait(10)
    assert rested == [7.0] and pool.counts[RULE] == {"compared": 1, "equal": 1}


def test_a_first_warning_is_logged_at_once_and_the_next_a_minute_later(monkeypatch: pytest.MonkeyPatch,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    now = [30.0]  # a clock that started 30 s ago (time.monotonic() counts from the machine's start)
    fake_time(monkeypatch, monotonic=lambda: now[0])
    pool = Shadower(None)
    with caplog.at_level(logging.WARNING, "gateway.shadow"):
        for now[0], what in ((30.0, "one"), (89.9, "two"), (90.0, "three")):
            pool.warn(RULE, "candidate timeout", what)
    assert [r.getMessage() for r in caplog.records] == [
        f"Shadow comparison of rule {RULE}: one; counted, and logged at most once a minute.",
        f"Shadow comparison of rule {RULE}: three (1 more since the last such line); counted, and logged at most "
        "once a minute."]


def test_a_timeout_of_each_app_has_its_own_line(monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    pool = Shadower(None, timeout=2)
    hung = wsgi()

    def replay(replayed: Any, environ: Any, deadline: float, which: str, spent: list[float]) -> Any:
        if replayed[0] is hung:
            raise ReplayTimedOut(which)
        return call(replayed[0], environ)

    monkeypatch.setattr(pool, "replay", replay)
    with caplog.at_level(logging.WARNING, "gateway.shadow"):
        pool.compare(RULE, ENVIRON, (200, TEXT, b"hello"), ((hung, "wsgi"), (wsgi(), "wsgi")), ())
        pool.compare(RULE, ENVIRON, (200, TEXT, b"hello"), ((wsgi(), "wsgi"), (hung, "wsgi")), ())
    assert [r.getMessage() for r in caplog.records] == [
        f"Shadow comparison of rule {RULE}: the {which} did not answer within 2 s ([shadow] timeout); it is left to "
        "finish, and the comparison is not made; counted, and logged at most once a minute."
        for which in ("candidate", "primary")]
    assert pool.counts[RULE] == {"timeout": 2}


def test_a_difference_is_timed_in_utc_and_a_thousand_are_kept_a_rule(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    fake_time(monkeypatch, gmtime=lambda *seconds: time.struct_time((2026, 1, 2, 3, 4, 5, 4, 2, 0)))
    log = tmp_path / "shadow.jsonl"
    pool = Shadower(log)
    for _ in range(1001):
        pool.record(RULE, ENVIRON, (200, TEXT, b"a"), (200, TEXT, b"b"), ["body: 1 token(s) differ"])
    lines = log.read_text().splitlines()
    assert len(lines) == 1000
    assert json.loads(lines[0])["time"] == "2026-01-02T03:04:05Z"


def test_a_capture_closed_before_its_answer_was_whole_submits_nothing() -> None:
    pool = Pool()
    Capture(pool, RULE, ENVIRON, APPS).close()  # the client left before the app started
    cut = Capture(pool, RULE, ENVIRON, APPS)
    cut.start(200, [("Content-Type", "text/plain")])  # no length, and the end never came
    cut.add(b"hel")
    cut.close()
    assert pool.submitted == [] and pool.counts == {}


def test_the_summary_reads_past_blank_lines_and_bad_bytes_and_orders_rules_by_count(tmp_path: Path) -> None:
    log = tmp_path / "shadow.jsonl"
    odd = record("~/b", "/b-HERE", ["x: 1"]).encode().replace(b"HERE", b"\xff")
    log.write_bytes(b"\n".join([record("~/a", "/a", ["x: 1"]).encode(), b"", odd, odd, b""]))
    assert summarise(log) == [
        "~/b: 2 difference(s) on 1 path(s); x x2", "  /b-\ufffd  x2", "  latest (t, /b-\ufffd):", "    -a", "    +b",
        "~/a: 1 difference(s) on 1 path(s); x x1", "  /a  x1", "  latest (t, /a):", "    -a", "    +b"]


@pytest.mark.parametrize("bad", [
    pytest.param("[1]", id="not-an-object"),
    pytest.param('{"rule": 1, "path": "/", "differences": [], "diff": ""}', id="rule"),
    pytest.param('{"rule": "r", "path": 1, "differences": [], "diff": ""}', id="path"),
    pytest.param('{"rule": "r", "path": "/", "differences": "x", "diff": ""}', id="differences"),
    pytest.param('{"rule": "r", "path": "/", "differences": [], "diff": 1}', id="diff"),
    pytest.param("not json", id="not-json"),
])
def test_a_line_not_of_the_shadow_log_is_named_by_its_number(tmp_path: Path, bad: str) -> None:
    log = tmp_path / "shadow.jsonl"
    log.write_text(record("~/a", "/a", ["x: 1"]) + "\n" + bad + "\n")
    with pytest.raises(ValueError) as error:
        summarise(log)
    assert str(error.value) == f"{log}, line 2: not a JSON line of the shadow log."


def test_shown_escapes_only_the_characters_that_do_not_print() -> None:
    assert shown("caf\xe9\x1b") == "caf\xe9\\x1b"


def test_a_wsgi_replay_keeps_what_the_app_gave_write() -> None:
    """PEP 3333's ``write()`` (start_response's return value): its bytes come before the
    iterable's, and count towards the limit. (It dropped them: an app that writes was
    always compared without that part, and counted as noise.)"""
    def writer(chunks: list[bytes]) -> Any:
        def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            write = start_response("200 OK", [("Content-Type", "text/plain")])
            for chunk in chunks:
                write(chunk)
            return [b"end"]
        return app

    assert call(writer([b"hello ", b"there "]), ENVIRON) == (200, {"content-type": "text/plain"}, b"hello there end")
    with pytest.raises(TooLarge):
        call(writer([b"x" * MAX_BODY]), ENVIRON)
    pool = Shadower(None)
    pool.compare(RULE, ENVIRON, (200, TEXT, b"hello there end"), ((writer([b"hello ", b"here "]), "wsgi"),
                                                                   (writer([b"hello ", b"there "]), "wsgi")), ())
    assert pool.counts[RULE] == {"compared": 1, "different": 1}
