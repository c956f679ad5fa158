"""Views of the Flask app."""

from __future__ import annotations

from flask import Blueprint, abort, current_app, render_template, request, session

from flask_hello import django_data

bp = Blueprint("hello", __name__)


@bp.get("/")
def hello() -> str:
    """Greet ``?name=`` (else the name given last time, else World) in ``?lang=``."""
    name = request.args.get("name")
    if name:
        session["name"] = name
    else:
        name = session.get("name", "World")
    word = "Hello"
    lang = request.args.get("lang")
    if lang and django_data.enabled(current_app):
        from django_hello.models import Greeting

        greeting = Greeting.objects.filter(language=lang).first()
        if greeting is not None:
            word = greeting.text
    return render_template("hello.html", name=name, word=word, lang=lang or "")


@bp.get("/greetings")
def greetings() -> str:
    """List the greetings kept in the Django admin."""
    if not django_data.enabled(current_app):
        abort(503, description=django_data.NOT_CONFIGURED)
    from django_hello.models import Greeting

    return render_template("greetings.html", greetings=list(Greeting.objects.all()))
