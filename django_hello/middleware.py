"""Middleware of the django_hello project."""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.db import DatabaseError, InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse

logger = logging.getLogger("django_hello")


class DatabaseUnavailableMiddleware:
    """Answer 503 when the database cannot be reached or is locked, not a 500.

    A missing, locked or stopped database is the server's trouble, not a bug in a view:
    say so in one log line and let the client retry.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, (OperationalError, InterfaceError)) and type(exception) is not DatabaseError:
            return None
        logger.warning("Database unavailable for %s: %s", request.path, str(exception).strip()[:200])
        response = HttpResponse(
            "Service Unavailable: the database cannot be reached; try again shortly.\n",
            status=503,
            content_type="text/plain; charset=utf-8",
        )
        response["Retry-After"] = "5"
        return response
