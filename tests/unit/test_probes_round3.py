"""Probes of issue 21's third round: new cases of each class the outside testers found
(docs/hardening.md, "Third round"). Where a row's test sits better beside its module's
tests (tests/unit/test_mount_match.py), it is there."""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.config import Config
from gateway.migration import rules
from gateway.migration.rules import ConfigFileError
from gateway.serve import frameworks


def stdlib_cookies() -> ModuleType:
    """A fresh copy of :mod:`http.cookies`, as this Python ships it (the gateway may have
    replaced its ``_unquote`` in this process)."""
    spec = importlib.util.find_spec("http.cookies")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def c_calls(work: Any) -> Counter[str]:
    """The calls of C functions ``work()`` makes, by name: a count of steps, not a time."""
    calls: Counter[str] = Counter()

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event == "c_call":
            calls[getattr(arg, "__name__", "?")] += 1

    sys.setprofile(profile)
    try:
        work()
    finally:
        sys.setprofile(None)
    return calls


def test_django_reads_a_cookie_of_thousands_of_backslashes_in_one_pass() -> None:
    """T2: ``Cookie: x="\\\\\\\\..."`` (7,000 escaped backslashes, 14 KB). Django reads it with
    ``http.cookies._unquote``, two regular-expression searches from each escape to the end
    before CPython 3.11.10 (python/cpython#123067): 2.1 s a request, and 100 of them held
    uvicorn's /healthz 74 s (the GIL). Once the gateway has set the frameworks up, the value
    is read in a few steps, whatever the Python."""
    from django.http import parse_cookie

    frameworks.set_up(Config())
    header = 'x="' + "\\\\" * 7000 + '"; y=1'
    parsed: dict[str, str] = {}
    calls = c_calls(lambda: parsed.update(parse_cookie(header)))
    assert parsed == {"x": "\\" * 7000, "y": "1"}
    assert calls["search"] < 100, calls.most_common(3)


escapes = st.lists(st.sampled_from(["\\", '"', "0", "3", "7", "8", "a", " ", "\\0", "\\37", "\\377", "\\400", "é"]),
                   max_size=12).map("".join)


@given(escapes)
def test_the_one_pass_reading_is_the_stdlibs(value: str) -> None:
    """T2: :func:`frameworks.unquote_cookie` reads every value as the stdlib's ``_unquote`` does."""
    reference = stdlib_cookies()._unquote
    for text in (value, f'"{value}"'):
        assert frameworks.unquote_cookie(text) == reference(text)


@pytest.mark.parametrize("make", [
    pytest.param(lambda path: os.mkfifo(path), id="fifo"),
    # /dev/null, not /dev/zero: a regression must fail this test, not fill the machine's memory.
    pytest.param(lambda path: path.symlink_to("/dev/null"), id="link-to-a-device"),
    pytest.param(lambda path: path.symlink_to(path), id="link-to-itself"),
    pytest.param(lambda path: path.mkdir(), id="folder"),
    pytest.param(lambda path: path.write_text("# " + "x" * (rules.MOST_FILE_BYTES + 1)), id="over-16-MiB"),
])
def test_a_gateway_toml_that_is_no_file_to_read_is_one_line(tmp_path: Path, make: Any) -> None:
    """T3: a SIGHUP (and a start) with the gateway.toml a FIFO, a link to ``/dev/zero`` or to
    itself, a folder, or a file of 16 MiB and more (a device: ``/dev/null`` read as an empty
    file, with no rules). Before: the FIFO held the reload's thread
    for ever on uvicorn, and Granian's main process, SIGTERM included, for the check's 120 s;
    ``/dev/zero`` grew uvicorn to 8.6 GB in 20 s; the loop was a RuntimeError and a traceback.
    Now each is one ConfigFileError line naming the file, read in no time and no memory."""
    path = tmp_path / "gateway.toml"
    make(path)
    with ThreadPoolExecutor(1) as pool:  # a read that blocks fails the test, not the run
        future = pool.submit(Config().with_file, path)
        try:
            with pytest.raises(ConfigFileError, match=r"^" + re.escape(str(path)) + r": [^\n]+$"):
                future.result(timeout=30)
        finally:
            if not future.done() and path.is_fifo():
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))  # let the blocked open return


FIRST = """
[apps]
first = "round3_first:app"

[[route]]
rule = "/r3/"
app = "first"
"""


@pytest.mark.parametrize(("code", "shown"), [
    pytest.param("import sys\nsys.exit(3)\n", "SystemExit: 3", id="sys-exit"),
    pytest.param("raise KeyboardInterrupt\n", "KeyboardInterrupt", id="keyboard-interrupt"),
    pytest.param("raise RuntimeError('boom')\n", "RuntimeError: boom", id="runtime-error"),
])
def test_a_reload_whose_app_exits_at_import_keeps_the_server_and_its_rules(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, code: str,
        shown: str) -> None:
    """T4: a SIGHUP with a gateway.toml whose new app calls ``sys.exit()`` at import (a
    module that refuses to start without its settings). Before, on uvicorn: the reload's
    task ended in SystemExit, and the server stopped: a full outage. Now one ERROR line
    naming the module, and the rules the server had answer on."""
    import asyncio
    import logging

    import httpx

    from gateway.serve.builder import build

    module = f"round3_{tmp_path.name.replace('-', '_')}"
    (tmp_path / "round3_first.py").write_text(
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n    return [b'first']\n")
    (tmp_path / f"{module}.py").write_text(code)
    path = tmp_path / "gateway.toml"
    path.write_text(FIRST)
    monkeypatch.syspath_prepend(str(tmp_path))
    app = build(Config().with_file(path), "asgi")

    async def sighup_then_get() -> httpx.Response:
        path.write_text(FIRST.replace("[apps]\n", f'[apps]\nsecond = "{module}:app"\n')
                        + '\n[[route]]\nrule = "/r3/second"\napp = "second"\n')
        await app.reload_later()
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            return await client.get("/r3/")

    try:
        with caplog.at_level(logging.ERROR, "gateway"):
            answer = asyncio.run(sighup_then_get())
        assert (answer.status_code, answer.text) == (200, "first")
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1, errors
        assert errors[0].startswith(f"{path} was not reloaded: ") and shown in errors[0], errors
        assert errors[0].endswith("The route rules stay as they were.")
    finally:
        app.executor.shutdown(wait=True)
        sys.modules.pop(module, None)


def test_a_warning_that_quotes_a_clients_path_writes_its_controls_escaped() -> None:
    """T5: ``POST /faults/echo%1B%5D0;PWNED%07%1B[2J%0A...`` whose body stops arriving. Before,
    on uvicorn and Granian: the 408's warning line wrote the path as decoded, so the
    operator's terminal took the escape sequences (a new window title, a cleared screen) and
    ``%0A`` began a forged line. Now the text log writes them escaped, as the access line
    does; a traceback keeps its lines."""
    import io
    import logging

    from gateway.observe.logs import logging_config

    handler_config = logging_config()["handlers"]["default"]
    formatter_config = dict(logging_config()["formatters"]["default"])
    factory = formatter_config.pop("()", logging.Formatter)  # as dictConfig builds it
    if "format" in formatter_config:
        formatter_config["fmt"] = formatter_config.pop("format")
    handler = logging.StreamHandler(stream := io.StringIO())
    handler.setFormatter(factory(**formatter_config))
    logger = logging.getLogger("gateway.round3")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        path = "/faults/echo\x1b]0;PWNED\x07\x1b[2J\n2026-12-05 INFO forged\u202e"
        record = logger.makeRecord("gateway", logging.WARNING, __file__, 0,
                                   "The request body of %s %s stopped arriving for %g s; answered 408.",
                                   ("POST", path, 1.0), None)
        record.request_id = "-"
        logger.handle(record)
        try:
            raise RuntimeError("a traceback")
        except RuntimeError:
            logger.exception("failed on %s", "/x\x1b[2J", extra={"request_id": "-"})
    finally:
        logger.removeHandler(handler)
    written = stream.getvalue()
    assert handler_config["formatter"] == "default"
    assert "\x1b" not in written and "\x07" not in written and "\u202e" not in written
    lines = written.splitlines()
    assert lines[0].endswith("The request body of POST /faults/echo\\x1b]0;PWNED\\x07\\x1b[2J\\n2026-12-05 INFO "
                             "forged\\u202e stopped arriving for 1 s; answered 408.")
    assert lines[1].endswith("failed on /x\\x1b[2J") and lines[2] == "Traceback (most recent call last):"


def test_gateway_routes_writes_a_rules_and_a_paths_controls_escaped(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """T6: a gateway.toml (from someone else's change) whose rule holds ``\\x1b]0;PWNED\\x07``,
    and ``gateway routes --explain`` of a path holding it. Before: both printed as they
    were, to the operator's terminal (``gateway routes``, ``--explain``, the banner of
    ``gateway serve`` and its errors). Now written escaped."""
    from click.testing import CliRunner

    from gateway.serve.cli import cli

    (tmp_path / "round3_esc.py").write_text(
        "def app(environ, start_response):\n    start_response('200 OK', [])\n    return [b'']\n")
    path = tmp_path / "gateway.toml"
    path.write_text('[apps]\nesc = "round3_esc:app"\n\n[[route]]\nrule = "/z\\u001b]0;PWNED\\u0007/<path:p>"\n'
                    'app = "esc"\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    runner = CliRunner()
    listed = runner.invoke(cli, ["routes", "--config", str(path)])
    explained = runner.invoke(cli, ["routes", "--config", str(path), "--explain", "/q\x1b]0;T\x07/a\u202e"])
    assert (listed.exit_code, explained.exit_code) == (0, 0), (listed.output, explained.output)
    for output in (listed.output, explained.output):
        assert "\x1b" not in output and "\x07" not in output and "\u202e" not in output
    assert "/z\\x1b]0;PWNED\\x07/<path:p>" in listed.output
    assert "GET /q\\x1b]0;T\\x07/a\\u202e matches no rule" in explained.output


CANARIED = """
[apps]
old = "round3_canary:old"
new = "round3_canary:new"

[[route]]
rule = "/c/"
app = "old"
canary = { app = "new", share = 50, header = "X-User" }

[[route]]
rule = "/k/"
app = "old"
canary = { app = "new", share = 50 }
"""


@pytest.mark.parametrize("entry", ["wsgi", "asgi"])
@pytest.mark.parametrize(("path", "varies_by"), [("/c/", "x-user"), ("/k/", "cookie")])
def test_a_canary_rules_answer_says_what_it_varies_by(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str,
                                                      varies_by: str, entry: str) -> None:
    """T9: a canary rule chooses the app by a request header (``header = "X-User"``) or by the
    ``gateway_canary`` cookie, and its answer says nothing of it: apps that set no ``Vary``
    (these two, Flask unless the session is read) let a shared cache (nginx's
    ``proxy_cache``, a CDN) keep one client's app's page and give it to the others. The
    answer should carry ``Vary`` naming what chose it."""
    import asyncio

    import httpx

    from gateway.serve.builder import build

    (tmp_path / "round3_canary.py").write_text(
        "def page(name):\n"
        "    def app(environ, start_response):\n"
        "        start_response('200 OK', [('Content-Type', 'text/plain'), ('Cache-Control', 'public, max-age=60')])\n"
        "        return [name.encode()]\n"
        "    return app\n\nold = page('old')\nnew = page('new')\n")
    path_file = tmp_path / "gateway.toml"
    path_file.write_text(CANARIED)
    monkeypatch.syspath_prepend(str(tmp_path))
    app = build(Config().with_file(path_file), entry)
    asks = [{"X-User": f"user{i}", "Cookie": f"gateway_canary={i:032x}"} for i in range(20)]

    async def answers() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            return [await client.get(path, headers=headers) for headers in asks]

    if entry == "asgi":
        try:
            got = asyncio.run(answers())
        finally:
            app.executor.shutdown(wait=True)
    else:
        from werkzeug.test import Client

        client = Client(app, use_cookies=False)
        got = [httpx.Response(r.status_code, headers=list(r.headers.items()), content=r.get_data())
               for r in (client.get(path, base_url="http://localhost", headers=headers) for headers in asks)]
    assert {answer.text for answer in got} == {"old", "new"}  # both apps answer, by client
    for answer in got:
        varies = {v.strip().lower() for v in ",".join(answer.headers.get_list("vary")).split(",")}
        assert varies_by in varies or "*" in varies, (answer.text, answer.headers)
