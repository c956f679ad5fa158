"""Apps that show what request ID they were given."""

from __future__ import annotations

import logging

from django.http import HttpRequest, JsonResponse
from django.urls import include, path
from flask import Flask, request

from gateway.core.pipeline import REQUEST_ID

flask_app = Flask(__name__)


@flask_app.get("/")
def flask_rid() -> dict[str, str]:
    """Report the request ID in the headers and in the logging context."""
    logging.getLogger("tests.rid").warning("flask saw a request")
    return {"header": request.headers.get("X-Request-ID", ""), "context": REQUEST_ID.get()}


def django_rid(request: HttpRequest) -> JsonResponse:
    """Report the request ID in Django's request and in the logging context."""
    return JsonResponse({"header": request.headers.get("X-Request-ID", ""), "context": REQUEST_ID.get()})


urlpatterns = [path("rid/", django_rid), path("", include("django_hello.urls"))]


@flask_app.get("/boom")
def flask_boom() -> str:
    """Fail with an unhandled exception."""
    raise RuntimeError("boom from the request-ID test app")
