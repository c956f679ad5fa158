"""Views of the Flask app."""

from __future__ import annotations

from flask import Blueprint, render_template, request, session

bp = Blueprint("hello", __name__)


@bp.get("/")
def hello() -> str:
    """Greet ``?name=``, else the name given last time, else ``World``."""
    name = request.args.get("name")
    if name:
        session["name"] = name
    else:
        name = session.get("name", "World")
    return render_template("hello.html", name=name)
