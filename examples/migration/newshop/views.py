"""The port's two pages: an item page and the cart. GET and HEAD only: their forms post to
the legacy app, which still owns the cart (see ``newshop.legacy``)."""

from __future__ import annotations

from typing import Any

from catalogue import ITEMS, cart_lines
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_safe

from newshop import legacy


def page(request: HttpRequest, template: str, context: dict[str, Any], status: int = 200) -> HttpResponse:
    response = render(request, template, context, status=status)
    response["X-Served-By"] = "new shop (Django)"
    return response


@require_safe
def item(request: HttpRequest, item_id: int) -> HttpResponse:
    if item_id not in ITEMS:
        return page(request, "newshop/missing.html", {"item_id": item_id}, status=404)
    return page(request, "newshop/item.html", {"item": ITEMS[item_id], "legacy_csrf": legacy.csrf_token(request)})


@require_safe
def cart(request: HttpRequest) -> HttpResponse:
    lines, total = cart_lines(legacy.cart(request))
    return page(request, "newshop/cart.html", {"lines": lines, "total": total,
                                               "legacy_csrf": legacy.csrf_token(request)})
