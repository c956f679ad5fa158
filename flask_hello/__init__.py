"""A small Flask app: a greeting at ``/``, a stylesheet under ``/static/``, and the
greetings kept in the Django project's database at ``/greetings``.

It is an ordinary Flask app and knows nothing of the gateway that may mount it::

    flask --app flask_hello run

Configuration comes from ``create_app(config)`` and from ``FLASK_*`` environment
variables (``FLASK_SECRET_KEY``, ``FLASK_MAX_CONTENT_LENGTH``, ...), Flask's own
``from_prefixed_env`` convention. Reading the Django project's data needs
``DJANGO_SETTINGS_MODULE`` (see ``flask_hello.django_data``).
"""

from __future__ import annotations

import secrets
from typing import Any

from flask import Flask

from flask_hello import django_data, views


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Create and configure the Flask app."""
    app = Flask(__name__)
    # The session cookie is not sent on cross-site requests, as Django's is not by default.
    app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    app.config.from_prefixed_env()
    if config is not None:
        app.config.from_mapping(config)
    if not app.config["SECRET_KEY"]:
        # Enough for `flask run`; sessions then last as long as the process. Set
        # FLASK_SECRET_KEY (the gateway does) to keep them across restarts and workers.
        app.config["SECRET_KEY"] = secrets.token_hex(32)
    django_data.init_app(app)
    app.register_blueprint(views.bp)
    if app.config.get("SHARED_SIGNIN") and django_data.enabled(app):
        from flask_hello import account

        account.init_app(app)
    return app


app = create_app()
