"""Views of the django_hello project."""

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_safe


@require_safe
def hello(request: HttpRequest) -> HttpResponse:
    """Say hello from Django."""
    return render(request, "django_hello/hello.html")
