"""django_hello's URLs plus test views under ``test/``: echo, slow, boom, stream, db, save."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from typing import Any

from django.core.signals import request_finished
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.urls import include, path
from django.views.decorators.csrf import csrf_exempt

from django_hello.models import Greeting
from tests.apps import record


@csrf_exempt
def echo(request: HttpRequest) -> HttpResponse:
    """Answer the length and SHA-256 of the request body, read as a stream."""
    record("django-echo-called")
    digest = hashlib.sha256()
    length = 0
    while chunk := request.read(65536):
        digest.update(chunk)
        length += len(chunk)
    return JsonResponse({"length": length, "sha256": digest.hexdigest()})


@csrf_exempt
def form(request: HttpRequest) -> HttpResponse:
    """Answer the number of form fields parsed from the body."""
    return JsonResponse({"fields": len(request.POST), "files": len(request.FILES)})


def slow(request: HttpRequest) -> HttpResponse:
    """Sleep ``?seconds=`` (default 2) and report when the request ran."""
    start = time.monotonic()
    record("django-slow-started")
    time.sleep(float(request.GET.get("seconds", "2")))
    return JsonResponse({"start": start, "end": time.monotonic()})


def boom(request: HttpRequest) -> HttpResponse:
    """Fail with an unhandled exception."""
    raise RuntimeError("boom from the Django test view")


def stream(request: HttpRequest) -> HttpResponse:
    """Stream ``?chunks=`` chunks of 64 KiB, recording when the generator stops."""
    tag = request.GET.get("tag", "-")
    count = int(request.GET.get("chunks", "1000"))
    delay = float(request.GET.get("delay", "0.01"))

    def generate() -> Iterator[bytes]:
        sent = 0
        try:
            for _ in range(count):
                yield b"x" * 65536
                sent += 1
                time.sleep(delay)
        finally:
            record(f"django-stream-stopped {tag} sent={sent} of={count}")

    return StreamingHttpResponse(generate(), content_type="application/octet-stream")


@csrf_exempt
def db(request: HttpRequest) -> HttpResponse:
    """GET: count the greetings. POST ``?key=&seconds=``: sleep, then store a greeting."""
    if request.method == "POST":
        key = request.GET["key"]
        record(f"django-db-write-started {key}")
        time.sleep(float(request.GET.get("seconds", "0")))
        Greeting.objects.create(language=key[:16], text="written by the test view")
        return JsonResponse({"written": key}, status=201)
    record("django-db-read-started")
    return JsonResponse({"greetings": Greeting.objects.count()})


@csrf_exempt
def save(request: HttpRequest) -> HttpResponse:
    """POST ``key=&text=``: store a greeting from the form (what the admin's add form does)."""
    key = request.POST["key"]
    Greeting.objects.create(language=key[:16], text=request.POST.get("text", ""))
    return JsonResponse({"saved": key}, status=201)


def _finished(sender: Any, **kwargs: Any) -> None:
    # request_finished is sent by HttpResponse.close(): the server closed the response.
    record("django-closed")


request_finished.connect(_finished, dispatch_uid="tests.apps.django_urls")

urlpatterns = [
    path("test/echo/", echo),
    path("test/form/", form),
    path("test/slow/", slow),
    path("test/boom/", boom),
    path("test/stream/", stream),
    path("test/db/", db),
    path("test/save/", save),
    path("", include("django_hello.urls")),
]

