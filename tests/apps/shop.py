"""Two Flask apps that share one URL space, for the route rules' tests: a "legacy" shop and
the "new" one that takes over some of its pages (as a migration does, a page at a time)."""

from __future__ import annotations

from flask import Flask, jsonify, request, url_for

legacy = Flask("legacy_shop")
new = Flask("new_shop")


def _seen(app: str) -> dict[str, str]:
    return {"app": app, "script_name": request.environ.get("SCRIPT_NAME", ""), "path": request.path,
            "method": request.method}


@legacy.get("/shop/")
def index() -> object:
    return jsonify(**_seen("legacy"), items=url_for("item", item_id=7), cart=url_for("cart"))


@legacy.get("/shop/items/<int:item_id>")
def item(item_id: int) -> object:
    return jsonify(**_seen("legacy"), id=item_id)


@legacy.route("/shop/cart", methods=["GET", "POST"])
def cart() -> object:
    return jsonify(**_seen("legacy"), body=request.get_data(as_text=True))


@new.get("/shop/cart")
def new_cart() -> object:
    return jsonify(**_seen("new"), cart=url_for("new_cart"))


@new.get("/shop/items/<int:item_id>")
def new_item(item_id: int) -> object:
    if item_id > 100:  # not ported yet: the legacy app answers (a fallback)
        return jsonify(error="not here"), 404
    return jsonify(**_seen("new"), id=item_id)


@new.post("/shop/items/<int:item_id>")
def new_item_post(item_id: int) -> object:
    return jsonify(error="not here"), 404
