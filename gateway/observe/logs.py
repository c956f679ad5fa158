"""One log format for the gateway, both apps and the server, with request IDs.

Text (default)::

    2026-11-23 21:40:01,123 INFO gateway.access [5f0c...] 127.0.0.1 "GET /flask/" 200 424 1.3ms /flask

JSON (``--log-format json``): one object a line with ``time``, ``level``, ``logger``,
``message``, ``request_id``, the access fields (``client``, ``method``, ``path``,
``status``, ``bytes``, ``duration_ms``, ``mount``) and ``exc_info`` when there is one.
"""

from __future__ import annotations

import atexit
import json
import logging
import logging.config
import multiprocessing.util
import os
import queue
import threading
import time
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from pythonjsonlogger.json import JsonFormatter

#: The current request's ID, for log records and for apps that want it.
REQUEST_ID: ContextVar[str] = ContextVar("request_id", default="-")

ACCESS_FIELDS = ("client", "method", "path", "status", "bytes", "duration_ms", "mount")
ACCESS_FORMAT = '%s "%s %s %s" %d %d %.1fms %s'

# One access-log entry, as the request leaves it: created (time.time()), request ID,
# client, method, target, protocol, status, size, duration in ms, mount.
AccessEntry = tuple[float, str, str, str, str, str, int, int, float, str]


class AccessLog:
    """The access log, written from a background thread.

    A request only appends a tuple to a queue; a thread of the log's own wakes every
    ``interval`` seconds and writes what has gathered: through :class:`AccessHandler` in
    one write, or as ordinary ``logging`` records (``gateway.access``, with the request's
    time and ID) for any other configuration. Measured in process with
    ``bench/ceiling.py`` (alternating batches, 3 rounds), a record made and written in
    the request's thread, one write a line, left the Flask hello page 0.74-0.78x of its
    speed; this way, 0.88-0.92x. Entries are written in order; :meth:`flush` waits for
    those queued so far, and :meth:`close` (at exit) writes what is left.
    """

    def __init__(self, logger: logging.Logger, interval: float = 0.05) -> None:
        self.logger = logger
        self.interval = interval
        self._reset()
        os.register_at_fork(after_in_child=self._reset)
        atexit.register(self.close)
        # A multiprocessing worker (Granian's) ends with os._exit after its finalizers:
        # atexit does not run there, this does.
        multiprocessing.util.Finalize(self, self.close, exitpriority=0)

    def _reset(self) -> None:
        self.queue: queue.SimpleQueue[AccessEntry | threading.Event | None] = queue.SimpleQueue()
        self.thread: threading.Thread | None = None
        #: Whether the writer thread runs: set when it starts, cleared as it ends. Read on
        #: every request in place of ``Thread.is_alive()``, three calls in Python (2,800
        #: instructions a request, callgrind).
        self.writing = False
        self.lock = threading.Lock()
        self.wake = threading.Event()

    def enabled(self) -> bool:
        """True if access lines are written at all (the logger takes INFO)."""
        return self.logger.isEnabledFor(logging.INFO)

    def put(self, entry: AccessEntry) -> None:
        """Queue one entry for the writer thread, starting it the first time."""
        if not self.writing:
            with self.lock:
                if not self.writing:
                    if self.thread is not None:  # closed, and ending: a new one takes over
                        self.thread.join()
                    self.thread = threading.Thread(target=self._run, name="gateway-access-log", daemon=True)
                    self.writing = True
                    try:
                        self.thread.start()
                    except BaseException:  # no thread at the interpreter's exit: none runs
                        self.writing = False
                        raise
        self.queue.put(entry)

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until every entry queued so far is written."""
        if self.thread is not None and self.thread.is_alive():
            done = threading.Event()
            self.queue.put(done)
            self.wake.set()
            done.wait(timeout)

    def close(self) -> None:
        """Write what is queued and stop the thread (at exit)."""
        if self.thread is not None and self.thread.is_alive():
            self.queue.put(None)
            self.wake.set()
            self.thread.join(5.0)

    def _run(self) -> None:
        try:
            self._write_batches()
        finally:
            self.writing = False

    def _write_batches(self) -> None:
        while True:
            batch = [self.queue.get()]
            # Let entries gather, then write them together: one at a time, as each
            # arrives, costs as much as writing them in the request's thread.
            self.wake.wait(self.interval)
            self.wake.clear()
            while True:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            entries = [e for e in batch if isinstance(e, tuple)]
            try:
                if entries:
                    self.write(entries)
            except Exception:  # a broken handler must not stop the log
                logging.getLogger("gateway").exception("Could not write the access log.")
            for entry in batch:
                if isinstance(entry, threading.Event):
                    entry.set()
            if None in batch:
                return

    def write(self, entries: list[AccessEntry]) -> None:
        """Write ``entries``: straight to the gateway's own handler, else as records."""
        handlers = self.logger.handlers
        if (len(handlers) == 1 and isinstance(handlers[0], AccessHandler) and not self.logger.propagate
                and not self.logger.filters and handlers[0].level <= logging.INFO):
            handlers[0].write_entries(entries, self.logger.name)
            return
        for entry in entries:
            self.emit(entry)

    def emit(self, entry: AccessEntry) -> None:
        """Make the record of ``entry`` and hand it to the logger's handlers."""
        self.logger.handle(self.record(entry))

    def record(self, entry: AccessEntry, name: str | None = None) -> logging.LogRecord:
        """The ``logging`` record of ``entry`` (for logger ``name``), with the request's time and ID."""
        created, rid, client, method, target, protocol, status, size, duration, mount = entry
        record = self.logger.makeRecord(
            name or self.logger.name, logging.INFO, __file__, 0, ACCESS_FORMAT,
            (client, method, target, protocol, status, size, duration, mount), None,
            extra={"client": client, "method": method, "path": target, "status": status, "bytes": size,
                   "duration_ms": round(duration, 2), "mount": mount, "request_id": rid},
        )
        record.created = created
        record.msecs = (created - int(created)) * 1000
        return record


access = AccessLog(logging.getLogger("gateway.access"))
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
#: :data:`TEXT_FORMAT` of an access entry's record, at INFO.
_TEXT_LINE = "%s,%03d INFO %s [%s] " + ACCESS_FORMAT


class AccessHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The access log's handler: a ``StreamHandler`` that also takes entries in batches.

    :meth:`write_entries` writes exactly what formatting each entry's record with the
    text or JSON formatter of :func:`logging_config` would (``tests/integration/test_logs.py`` holds
    the two equal), without making the records, with one ``strftime`` a second and one
    write a batch. With any other formatter it makes the records, as any handler would.
    """

    _second = -1
    _asctime = ""

    def write_entries(self, entries: list[AccessEntry], name: str = "gateway.access") -> None:
        """Write ``entries`` as this handler's formatter would for logger ``name``, in one write."""
        formatter = self.formatter
        if isinstance(formatter, JSONFormatter):
            lines = [json_line(entry, name) for entry in entries]
        elif formatter is not None and formatter._fmt == TEXT_FORMAT and formatter.datefmt is None:
            lines = [self.text_line(entry, name) for entry in entries]
        else:
            for entry in entries:
                self.handle(access.record(entry, name))
            return
        with self.lock:  # type: ignore[union-attr]
            self.stream.write(self.terminator.join(lines) + self.terminator)
            self.flush()

    def text_line(self, entry: AccessEntry, name: str) -> str:
        """The line :data:`TEXT_FORMAT` gives an entry's record."""
        created, rid, client, method, target, protocol, status, size, duration, mount = entry
        second = int(created)
        if second != self._second:  # one strftime a second, not one a line
            self._second, self._asctime = second, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        # One % with every field: an f-string of them cost 1,000 instructions more a line
        # (callgrind); %03d truncates the milliseconds as logging's %(msecs)03d does.
        return _TEXT_LINE % (self._asctime, (created - second) * 1000, name, rid, client, method, target, protocol,
                             status, size, duration, mount)


def json_line(entry: AccessEntry, name: str) -> str:
    """The line :class:`JSONFormatter` gives an entry's record."""
    created, rid, client, method, target, protocol, status, size, duration, mount = entry
    return json.dumps({
        "time": datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds"),
        "level": "INFO", "logger": name,
        "message": f'{client} "{method} {target} {protocol}" {status} {size} {duration:.1f}ms {mount}',
        "request_id": rid, "client": client, "method": method, "path": target, "status": status, "bytes": size,
        "duration_ms": round(duration, 2), "mount": mount,
    })


class DropMessage(logging.Filter):
    """Drop the records whose message starts with ``start`` (a third party's known notice)."""

    def __init__(self, start: str) -> None:
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.start)


class RequestIdFilter(logging.Filter):
    """Put the current request's ID on every record (``-`` outside requests)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        return True


class GranianClientGoneFilter(logging.Filter):
    """Drop Granian's "ASGI transport error" records: a client that went away.

    Granian (2.8, ``src/asgi/io.rs``) takes a body message for a connection that has
    closed without an error, and logs one of these INFO lines for each: 80 lines for each
    slow reader of a large page that hung up, 24,000 for 300 of them (measured). The
    gateway learns of the leaving from ``http.disconnect`` and stops sending.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("ASGI transport error")


def printable(text: str) -> str:
    """``text`` with each character that does not print (a control, a bidi override) escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class TextFormatter(logging.Formatter):
    """The text log's formatter: what a record's message holds that does not print is
    written escaped (``\\x1b``, ``\\n``), since messages quote what clients sent (a path
    with ``%1B]0;...%07`` set the operator's terminal title from a warning, and ``%0A``
    starts a line of its own). A traceback, after the message, keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record))


class JSONFormatter(JsonFormatter):
    """One JSON object a record: python-json-logger's formatter, with the gateway's keys first.

    ``time`` (UTC, milliseconds), ``level``, ``logger``, ``message`` and ``request_id``,
    then every ``extra=`` field of the record (the access fields among them), and
    ``exc_info`` when there is one.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("fmt", "%(message)s")
        super().__init__(*args, **kwargs)

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        log_data["time"] = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        log_data["level"] = record.levelname
        log_data["logger"] = record.name
        log_data["message"] = record.getMessage()
        log_data["request_id"] = getattr(record, "request_id", "-")
        super().add_fields(log_data, record, message_dict)
        # Uvicorn's coloured copy of its message is for terminals only.
        log_data.pop("color_message", None)


def logging_config(level: str = "info", fmt: str = "text", access: bool = True) -> dict[str, Any]:
    """Return a ``dictConfig`` for the root logger, uvicorn's loggers and the access log.

    The access log is written at INFO: a higher ``level`` turns it off, as does
    ``access=False``; then the gateway skips building the line altogether.
    """
    level = "DEBUG" if level.lower() == "trace" else level.upper()
    access_level = "INFO" if access and logging.getLevelName(level) <= logging.INFO else "WARNING"
    formatter: dict[str, Any] = (
        {"()": JSONFormatter} if fmt == "json" else {"()": TextFormatter, "fmt": TEXT_FORMAT}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}, "client_gone": {"()": GranianClientGoneFilter}},
        "formatters": {"default": formatter},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "default",
                "filters": ["request_id"],
            },
            "access": {
                "class": "gateway.observe.logs.AccessHandler",
                "stream": "ext://sys.stderr",
                "formatter": "default",
                "filters": ["request_id"],
            },
        },
        "root": {"handlers": ["default"], "level": level},
        "loggers": {
            # The gateway writes the one access line; the server's own is off.
            "uvicorn": {"handlers": [], "level": level, "propagate": True},
            "uvicorn.error": {"handlers": [], "level": level, "propagate": True},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "gateway.access": {"handlers": ["access"], "level": access_level, "propagate": False},
            # Granian's own lines go to the one handler too (its level is Granian's to set).
            "_granian": {"handlers": [], "propagate": True},
            "_granian.asgi.io": {"filters": ["client_gone"]},
        },
    }


def configure_logging(level: str = "info", fmt: str = "text", access: bool = True) -> None:
    """Apply :func:`logging_config`."""
    logging.config.dictConfig(logging_config(level, fmt, access))


def configure_logging_if_unset(fmt: str = "text", access: bool = True) -> None:
    """Apply the gateway's logging when nothing has configured the root logger yet."""
    if not logging.getLogger().handlers:
        configure_logging("info", fmt, access)
