"""The access log: written from its own thread, the same lines as ``logging`` would write."""

from __future__ import annotations

import io
import json
import logging
import logging.config
import threading
import time
from collections.abc import Iterator

import pytest

from gateway.observe import logs as logs_module
from gateway.observe.logs import TEXT_FORMAT, AccessHandler, AccessLog, access, configure_logging, logging_config

ENTRIES = [
    (1764366000.0421, "rid-1", "127.0.0.1", "GET", "/flask/?name=Ada", "HTTP/1.1", 200, 687, 1.25, "/flask"),
    (1764366000.9999, "rid-2", "-", "POST", "/caf\xc3\xa9", "HTTP/1.0", 413, 0, 0.049, "-"),
    (1764366001.5, "rid-3", "2001:db8::1", "GET", '/"quoted"\\', "HTTP/2", 500, 21, 1234.5678, "/django"),
]


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put back the loggers that logging_config() changes, as they were."""
    names = [None, "gateway.access", "uvicorn", "uvicorn.error", "uvicorn.access", "_granian", "_granian.asgi.io",
             "granian.access"]
    saved = [(logger, logger.handlers[:], logger.level, logger.propagate, logger.filters[:])
             for logger in map(logging.getLogger, names)]
    yield
    for logger, handlers, level, propagate, filters in saved:
        logger.handlers, logger.propagate, logger.filters = handlers, propagate, filters
        logger.setLevel(level)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_batched_lines_are_what_logging_writes(restore_logging: None, fmt: str) -> None:
    logging.config.dictConfig(logging_config("info", fmt, True))
    (handler,) = logging.getLogger("gateway.access").handlers
    assert isinstance(handler, AccessHandler)
    fast, slow = io.StringIO(), io.StringIO()
    handler.setStream(fast)
    handler.write_entries(ENTRIES)
    handler.setStream(slow)
    for entry in ENTRIES:
        handler.handle(access.record(entry))
    assert fast.getvalue() == slow.getvalue()
    lines = fast.getvalue().splitlines()
    assert len(lines) == 3
    if fmt == "json":
        first = json.loads(lines[0])
        assert (first["request_id"], first["status"], first["bytes"], first["duration_ms"], first["mount"]) == (
            "rid-1", 200, 687, 1.25, "/flask")
        assert first["message"] == '127.0.0.1 "GET /flask/?name=Ada HTTP/1.1" 200 687 1.2ms /flask'
    else:
        assert lines[0].endswith(',042 INFO gateway.access [rid-1] 127.0.0.1 "GET /flask/?name=Ada HTTP/1.1" '
                                 "200 687 1.2ms /flask")
        assert ",999 INFO" in lines[1] and "1234.6ms /django" in lines[2]


def test_another_formatter_gets_ordinary_records(restore_logging: None) -> None:
    logging.config.dictConfig(logging_config("info", "text", True))
    (handler,) = logging.getLogger("gateway.access").handlers
    handler.setFormatter(logging.Formatter("%(levelname)s|%(request_id)s|%(status)s|%(message)s"))
    stream = io.StringIO()
    handler.setStream(stream)
    handler.write_entries(ENTRIES[:1])
    assert stream.getvalue() == 'INFO|rid-1|200|127.0.0.1 "GET /flask/?name=Ada HTTP/1.1" 200 687 1.2ms /flask\n'


def test_a_logger_configured_otherwise_gets_records(restore_logging: None) -> None:
    """Someone else's logging configuration: the access records reach their handlers."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("tests.access.custom")
    logger.handlers, logger.propagate = [Keep()], False
    log = AccessLog(logger, interval=0.01)
    log.put(ENTRIES[0])
    log.put(ENTRIES[1])
    log.flush()
    assert [(r.request_id, r.status, r.created, r.threadName) for r in records] == [  # type: ignore[attr-defined]
        ("rid-1", 200, ENTRIES[0][0], "gateway-access-log"), ("rid-2", 413, ENTRIES[1][0], "gateway-access-log")]
    assert records[0].getMessage() == '127.0.0.1 "GET /flask/?name=Ada HTTP/1.1" 200 687 1.2ms /flask'
    log.close()
    assert log.thread is not None and not log.thread.is_alive()


def test_entries_are_written_in_order_from_many_threads(restore_logging: None) -> None:
    logger = logging.getLogger("tests.access.order")
    stream = io.StringIO()
    handler = AccessHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    logger.handlers, logger.propagate = [handler], False
    log = AccessLog(logger, interval=0.001)

    def put(thread: int) -> None:
        for i in range(500):
            log.put((time.time(), f"t{thread}-{i}", "c", "GET", "/", "HTTP/1.1", 200, i, 0.1, "-"))

    threads = [threading.Thread(target=put, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.flush()
    ids = [line.split("[", 1)[1].split("]", 1)[0] for line in stream.getvalue().splitlines()]
    assert len(ids) == 2000
    for n in range(4):
        mine = [int(i.split("-")[1]) for i in ids if i.startswith(f"t{n}-")]
        assert mine == list(range(500))
    log.close()


def test_a_failing_handler_does_not_stop_the_log(restore_logging: None, caplog: pytest.LogCaptureFixture) -> None:
    written: list[str] = []

    class Flaky(AccessHandler):
        def write_entries(self, entries: list, name: str = "gateway.access") -> None:  # type: ignore[type-arg]
            if entries[0][1] == "boom":
                raise OSError("disk full")
            written.extend(e[1] for e in entries)

    logger = logging.getLogger("tests.access.flaky")
    logger.handlers, logger.propagate = [Flaky()], False
    log = AccessLog(logger, interval=0.001)
    with caplog.at_level(logging.ERROR, logger="gateway"):
        log.put((time.time(), "boom", "c", "GET", "/", "HTTP/1.1", 200, 0, 0.1, "-"))
        log.flush()
        log.put((time.time(), "after", "c", "GET", "/", "HTTP/1.1", 200, 0, 0.1, "-"))
        log.flush()
    assert written == ["after"]
    assert [r.getMessage() for r in caplog.records if r.name == "gateway"] == ["Could not write the access log."]
    log.close()


def test_close_writes_what_is_queued(restore_logging: None) -> None:
    logger = logging.getLogger("tests.access.close")
    stream = io.StringIO()
    handler = AccessHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    logger.handlers, logger.propagate = [handler], False
    log = AccessLog(logger, interval=60)  # only close() can end the wait
    for i in range(3):
        log.put((time.time(), f"r{i}", "c", "GET", "/", "HTTP/1.1", 200, 0, 0.1, "-"))
    log.close()
    assert [line.split("[")[1][:2] for line in stream.getvalue().splitlines()] == ["r0", "r1", "r2"]


def test_json_lines_keep_extra_fields_and_exceptions() -> None:
    from gateway.observe.logs import REQUEST_ID, JSONFormatter, RequestIdFilter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JSONFormatter())
    handler.addFilter(RequestIdFilter())
    logger = logging.getLogger("tests.json-extra")
    logger.addHandler(handler)
    logger.propagate = False
    token = REQUEST_ID.set("rid-1")
    try:
        logger.warning("signed in %s", "ada", extra={"user_id": 7, "roles": ["staff"]})
        try:
            raise ZeroDivisionError("nope")
        except ZeroDivisionError:
            logger.exception("failed")
    finally:
        REQUEST_ID.reset(token)
        logger.removeHandler(handler)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert list(first)[:5] == ["time", "level", "logger", "message", "request_id"]
    assert (first["level"], first["logger"], first["message"], first["request_id"]) == (
        "WARNING", "tests.json-extra", "signed in ada", "rid-1")
    assert (first["user_id"], first["roles"]) == (7, ["staff"])
    assert first["time"].endswith("+00:00") and len(first["time"]) == len("2026-11-30T17:43:12.797+00:00")
    assert second["message"] == "failed" and second["exc_info"].endswith("ZeroDivisionError: nope")


def poll(check: object, seconds: float = 5.0) -> bool:
    """Poll ``check()`` until it is true or ``seconds`` pass."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.005)
    return False


def keeping_logger(name: str) -> tuple[logging.Logger, list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger(name)
    logger.handlers, logger.propagate = [Keep()], False
    return logger, records


def test_entries_are_written_without_a_flush_and_after_a_close(restore_logging: None) -> None:
    logger, records = keeping_logger("tests.access.interval")
    log = AccessLog(logger, interval=0.01)
    log.flush()  # no thread yet: returns at once
    log.close()
    assert log.thread is None
    log.put(ENTRIES[0])
    assert log.thread is not None and log.thread.daemon and log.thread.name == "gateway-access-log"
    assert poll(lambda: len(records) == 1)  # the thread writes each interval, unasked
    log.close()
    assert not log.thread.is_alive()
    log.put(ENTRIES[1])  # a new thread, after the old one ended
    log.flush()
    assert [r.request_id for r in records] == ["rid-1", "rid-2"]  # type: ignore[attr-defined]
    assert (records[0].pathname, records[0].lineno) == (logs_module.__file__, 0)  # no caller to look up
    log.close()


def test_enabled_follows_the_access_loggers_level(restore_logging: None) -> None:
    logger, _ = keeping_logger("tests.access.level")
    log = AccessLog(logger)
    logger.setLevel(logging.INFO)
    assert log.enabled()
    logger.setLevel(logging.WARNING)
    assert not log.enabled()


def test_the_batched_handler_names_its_logger_and_keeps_a_date_format(restore_logging: None) -> None:
    from gateway.observe.logs import TEXT_FORMAT

    logger = logging.getLogger("tests.access.named")
    stream = io.StringIO()
    handler = AccessHandler(stream)
    handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    logger.handlers, logger.propagate = [handler], False
    log = AccessLog(logger)
    log.write(ENTRIES[:1])
    assert " INFO tests.access.named [rid-1] " in stream.getvalue()
    stream.seek(0), stream.truncate()
    handler.setFormatter(logging.Formatter(TEXT_FORMAT, datefmt="%H:%M"))
    handler.write_entries(ENTRIES[:1], "other.name")
    line = stream.getvalue()
    assert line[2] == ":" and line[5] == " " and " INFO other.name [rid-1] " in line
    stream.seek(0), stream.truncate()
    handler.setFormatter(None)  # type: ignore[arg-type]
    handler.write_entries(ENTRIES[:1], "other.name")
    assert stream.getvalue() == '127.0.0.1 "GET /flask/?name=Ada HTTP/1.1" 200 687 1.2ms /flask\n'
    stream.seek(0), stream.truncate()
    handler.setFormatter(logging.Formatter("%(name)s %(request_id)s"))
    handler.write_entries(ENTRIES[:1], "other.name")
    assert stream.getvalue() == "other.name rid-1\n"


def test_drop_message_drops_only_what_starts_so() -> None:
    from gateway.observe.logs import DropMessage

    drop = DropMessage("ASGI 'lifespan'")
    assert not drop.filter(logging.makeLogRecord({"msg": "ASGI 'lifespan' protocol appears unsupported."}))
    assert drop.filter(logging.makeLogRecord({"msg": "Started server process"}))


def test_a_json_line_outside_a_request_has_a_dash_and_no_colour() -> None:
    from gateway.observe.logs import JSONFormatter

    record = logging.makeLogRecord({"name": "uvicorn.error", "levelname": "INFO", "msg": "Started %s",
                                    "args": ("x",), "color_message": "\x1b[1mStarted\x1b[0m %s"})
    line = json.loads(JSONFormatter().format(record))
    assert (line["message"], line["request_id"], line["logger"], line["level"]) == (
        "Started x", "-", "uvicorn.error", "INFO")
    assert "color_message" not in line


@pytest.mark.parametrize(("level", "access", "root", "access_level"), [
    ("trace", True, logging.DEBUG, logging.INFO), ("TRACE", True, logging.DEBUG, logging.INFO),
    ("debug", True, logging.DEBUG, logging.INFO), ("info", True, logging.INFO, logging.INFO),
    ("info", False, logging.INFO, logging.WARNING), ("warning", True, logging.WARNING, logging.WARNING),
])
def test_logging_config_sets_the_levels(restore_logging: None, level: str, access: bool, root: int,
                                        access_level: int) -> None:
    from gateway.observe.logs import configure_logging

    configure_logging(level, "text", access)
    assert logging.getLogger().level == root
    assert logging.getLogger("gateway.access").level == access_level
    assert (logging.getLogger("uvicorn").level, logging.getLogger("uvicorn.error").level) == (root, root)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_logging_config_routes_every_logger_to_one_stderr_handler(restore_logging: None, fmt: str,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    from gateway.observe.logs import REQUEST_ID, JSONFormatter, RequestIdFilter, configure_logging

    existing = logging.getLogger("tests.existing-before-config")
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):  # as uvicorn's own LOGGING_CONFIG leaves them
        logging.getLogger(name).handlers, logging.getLogger(name).propagate = [logging.NullHandler()], False
    configure_logging("info", fmt, True)
    assert logging.getLogger("uvicorn.access").handlers == []
    assert not existing.disabled
    (root,) = logging.getLogger().handlers
    assert root.stream is sys.stderr and [type(f) for f in root.filters] == [RequestIdFilter]  # type: ignore[attr-defined]
    assert isinstance(root.formatter, JSONFormatter) if fmt == "json" else root.formatter._fmt == (  # type: ignore[union-attr]
        "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
    (access_handler,) = logging.getLogger("gateway.access").handlers
    assert isinstance(access_handler, AccessHandler) and access_handler.stream is sys.stderr
    assert [type(f) for f in access_handler.filters] == [RequestIdFilter]
    for name in ("uvicorn", "uvicorn.error"):
        assert (logging.getLogger(name).handlers, logging.getLogger(name).propagate) == ([], True)
    assert (logging.getLogger("uvicorn.access").level, logging.getLogger("uvicorn.access").propagate,
            logging.getLogger("gateway.access").propagate) == (logging.WARNING, False, False)
    token = REQUEST_ID.set("rid-9")
    try:
        logging.getLogger("uvicorn.error").info("hello %s", "there")
    finally:
        REQUEST_ID.reset(token)
    line = capsys.readouterr().err.strip()
    if fmt == "json":
        assert (json.loads(line)["message"], json.loads(line)["request_id"]) == ("hello there", "rid-9")
    else:
        assert line.endswith(" INFO uvicorn.error [rid-9] hello there")


def test_configure_logging_if_unset_leaves_a_configured_root(restore_logging: None) -> None:
    from gateway.observe.logs import JSONFormatter, configure_logging_if_unset

    mine = logging.NullHandler()
    logging.getLogger().handlers = [mine]
    configure_logging_if_unset("json")
    assert logging.getLogger().handlers == [mine]
    logging.getLogger().handlers = []
    configure_logging_if_unset("json", access=False)
    (handler,) = logging.getLogger().handlers
    assert isinstance(handler.formatter, JSONFormatter)
    assert logging.getLogger("gateway.access").level == logging.WARNING
    logging.getLogger().handlers = []
    configure_logging_if_unset()
    (handler,) = logging.getLogger().handlers
    assert not isinstance(handler.formatter, JSONFormatter) and handler.formatter._fmt == TEXT_FORMAT  # type: ignore[union-attr]
    assert (logging.getLogger().level, logging.getLogger("gateway.access").level) == (logging.INFO, logging.INFO)


def test_configure_logging_by_default_is_info_text_and_access(restore_logging: None) -> None:
    configure_logging()
    (handler,) = logging.getLogger().handlers
    assert handler.formatter._fmt == TEXT_FORMAT  # type: ignore[union-attr]
    assert (logging.getLogger().level, logging.getLogger("gateway.access").level) == (logging.INFO, logging.INFO)


def test_granians_line_for_each_message_to_a_client_that_left_is_dropped(
        restore_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    """Granian logs "ASGI transport error" at INFO for each body message sent after its
    client left (pyo3-log, logger ``_granian.asgi.io``); its other lines still go out.
    The configuration applied as Granian applies it in its worker (``log_dictconfig``)."""
    from granian.log import LogLevels
    from granian.log import configure_logging as granian_configure_logging

    granian_configure_logging(LogLevels.info)  # Granian's own, as a start in this process leaves it
    granian_configure_logging(LogLevels.info, logging_config("info", "text", True))
    granian = logging.getLogger("_granian.asgi.io")
    granian.info('ASGI transport error: "Closed(..)"')
    granian.info("Cannot open file /srv/missing")
    out, err = capsys.readouterr()
    assert "transport error" not in out + err
    assert out == "" and err.count("\n") == 1
    assert " INFO _granian.asgi.io [" in err and "] Cannot open file /srv/missing\n" in err
