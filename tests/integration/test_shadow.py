"""Shadow comparison's pool: what a replay may carry, how long it may take, what a failing
candidate costs the log. In process, with small WSGI apps behind both entry points."""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.migration.rules import ConfigFileError, RouteSpec, parse_gateway_file
from gateway.migration.shadow import MAX_STUCK, Shadower
from tests.entries import ENTRIES, Send, config_with, rule_table

RULE = "~/<path:rest>"


def greeter(seen: list[dict[str, Any]], name: str = "old") -> Any:
    """A page that greets whoever its cookie names, and keeps each environ it was given."""

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(environ)
        user = environ.get("HTTP_COOKIE", "user=guest").partition("=")[2]
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"hello {user}".encode()]

    return app


@pytest.fixture
def shadower() -> Iterator[Shadower]:
    pool = Shadower(None, cpu=1.0)
    yield pool
    pool.drain()


@pytest.fixture(params=sorted(ENTRIES))
def tapped(request: pytest.FixtureRequest) -> Iterator[Any]:
    """``tapped(primary, candidate, pool)``: an entry point (``wsgi``, then ``asgi``) whose one
    rule answers every path from ``primary``, in shadow mode with ``candidate``."""
    built: list[Any] = []

    def build(primary: Any, candidate: Any, pool: Shadower, credentials: bool = False) -> Send:
        spec = RouteSpec("/<path:rest>", ("old",), shadow="new", shadow_credentials=credentials)
        assert spec.key == RULE
        send, app = ENTRIES[request.param](rule_table([spec], {"old": primary, "new": candidate}, pool),
                                           config_with())
        built.append(app)
        return send

    yield build
    for app in built:
        if hasattr(app, "executor"):
            app.executor.shutdown(wait=True)


def test_credentials_are_not_replayed_unless_the_rule_says_so(shadower: Shadower, tapped: Any) -> None:
    primary_seen: list[dict[str, Any]] = []
    candidate_seen: list[dict[str, Any]] = []
    send = tapped(greeter(primary_seen), greeter(candidate_seen), shadower)
    headers = {"Authorization": "Bearer secret", "Proxy-Authorization": "Basic eA==", "Cookie": "user=alice"}
    assert send("GET", "/account", headers).body == b"hello alice"
    shadower.drain()
    assert len(candidate_seen) == 1
    assert not {"HTTP_COOKIE", "HTTP_AUTHORIZATION", "HTTP_PROXY_AUTHORIZATION"} & set(candidate_seen[0])
    # The client's answer was alice's page: the candidate is compared with the primary's
    # anonymous answer instead, replayed twice (once to compare, once for the noise).
    assert len(primary_seen) == 3
    assert all("HTTP_COOKIE" not in environ for environ in primary_seen[1:])
    assert shadower.counts[RULE] == {"compared": 1, "equal": 1}


def test_a_rule_with_credentials_replays_them(shadower: Shadower, tapped: Any) -> None:
    primary_seen: list[dict[str, Any]] = []
    candidate_seen: list[dict[str, Any]] = []
    send = tapped(greeter(primary_seen), greeter(candidate_seen), shadower, credentials=True)
    answer = send("GET", "/account", {"Authorization": "Bearer secret", "Cookie": "user=alice"})
    assert answer.body == b"hello alice"
    shadower.drain()
    assert candidate_seen[0]["HTTP_COOKIE"] == "user=alice"
    assert candidate_seen[0]["HTTP_AUTHORIZATION"] == "Bearer secret"
    assert len(primary_seen) == 2  # the client's own answer, and the secondary
    assert shadower.counts[RULE] == {"compared": 1, "equal": 1}


def test_a_request_without_credentials_is_compared_with_the_clients_answer(shadower: Shadower,
                                                                          tapped: Any) -> None:
    primary_seen: list[dict[str, Any]] = []
    tapped(greeter(primary_seen), greeter([]), shadower)("GET", "/account")
    shadower.drain()
    assert len(primary_seen) == 2
    assert shadower.counts[RULE] == {"compared": 1, "equal": 1}


def test_a_hung_candidate_times_out_and_leaves_the_pool_free(caplog: pytest.LogCaptureFixture, tapped: Any) -> None:
    release = threading.Event()
    calls: list[str] = []

    def hung(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        calls.append(environ["PATH_INFO"])
        if environ["PATH_INFO"] == "/hang":
            release.wait(30)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"hello guest"]

    pool = Shadower(None, cpu=1.0, timeout=0.2, patience=60)
    send = tapped(greeter([]), hung, pool)
    try:
        with caplog.at_level(logging.WARNING, logger="gateway.shadow"):
            send("GET", "/hang")
            pool.drain()
            assert pool.counts[RULE] == {"timeout": 1}
            assert pool.stuck == 1
            send("GET", "/fine")  # the next comparison runs: the hung replay holds no worker
            pool.drain()
        assert pool.counts[RULE] == {"timeout": 1, "compared": 1, "equal": 1}
        lines = [r.getMessage() for r in caplog.records if r.name == "gateway.shadow"]
        assert lines == [f"Shadow comparison of rule {RULE}: the candidate did not answer within 0.2 s "
                         "([shadow] timeout); it is left to finish, and the comparison is not made; "
                         "counted, and logged at most once a minute."]
    finally:
        release.set()
    pool.drain()


def test_stuck_replays_are_bounded_and_counted_as_dropped(tapped: Any) -> None:
    release = threading.Event()

    def hung(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        release.wait(30)
        start_response("200 OK", [])
        return [b""]

    pool = Shadower(None, cpu=1.0, timeout=0.05, patience=60)
    send = tapped(greeter([]), hung, pool)
    try:
        for _ in range(MAX_STUCK):
            send("GET", "/x")
            pool.drain()
        assert pool.stuck == MAX_STUCK
        assert pool.counts[RULE] == {"timeout": MAX_STUCK}
        send("GET", "/x")
        pool.drain()
        assert pool.counts[RULE] == {"timeout": MAX_STUCK, "dropped": 1}
    finally:
        release.set()
    deadline = time.monotonic() + 10
    while pool.stuck and time.monotonic() < deadline:  # the abandoned replays end once released
        time.sleep(0.01)
    assert pool.stuck == 0


def test_a_comparison_that_waited_past_the_timeout_is_dropped_not_replayed_late() -> None:
    replayed: list[str] = []

    def candidate(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        replayed.append(environ["PATH_INFO"])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"hello guest"]

    pool = Shadower(None, cpu=1.0, timeout=5)
    apps = ((candidate, "wsgi"), (greeter([]), "wsgi"))
    answer = (200, {"content-type": "text/plain"}, b"hello guest")

    def request(path: str) -> dict[str, Any]:
        return {"REQUEST_METHOD": "GET", "PATH_INFO": path, "wsgi.input": io.BytesIO(b"")}

    # Queued ten seconds ago, past its 5 s, before the pool's worker was started...
    pool.queue.put_nowait((time.monotonic() - 10.0, RULE, request("/late"), answer, apps, (), False))
    pool.submit(RULE, request("/now"), answer, apps, ())  # ...which this starts
    pool.drain()
    assert pool.counts[RULE] == {"dropped": 1, "compared": 1, "equal": 1}
    assert replayed == ["/now"]

    # With more patience than that, the same wait is replayed.
    patient = Shadower(None, cpu=1.0, timeout=5, patience=11)
    patient.queue.put_nowait((time.monotonic() - 10.0, RULE, request("/late"), answer, apps, (), False))
    patient.submit(RULE, request("/now"), answer, apps, ())
    patient.drain()
    assert patient.counts[RULE] == {"compared": 2, "equal": 2}
    assert replayed == ["/now", "/late", "/now"]


def test_candidate_errors_are_counted_and_logged_once_a_minute(caplog: pytest.LogCaptureFixture,
                                                                shadower: Shadower, tapped: Any) -> None:
    def broken(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise ValueError("no such product")

    send = tapped(greeter([]), broken, shadower)
    with caplog.at_level(logging.DEBUG, logger="gateway.shadow"):
        for _ in range(3):
            send("GET", "/x")
            shadower.drain()
    assert shadower.counts[RULE] == {"error": 3}
    warnings = [r for r in caplog.records if r.name == "gateway.shadow" and r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        f"Shadow comparison of rule {RULE}: the candidate raised ValueError: no such product; counted, "
        "and logged at most once a minute."]
    assert warnings[0].exc_info is None  # no traceback at WARNING...
    debug = [r for r in caplog.records if r.name == "gateway.shadow" and r.levelno == logging.DEBUG]
    assert len(debug) == 1 and debug[0].exc_info is not None  # ...it is at DEBUG, once
    assert shadower.logged[RULE, "candidate ValueError"][1] == 2  # two more, said on the next line


def test_the_next_line_says_how_many_were_not_logged(caplog: pytest.LogCaptureFixture, shadower: Shadower) -> None:
    shadower.logged[RULE, "candidate timeout"] = (-1e9, 5)  # a minute ago and more, five since
    with caplog.at_level(logging.WARNING, logger="gateway.shadow"):
        shadower.warn(RULE, "candidate timeout", "the candidate did not answer")
        shadower.warn(RULE, "primary timeout", "the primary did not answer")  # another kind: its own line
    assert [r.getMessage() for r in caplog.records] == [
        f"Shadow comparison of rule {RULE}: the candidate did not answer (5 more since the last such line); "
        "counted, and logged at most once a minute.",
        f"Shadow comparison of rule {RULE}: the primary did not answer; counted, and logged at most once a minute."]


def test_a_primary_that_fails_on_its_replay_is_an_error_too(shadower: Shadower, tapped: Any) -> None:
    answers = iter([True])

    def flaky(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if next(answers, False):
            start_response("200 OK", [])
            return [b"first"]
        raise RuntimeError("database gone")

    tapped(flaky, greeter([]), shadower)("GET", "/x")
    shadower.drain()
    assert shadower.counts[RULE] == {"error": 1}
    assert ("primary RuntimeError") in {kind for _, kind in shadower.logged}


FILE = """
[apps]
old = "flask_hello:app"
new = "flask_hello:app"

[[route]]
rule = "/account"
app = "old"
shadow = SHADOW
"""


def test_the_file_says_credentials_and_timeout() -> None:
    with_both = FILE.replace("SHADOW", '{ app = "new", credentials = true }') + "\n[shadow]\ntimeout = 2\n"
    parsed = parse_gateway_file(with_both)
    assert parsed.routes[0].shadow_credentials is True
    assert parsed.shadow_timeout == 2.0
    plain = parse_gateway_file(FILE.replace("SHADOW", '{ app = "new" }'))
    assert plain.routes[0].shadow_credentials is False
    assert plain.shadow_timeout == 5.0


@pytest.mark.parametrize(("shadow", "pool", "message"), [
    ('{ app = "new", credentials = "yes" }', "", "gateway.toml, line 6: shadow credentials must be true or false"),
    ('{ app = "new" }', "timeout = 0", "gateway.toml, line 9: [shadow] takes cpu = 2"),
    ('{ app = "new" }', "timeout = 3601", "gateway.toml, line 9: [shadow] takes cpu = 2"),
    ('{ app = "new" }', 'timeout = "5"', "gateway.toml, line 9: [shadow] takes cpu = 2"),
    ('{ app = "new" }', "timeout = true", "gateway.toml, line 9: [shadow] takes cpu = 2"),
])
def test_bad_credentials_or_timeouts_are_refused_with_their_line(shadow: str, pool: str, message: str) -> None:
    text = FILE.replace("SHADOW", shadow) + (f"\n[shadow]\n{pool}\n" if pool else "")
    with pytest.raises(ConfigFileError) as error:
        parse_gateway_file(text)
    assert str(error.value).startswith(message)


def test_the_route_table_gives_the_pool_the_files_timeout() -> None:
    from gateway.core.config import Config
    from gateway.core.mounts import MountTable, rule_options

    parsed = parse_gateway_file(FILE.replace("SHADOW", '{ app = "new" }') + "\n[shadow]\ntimeout = 1.5\n")
    config = Config(file=parsed)
    table = MountTable.from_specs((), defaults=False, **rule_options(config))
    assert table.route_table is not None
    assert table.route_table.shadower.timeout == 1.5


def test_the_default_pool_has_one_thread() -> None:
    """docs/migration.md says one thread, a queue of 64 and a 5 s timeout."""
    pool = Shadower(None)
    assert (len(pool.workers), pool.queue.maxsize, pool.timeout) == (1, 64, 5.0)


@pytest.mark.parametrize(("outcomes", "shown"), [
    (("error", "error", "timeout"), "(0 different, 0 dropped, 2 failed, 1 timed out)"),
    (("timeout",), "(0 different, 0 dropped, 0 failed, 1 timed out)"),
    (("error",), "(0 different, 0 dropped, 1 failed, 0 timed out)"),
    (("dropped",), "(0 different, 1 dropped)"),
])
def test_the_migration_page_shows_failed_and_timed_out_comparisons(outcomes: tuple[str, ...], shown: str) -> None:
    from gateway.migration import page
    from gateway.migration.rules import RouteSpec, RouteTable

    table = RouteTable([RouteSpec("/z", ("a",), shadow="b")])
    (key,) = table.specs
    for outcome in outcomes:
        table.shadower.count(key, outcome)
    body = page.render(table).body.decode()
    assert f"<td>b: - equal of 0 compared {shown} <meter" in body


@pytest.mark.parametrize(("written", "outcome"), [
    pytest.param(b"hello there ", {"compared": 1, "equal": 1}, id="same"),
    pytest.param(b"hello here ", {"compared": 1, "different": 1}, id="different"),
])
def test_what_an_app_gives_write_is_compared(shadower: Shadower, tapped: Any, written: bytes,
                                             outcome: dict[str, int]) -> None:
    """PEP 3333's ``write()``: its bytes are the answer's first part, in the client's copy and
    in each replay (both left them out: only the iterable's part was compared)."""
    def writer(chunk: bytes) -> Any:
        def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            start_response("200 OK", [("Content-Type", "text/plain")])(chunk)
            return [b"end"]
        return app

    assert tapped(writer(b"hello there "), writer(written), shadower)("GET", "/x").status == 200
    shadower.drain()
    assert shadower.counts[RULE] == outcome
