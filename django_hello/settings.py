"""Settings of the django_hello project.

Everything that differs between machines comes from the environment:

- ``DJANGO_DATA_DIR``: where the SQLite database and the generated secret key live
  (default ``./var``; never inside the package).
- ``DATABASE_URL``: another database, e.g. ``postgres://user:pass@host/db``.
- ``DJANGO_SECRET_KEY``: the secret key; without it one is generated once and kept
  in the data directory.
- ``DJANGO_DEBUG``: ``1`` to turn debug mode on (off by default).
- ``DJANGO_ALLOWED_HOSTS``: comma-separated host names (default: loopback names).
- ``DJANGO_DATA_UPLOAD_MAX_MEMORY_SIZE``: the request body limit in bytes.
- ``DJANGO_HTTPS``: ``1`` when clients reach the site over HTTPS (secure cookies, HSTS).
- ``REDIS_URL``: a Redis server for the cache and (cached) sessions.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent
DATA_DIR = Path(os.environ.get("DJANGO_DATA_DIR", "var")).resolve()


def _secret_key(data_dir: Path) -> str:
    """Return DJANGO_SECRET_KEY, or a key generated once and kept in data_dir."""
    if key := os.environ.get("DJANGO_SECRET_KEY"):
        return key
    path = data_dir / "django-secret-key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        data_dir.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(50)
        # O_EXCL: when several workers start at once, the first key written wins.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path.read_text().strip()
        with os.fdopen(fd, "w") as f:
            f.write(key)
        return key


# Core
SECRET_KEY = _secret_key(DATA_DIR)
DEBUG = os.environ.get("DJANGO_DEBUG", "").lower() in {"1", "true", "yes", "on"}
ALLOWED_HOSTS = [
    h.strip()
    for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",")
    if h.strip()
]
ROOT_URLCONF = "django_hello.urls"
WSGI_APPLICATION = "django_hello.wsgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Applications
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_hello",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django_hello.middleware.DatabaseUnavailableMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Database: SQLite in the data directory unless DATABASE_URL says otherwise.
# Connections are per thread; CONN_MAX_AGE keeps each one open between requests, with
# a health check before reuse. 0 (the default) closes it after every request, which
# keeps the count of open connections at the count of running requests.
DATABASES = {
    "default": dj_database_url.config(
        default=f"sqlite:///{DATA_DIR / 'django.sqlite3'}",
        conn_max_age=int(os.environ.get("DJANGO_CONN_MAX_AGE", "0")),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3" and "DATABASE_URL" not in os.environ:
    # The embedded database: created here (migrate fills it), but opened read-write
    # only, so a file that disappears later is an error, not a new empty database.
    _sqlite = Path(DATABASES["default"]["NAME"])
    _sqlite.parent.mkdir(parents=True, exist_ok=True)
    _sqlite.touch(exist_ok=True)
    DATABASES["default"]["NAME"] = f"file:{_sqlite}?mode=rw"
    DATABASES["default"]["OPTIONS"] = {"uri": True, "timeout": 2}
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("connect_timeout", 5)

if REDIS_URL := os.environ.get("REDIS_URL"):
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
    SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# Internationalization
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# Static files, served by WhiteNoise straight from the apps' static folders, so no
# collectstatic step is needed. STATIC_URL stays relative: the storage below puts
# the script prefix of each request in front of it (see django_hello/storage.py).
STATIC_URL = "static/"
WHITENOISE_USE_FINDERS = True
WHITENOISE_STATIC_PREFIX = "/static/"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django_hello.storage.ScriptPrefixStaticFilesStorage"},
}

# Request limits
DATA_UPLOAD_MAX_MEMORY_SIZE = int(os.environ.get("DJANGO_DATA_UPLOAD_MAX_MEMORY_SIZE", 2621440))
DATA_UPLOAD_MAX_NUMBER_FIELDS = 1000

# Security
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
if os.environ.get("DJANGO_HTTPS", "").lower() in {"1", "true", "yes", "on"}:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = True
    SECURE_HSTS_SECONDS = 31536000
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    # HSTS preload is a commitment to the browsers' list that a site makes on purpose
    # (set SECURE_HSTS_PRELOAD yourself); it is not a deployment error to go without.
    SILENCED_SYSTEM_CHECKS = ["security.W021"]


def _skip_unreadable_post(record: object) -> bool:
    """Drop the error of a client that left mid-upload (Django's documented filter)."""
    from django.http import UnreadablePostError

    exc_info = getattr(record, "exc_info", None)
    return not (exc_info and isinstance(exc_info[1], UnreadablePostError))


def _client_mistake(record: object) -> bool:
    """Log a refused request (too many fields, bad host...) as one WARNING line.

    Django reports each SuspiciousOperation at ERROR with its traceback; here it is a
    client's mistake, answered with a 400, not a fault of the server.
    """
    import logging

    record.exc_info = None  # type: ignore[attr-defined]
    record.exc_text = None  # type: ignore[attr-defined]
    record.levelno, record.levelname = logging.WARNING, "WARNING"  # type: ignore[attr-defined]
    return True


# Logging: records go to the root logger (the gateway's handler, or Python's last-resort
# stderr handler when run alone), so each error is written once, with its traceback.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "skip_unreadable_post": {"()": "django.utils.log.CallbackFilter", "callback": _skip_unreadable_post},
        "client_mistake": {"()": "django.utils.log.CallbackFilter", "callback": _client_mistake},
    },
    "loggers": {
        "django": {"handlers": [], "level": "INFO", "propagate": True},
        "django.request": {"handlers": [], "level": "ERROR", "filters": ["skip_unreadable_post"]},
        "django.server": {"handlers": [], "level": "INFO", "propagate": True},
        # Django names each SuspiciousOperation's logger after its class; a filter on
        # "django.security" would not see records its children pass up.
        **{
            f"django.security.{name}": {"handlers": [], "level": "INFO", "filters": ["client_mistake"]}
            for name in ("DisallowedHost", "TooManyFieldsSent", "TooManyFilesSent", "RequestDataTooBig",
                         "SuspiciousMultipartForm", "DisallowedRedirect", "SuspiciousOperation")
        },
    },
}
