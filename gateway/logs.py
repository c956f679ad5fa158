"""One log format for the gateway, both apps and the server, with request IDs.

Text (default)::

    2026-11-23 21:40:01,123 INFO gateway.access [5f0c...] 127.0.0.1 "GET /flask/" 200 424 1.3ms /flask

JSON (``--log-format json``): one object a line with ``time``, ``level``, ``logger``,
``message``, ``request_id``, the access fields (``client``, ``method``, ``path``,
``status``, ``bytes``, ``duration_ms``, ``mount``) and ``exc_info`` when there is one.
"""

from __future__ import annotations

import json
import logging
import logging.config
from datetime import UTC, datetime
from typing import Any

from gateway.pipeline import REQUEST_ID

ACCESS_FIELDS = ("client", "method", "path", "status", "bytes", "duration_ms", "mount")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


class RequestIdFilter(logging.Filter):
    """Put the current request's ID on every record (``-`` outside requests)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        return True


class JSONFormatter(logging.Formatter):
    """Format a record as one JSON object."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        for name in ACCESS_FIELDS:
            if hasattr(record, name):
                data[name] = getattr(record, name)
        if record.exc_info:
            data["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(data)


def logging_config(level: str = "info", fmt: str = "text", access: bool = True) -> dict[str, Any]:
    """Return a ``dictConfig`` for the root logger, uvicorn's loggers and the access log.

    The access log is written at INFO: a higher ``level`` turns it off, as does
    ``access=False``; then the gateway skips building the line altogether.
    """
    level = "DEBUG" if level.lower() == "trace" else level.upper()
    access_level = "INFO" if access and logging.getLevelName(level) <= logging.INFO else "WARNING"
    formatter: dict[str, Any] = (
        {"()": JSONFormatter} if fmt == "json" else {"format": TEXT_FORMAT}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": {"default": formatter},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "default",
                "filters": ["request_id"],
            }
        },
        "root": {"handlers": ["default"], "level": level},
        "loggers": {
            # The gateway writes the one access line; the server's own is off.
            "uvicorn": {"handlers": [], "level": level, "propagate": True},
            "uvicorn.error": {"handlers": [], "level": level, "propagate": True},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "gateway.access": {"handlers": [], "level": access_level, "propagate": True},
        },
    }


def configure_logging(level: str = "info", fmt: str = "text", access: bool = True) -> None:
    """Apply :func:`logging_config`."""
    logging.config.dictConfig(logging_config(level, fmt, access))


def configure_logging_if_unset(fmt: str = "text", access: bool = True) -> None:
    """Apply the gateway's logging when nothing has configured the root logger yet."""
    if not logging.getLogger().handlers:
        configure_logging("info", fmt, access)
