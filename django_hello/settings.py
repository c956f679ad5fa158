"""Settings of the django_hello project.

Everything that differs between machines comes from the environment:

- ``DJANGO_DATA_DIR``: where the SQLite database and the generated secret key live
  (default ``./var``; never inside the package).
- ``DATABASE_URL``: another database, e.g. ``postgres://user:pass@host/db``.
- ``DJANGO_SQLITE_TIMEOUT``: seconds a write waits for the embedded SQLite database's
  write lock before failing with a 503 (default 20).
- ``DJANGO_SECRET_KEY``: the secret key; without it one is generated once and kept
  in the data directory.
- ``DJANGO_DEBUG``: ``1`` to turn debug mode on (off by default).
- ``DJANGO_ALLOWED_HOSTS``: comma-separated host names (default: loopback names).
- ``DJANGO_DATA_UPLOAD_MAX_MEMORY_SIZE``: the request body limit in bytes.
- ``DJANGO_HTTPS``: ``1`` when clients reach the site over HTTPS (secure cookies, HSTS).
- ``DJANGO_DB_IDLE_IN_TRANSACTION_TIMEOUT``, ``DJANGO_DB_LOCK_TIMEOUT``,
  ``DJANGO_DB_STATEMENT_TIMEOUT``: seconds PostgreSQL allows this app's sessions (defaults
  10, 5 and 30; 0 for no limit).
- ``REDIS_URL``: a Redis server for Django's cache (sessions stay in the database).
"""

from __future__ import annotations

import os
import secrets
from datetime import timedelta
from pathlib import Path
from typing import Any

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent
DATA_DIR = Path(os.environ.get("DJANGO_DATA_DIR", "var")).resolve()


def _private_directory(path: Path) -> None:
    """Create the data directory for its owner only (0700), or take other users' access away."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    _owner_only(path)


def _private_file(path: Path) -> None:
    """Create ``path`` (empty, 0600) if it is missing; take other users' access to it away.

    Also from SQLite's files beside it (``-wal``, ``-shm``, ``-journal``): SQLite gives them
    the database file's mode when it creates them, but older ones keep theirs.
    """
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT, 0o600))
    for each in (path, *(path.with_name(path.name + suffix) for suffix in ("-wal", "-shm", "-journal"))):
        _owner_only(each)


def _owner_only(path: Path) -> None:
    """Take the group's and other users' permissions off ``path``, if it exists, with a warning."""
    import logging
    import stat

    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return
    if not mode & 0o077:
        return
    log = logging.getLogger("django_hello")
    if stat.S_ISDIR(mode) and mode & stat.S_ISVTX:  # a shared directory such as /tmp: not ours to close
        log.warning("The data directory %s is shared with other users (mode %04o); it is left as it is, "
                    "and the database in it is readable by its owner only.", path, stat.S_IMODE(mode))
        return
    try:
        path.chmod(stat.S_IMODE(mode) & ~0o077)
    except OSError as exc:
        log.warning("%s is open to other users (mode %04o) and could not be changed: %s", path, stat.S_IMODE(mode),
                    exc)
        return
    log.warning("%s was open to other users (mode %04o); it is now %04o, for its owner only.", path,
                stat.S_IMODE(mode), stat.S_IMODE(mode) & ~0o077)


def _secret_key(data_dir: Path) -> str:
    """Return DJANGO_SECRET_KEY, or a key generated once and kept in data_dir."""
    if key := os.environ.get("DJANGO_SECRET_KEY"):
        return key
    path = data_dir / "django-secret-key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        _private_directory(data_dir)
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
    # Login throttling: see "Login throttling" at the end. Before django_hello, so that
    # django_hello/admin.py finds axes' admin pages registered and hardens them too.
    "axes",
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
    # Last, as django-axes asks: turns a locked-out login into its 429 response.
    "axes.middleware.AxesMiddleware",
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


def _seconds(name: str, default: float) -> float:
    """A number of seconds from the environment variable ``name``."""
    raw = os.environ.get(name, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise ValueError(f'{name}="{raw}" must be a number of seconds, e.g. {name}={default:g}.')
    return value


DATABASES = {
    "default": dj_database_url.config(
        default=f"sqlite:///{DATA_DIR / 'django.sqlite3'}",
        conn_max_age=int(os.environ.get("DJANGO_CONN_MAX_AGE", "0")),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3" and "DATABASE_URL" not in os.environ:
    # The embedded database: created here (migrate fills it), but opened read-write
    # only, so a file that disappears later is an error, not a new empty database. It
    # holds sessions and password hashes: the directory is 0700 and the file 0600, and
    # SQLite gives its -wal and -shm files the database file's mode.
    _sqlite = Path(DATABASES["default"]["NAME"])
    _private_directory(_sqlite.parent)
    _private_file(_sqlite)
    DATABASES["default"]["NAME"] = f"file:{_sqlite}?mode=rw"
    DATABASES["default"]["OPTIONS"] = {
        "uri": True,
        # Concurrent writers (threads and worker processes) take turns instead of failing:
        # - WAL: readers never wait for the writer nor it for them. The mode is kept in the
        #   file; on a database already in WAL mode the pragma is a no-op that takes no lock.
        "init_command": "PRAGMA journal_mode=WAL",
        # - BEGIN IMMEDIATE: a transaction takes the write lock when it begins, waiting for
        #   it as long as the busy timeout allows. With Django's default (DEFERRED) it reads
        #   first and asks for the lock at its first write; if another connection has
        #   written meanwhile, SQLite cannot wait (its snapshot is stale) and fails at once
        #   with "database is locked": a 503, however short the other write was.
        "transaction_mode": "IMMEDIATE",
        # - The busy timeout: how long a connection waits for another one's write lock before
        #   "database is locked" (then DatabaseUnavailableMiddleware's 503). SQLite does not
        #   serve waiters in turn: each polls, and the longer it has waited the less often.
        #   With 16 writers on 2 workers for 30 s, half the writes took under 35 ms but the
        #   unluckiest waited 4.6 s (tests/system/test_sqlite_writes.py): the former 2 s failed
        #   them. 20 s leaves four times that, and still ends a write stuck behind a dead
        #   lock holder (a stopped process, a forgotten sqlite3 shell) with the 503 before
        #   the deploy files' --graceful-timeout (25 s), gunicorn's worker timeout (30 s) and
        #   nginx's proxy_read_timeout (60 s) give up on it. Meanwhile each waiting write
        #   holds a pool thread; reads do not wait (WAL). DJANGO_SQLITE_TIMEOUT changes it.
        "timeout": _seconds("DJANGO_SQLITE_TIMEOUT", 20.0),
    }
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    _options = DATABASES["default"].setdefault("OPTIONS", {})
    _options.setdefault("connect_timeout", 5)
    # A kept connection (DJANGO_CONN_MAX_AGE) to a database host that vanished: a query, or
    # Django's health check before reuse, would wait for TCP to give up (about 15 minutes;
    # measured in tests/system/test_netns.py: pages hung until the link came back). Data
    # unacknowledged for 2 s breaks the connection instead (OperationalError: a 503), and
    # keepalives find idle connections dead.
    _options.setdefault("tcp_user_timeout", 2000)  # milliseconds
    _options.setdefault("keepalives", 1)
    _options.setdefault("keepalives_idle", 10)
    _options.setdefault("keepalives_interval", 2)
    _options.setdefault("keepalives_count", 3)
    # Limits PostgreSQL enforces on this app's sessions, whatever becomes of the client (libpq
    # "options"; 0 turns one off). A network cut inside a view's transaction otherwise left it
    # "idle in transaction" for about two hours, holding its row locks: edits of those rows
    # waited until nginx gave up (504) and were applied later all the same, and a migration
    # queued behind the lock stalled every read of the table (tests/system/test_netns.py).
    # - idle_in_transaction_session_timeout: the server ends a session whose transaction has
    #   waited this long for its next statement. A view sends its statements back to back, so
    #   only a lost client (or a view that waits on something else inside a transaction) waits
    #   that long. Cost: such a view fails once it has waited that long.
    # - lock_timeout: a statement waiting this long for a row or table lock fails (a 503) instead
    #   of holding its thread; migrations (same settings) fail instead of queueing ahead of reads.
    #   Cost: a write that meets a long-held lock fails and must be sent again.
    # - statement_timeout: one statement's longest run, shorter than nginx's proxy_read_timeout
    #   (60 s), so the database stops work nobody waits for. Cost: a legitimately long query
    #   (a report, a data migration) needs the variable raised for that process.
    _limits = {
        "idle_in_transaction_session_timeout": _seconds("DJANGO_DB_IDLE_IN_TRANSACTION_TIMEOUT", 10.0),
        "lock_timeout": _seconds("DJANGO_DB_LOCK_TIMEOUT", 5.0),
        "statement_timeout": _seconds("DJANGO_DB_STATEMENT_TIMEOUT", 30.0),
    }
    _flags = " ".join(f"-c {name}={round(value * 1000)}" for name, value in _limits.items())
    _options["options"] = f"{_options.get('options', '')} {_flags}".strip()

# Sessions stay in the database (Django's default "db" engine), with Redis or without: a
# sign-out must reach every host, and the database is the store every host needs anyway to
# serve a signed-in page. With "cached_db", a host that could not reach Redis deleted the
# session from the database only, and the hosts that could kept accepting Redis's copy (6
# requests of 6; tests/system/test_netns.py). Only a read of the database on each request can see
# a sign-out made by a host that reaches nothing else. Cost: one primary-key SELECT of
# django_session per request that reads the session, which cached_db answered from Redis.
if REDIS_URL := os.environ.get("REDIS_URL"):
    CACHES = {"default": {
        # Without Redis, no cache (django_hello/cache.py).
        "BACKEND": "django_hello.cache.DegradingRedisCache",
        "LOCATION": REDIS_URL,
        # Redis is on the LAN: give up on it in a second (redis-py 8 waits 5 s, earlier versions forever).
        "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 1.0},
    }}

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


# Login throttling (django-axes). Every login through django.contrib.auth (the admin's
# included) is counted per username and client address together: an attacker at one
# address can lock out only that username from that address, never the real admin from
# everywhere. The client address is REMOTE_ADDR and nothing else: the gateway has already
# put the real client there when the peer is a trusted proxy (GATEWAY_TRUSTED_PROXIES),
# and X-Forwarded-For from anyone else is ignored, so a header cannot pick or spoof the
# address that is counted. (Installing django-ipware would make axes read X-Forwarded-For
# itself; AXES_CLIENT_IP_CALLABLE below wins over it.) Reset a lock-out with
# `gateway manage axes_reset` (everything), axes_reset_username or axes_reset_ip.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # first: refuses a locked-out login before any password check
    "django.contrib.auth.backends.ModelBackend",
]


def _client_address(request: Any) -> str | None:
    """The address axes counts: REMOTE_ADDR, as the gateway set it."""
    address: str | None = request.META.get("REMOTE_ADDR")
    return address


AXES_CLIENT_IP_CALLABLE = _client_address
AXES_IPWARE_META_PRECEDENCE_ORDER = ("REMOTE_ADDR",)  # the same, should axes ever use ipware
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
# 5 failures leave room for a few typos; a 15-minute cool-off then holds one address to
# 20 guesses an hour at one username (the issue measured 6.2 a second unthrottled), and
# frees a real admin who mistyped without an operator. Failures count until 15 minutes
# pass without another.
AXES_FAILURE_LIMIT = 5
AXES_COOLOFF_TIME = timedelta(minutes=15)
AXES_HTTP_RESPONSE_CODE = 429
# Attempts while locked out are refused without being recorded: they neither extend the
# lock-out nor grow the attempt's row (axes appends each attempt's form data to it).
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
# A successful login clears the failures of that username from that address only (the
# same pair the lock-out counts), never another address's or another username's.
AXES_RESET_ON_SUCCESS = True
AXES_VERBOSE = False  # no start-up banner; the client in log lines is the lock-out pair, masked
# Each failure and lock-out is one WARNING line (with the request ID, which the access log
# line pairs with the client); axes' INFO chatter (two or three lines a login) is dropped.
LOGGING["loggers"]["axes"] = {"handlers": [], "level": "WARNING", "propagate": True}
# The admin's refusal of a query-string lookup (django_hello.admin.SafeModelAdmin) is a
# client's mistake as well: one WARNING line and a 400, no traceback.
LOGGING["loggers"]["django.security.DisallowedModelAdminLookup"] = {
    "handlers": [], "level": "INFO", "filters": ["client_mistake"]}
