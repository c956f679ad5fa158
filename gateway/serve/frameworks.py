"""Framework set-up: the one place that prepares Flask and Django before their apps are imported.

- **Where the apps are.** The folder of the ``gateway.toml`` goes first on ``sys.path``, as
  the current directory does for ``--mount`` (uvicorn's ``--app-dir``), with the folders its
  apps name (``path = "mysite"``: where ``manage.py`` is), so a file's
  ``"mysite.wsgi:application"`` is found wherever the gateway is started from.
- **Django's settings.** Django reads one settings module per process, from
  ``DJANGO_SETTINGS_MODULE``, the first time anything asks for a setting. A ``startproject``
  ``wsgi.py`` only *defaults* that variable (``os.environ.setdefault``), so whatever set it
  first wins, silently. An app of ``[apps]`` that names its settings
  (``settings = "mysite.settings"``) has them set here, before any app is imported; a
  process whose Django already runs on other settings is refused in one line.
- **The demo apps** (``flask_hello``, ``django_hello``) read ``FLASK_*`` and ``DJANGO_*``
  variables, which :func:`gateway.core.config.configure_apps` derives from the gateway's
  settings. That is done only when they are served: a team's own apps get nothing of
  theirs, and no ``./var`` appears in the team's folder.
- **Cookies.** Django reads the ``Cookie`` header with :mod:`http.cookies`' ``_unquote``,
  which takes time in the square of a quoted value's backslashes before CPython 3.11.10 and
  3.12.6 (python/cpython#123067): 14 KB of them held a thread 2 s, and a hundred such
  requests the whole process (the GIL) for over a minute. On those versions it is replaced
  by the fixed releases' own, linear, code (:func:`unquote_cookie`).
- **Header parameters.** Django reads every request's ``Content-Type`` (and ``Accept``)
  with :mod:`email.message`'s ``_parseparam``, which recounts the quotes from a
  parameter's start at each ``;`` (python/cpython#136063): a 16 KB ``Content-Type`` of
  quoted ``;`` took 0.3 s of a thread holding the GIL, a request. It is replaced by a
  reading in one pass that gives the same parameters (:func:`split_params`), on every
  Python: the stdlib's own fix (python/cpython#136072) is not in the releases measured.
- **Django's static files.** ``runserver`` serves them in development, and a deployment
  serves them in front of Django; under the gateway, a Django project that does not serve
  them itself (WhiteNoise's middleware) has them served by WhiteNoise, from its finders and
  ``STATIC_ROOT``, under its mount, so the admin has its stylesheets.
"""

from __future__ import annotations

import email.message
import http.cookies
import inspect
import logging
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from gateway.core.config import Config, configure_apps, production_problems
from gateway.core.mounts import DEFAULT_MOUNTS

logger = logging.getLogger("gateway")

DEMO_PACKAGES = frozenset({"flask_hello", "django_hello"})


class SetupError(ValueError):
    """The apps cannot be set up as configured; the message is one full sentence."""


def names_apps(config: Config) -> bool:
    """Whether ``config`` names apps of its own (mounts, ``[apps]``); if not, the demo apps are served."""
    return bool(config.mounts or config.file.mounts or config.file.apps)


def targets(config: Config) -> list[str]:
    """Every ``module:attr`` the configuration serves: its mounts and its apps, or the demo's."""
    mounts = [*config.file.mounts, *config.mounts] if names_apps(config) else list(DEFAULT_MOUNTS)
    return [text.partition("=")[2] for text in mounts] + list(config.file.apps.values())


def serves_demo(config: Config) -> bool:
    """Whether a demo app is among what ``config`` serves."""
    return any(target.partition(":")[0].partition(".")[0] in DEMO_PACKAGES for target in targets(config))


_UNQUOTE_SUB = re.compile(r"\\(?:([0-3][0-7][0-7])|(.))").sub
#: The CPython releases whose ``http.cookies._unquote`` is quadratic (python/cpython#123067).
QUADRATIC_UNQUOTE = sys.version_info < (3, 11, 10) or (3, 12) <= sys.version_info < (3, 12, 6)


def _unquote_escape(match: re.Match[str]) -> str:
    return chr(int(match[1], 8)) if match[1] else match[2]


def unquote_cookie(value: str) -> str:
    """A cookie value as ``http.cookies._unquote`` reads it, in one pass: CPython's fix of
    python/cpython#123067 (3.11.10, 3.12.6), for the releases before it."""
    if value is None or len(value) < 2 or value[0] != '"' or value[-1] != '"':
        return value
    return _UNQUOTE_SUB(_unquote_escape, value[1:-1])


#: A ``;`` ends a parameter where the quotes before it since the parameter's start, less
#: those after a backslash, are even in number: what ``_parseparam`` counts, found in order.
_PARAM_MARKS = re.compile(r'(?<!\\)"|;')


def _param(text: str) -> str:
    name, equals, value = text.partition("=")
    return (name.strip().lower() + "=" + value.strip() if equals else text).strip()


def split_params(value: str) -> list[str]:
    """A header's ``;``-separated parts as :mod:`email.message`'s ``_parseparam`` returns them
    (a name lower-cased, space around ``=`` dropped, a ``;`` inside quotes kept), in one pass."""
    text = str(value)
    parts, start, quoted = [], 0, False
    for mark in _PARAM_MARKS.finditer(text):
        if mark[0] == '"':
            quoted = not quoted
        elif not quoted:
            parts.append(_param(text[start:mark.start()]))
            start = mark.end()
    parts.append(_param(text[start:]))
    return parts


def set_up(config: Config, *, strict: bool = True) -> None:
    """Prepare the frameworks for the apps of ``config``, before any of them is imported."""
    if QUADRATIC_UNQUOTE:
        http.cookies._unquote = unquote_cookie  # type: ignore[assignment]  # Django's parse_cookie calls it
    email.message._parseparam = split_params  # type: ignore[attr-defined]  # Django's parse_header_parameters
    if config.config_file is not None:
        here = config.config_file.parent
        for folder in reversed([here, *(here / path for path in config.file.paths)]):
            if (name := str(folder.resolve())) not in sys.path:
                sys.path.insert(0, name)
    if (wanted := config.file.django_settings) is not None:
        use_django_settings(wanted, config)
    if serves_demo(config):
        configure_apps(config, strict=strict)
    elif strict and config.env == "production" and (problems := production_problems(config, os.environ, demo=False)):
        raise SetupError("; ".join(f"{p} (GATEWAY_ENV=production)" for p in problems) + ".")


def use_django_settings(wanted: str, config: Config) -> None:
    """Make ``wanted`` the settings Django reads; refuse if Django runs on others already."""
    from django.conf import settings

    if settings.configured:
        running = getattr(settings, "SETTINGS_MODULE", None)
        if running != wanted:
            raise SetupError(
                f"{config.config_file or 'gateway.toml'} names the Django settings {wanted}, but Django is "
                f"already set up in this process with {running or 'settings.configure()'}; Django reads one "
                "settings module per process: start a new process (a new gateway serve) for these settings.")
        return
    given = os.environ.get("DJANGO_SETTINGS_MODULE")
    if given and given != wanted:
        logger.warning("DJANGO_SETTINGS_MODULE=%s is set, and %s names %s: Django runs on %s.", given,
                       config.config_file or "gateway.toml", wanted, wanted)
    # Django's own variable, read by django.setup(): set before any app module imports
    # Django, it wins over the os.environ.setdefault() of a startproject wsgi.py.
    os.environ["DJANGO_SETTINGS_MODULE"] = wanted


def is_django(app: Any) -> bool:
    """Whether ``app`` is Django's WSGI handler (``get_wsgi_application()``)."""
    return type(inspect.unwrap(app)).__module__.startswith("django.")


def check_django(mounts: Iterable[Any], config: Config) -> None:
    """After the apps are imported: settings Django would fail on at the first request."""
    if not any(is_django(mount.app) for mount in mounts):
        return
    from django.apps import apps
    from django.conf import settings

    module = getattr(settings, "SETTINGS_MODULE", None) or "settings.configure()"
    wanted = config.file.django_settings
    if wanted is not None and module != wanted:
        raise SetupError(f"Django runs on the settings {module}, not {wanted} as {config.config_file} names: "
                         "something imported Django's settings first; mount the project's wsgi.py.")
    with_models = sorted(c.label for c in apps.get_app_configs() if c.models_module is not None)
    # No DATABASES: Django fills in its dummy backend (ConnectionHandler), which fails at
    # the first query with a traceback; the apps that keep models need a database.
    engine = settings.DATABASES.get("default", {}).get("ENGINE", "")
    if engine in {"", "django.db.backends.dummy"} and with_models:
        raise SetupError(
            f"The Django settings {module} have no DATABASES, and the installed apps {', '.join(with_models)} "
            "keep their data in one: add DATABASES to the settings (startproject's is a SQLite file, "
            "BASE_DIR / \"db.sqlite3\").")


def serve_static(mount: Any) -> Any:
    """The mount, its Django static files served by WhiteNoise if the project does not serve them."""
    if mount.interface != "wsgi" or not is_django(mount.app):
        return mount
    from django.conf import settings

    if ("django.contrib.staticfiles" not in settings.INSTALLED_APPS
            or "whitenoise.middleware.WhiteNoiseMiddleware" in settings.MIDDLEWARE):
        return mount
    # The raw setting: reading settings.STATIC_URL here would make Django cache it with the
    # script prefix of this moment ("/"), and every page would link /static/ instead of the
    # mount's /django/static/ (LazySettings.__getattr__ keeps what it computed first).
    raw = str(getattr(settings._wrapped, "STATIC_URL", "") or "")
    if not raw or "//" in raw or raw.startswith("/"):
        return mount  # absolute or on another host: not under this mount, not ours to serve
    from django.contrib.staticfiles import finders
    from whitenoise import WhiteNoise

    prefix = "/" + raw.strip("/") + "/"
    static = WhiteNoise(mount.app)
    static.__wrapped__ = mount.app  # the framework behind it, for the banner
    if (root := getattr(settings, "STATIC_ROOT", None)) and os.path.isdir(root):
        static.add_files(str(root), prefix=prefix)
    # As WhiteNoise's middleware does with WHITENOISE_USE_FINDERS: each app's static folder.
    for finder in finders.get_finders():
        for path, storage in finder.list(None):
            folder = (getattr(storage, "prefix", None) or "").strip("/")
            url = prefix + (folder + "/" if folder else "") + path.replace("\\", "/")
            if url not in static.files:
                static.add_file_to_dictionary(url, storage.path(path))
    return replace(mount, app=static)
