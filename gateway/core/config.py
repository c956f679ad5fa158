"""The gateway's settings, read from ``GATEWAY_*`` environment variables.

The ``gateway`` command writes its options into the same variables, so that every
server worker process (uvicorn, Granian, gunicorn) builds the same gateway. Before the
apps are imported, :func:`configure_apps` translates these settings into each
framework's own conventions (``DJANGO_*``, ``FLASK_*``), without overriding what the
environment already says.

========================  =====================================================
``GATEWAY_ENV``           ``development`` (default) or ``production`` (secret keys
                          must come from the environment)
``GATEWAY_DATA_DIR``      SQLite database and generated keys (default ``./var``)
``GATEWAY_MOUNTS``        extra mounts, ``/prefix=module:attr``, space-separated
``GATEWAY_THREADS``       WSGI threads per worker under uvicorn (default 100)
``GATEWAY_ALLOWED_HOSTS`` Host names both apps answer, comma-separated (``.x.com``
                          matches subdomains, ``*`` anything)
``GATEWAY_MAX_BODY_SIZE`` request body limit in bytes (``K``/``M``/``G`` suffixes)
``GATEWAY_MAX_BODY_SIZES`` per-mount limits, ``/flask=1M,/django=20M``
``GATEWAY_MAX_HEADER_SIZE`` request headers in all, in bytes (default 16K)
``GATEWAY_TRUSTED_PROXIES`` addresses or networks whose ``X-Forwarded-*`` headers
                          are honoured, comma-separated
``GATEWAY_HTTPS``         ``1`` when clients reach the gateway over HTTPS (secure
                          cookies, HSTS)
``GATEWAY_LOG_FORMAT``    ``text`` (default) or ``json``
``GATEWAY_ACCESS_LOG``    ``0`` to write no access log (default on)
``GATEWAY_GRACEFUL_TIMEOUT`` seconds running requests get at shutdown (``gateway serve
                          --graceful-timeout``; default no limit)
``GATEWAY_BODY_TIMEOUT``  seconds a request body may pause before a 408 (default 30)
``GATEWAY_HEADER_TIMEOUT`` seconds a connection gets to send a request's headers
                          (default 5)
``GATEWAY_READY_TIMEOUT`` seconds ``/readyz`` waits for its checks before answering
                          503 "busy" (default 2)
``GATEWAY_STREAM_BODIES`` mounts whose apps read uploads as they arrive, in a thread,
                          comma-separated prefixes (default none: bodies are read
                          whole first)
``GATEWAY_CONFIG``        a ``gateway.toml`` of named apps, mounts and route rules
                          (:mod:`gateway.migration.rules`; default ``./gateway.toml`` if it exists)
``GATEWAY_SHARED_SIGNIN`` ``1``: one sign-in for both apps (:mod:`gateway.migration.signin`)
``GATEWAY_METRICS``       ``1``: answer ``/metrics`` (Prometheus) to loopback and the
                          trusted proxies (:mod:`gateway.observe.metrics`; default off)
``GATEWAY_TRACING``       ``1``: an OpenTelemetry span per request (:mod:`gateway.observe.tracing`,
                          the ``tracing`` extra; default off)
``GATEWAY_MIGRATION_DIR`` a directory where the workers of one server share the
                          migration page's counts (:mod:`gateway.migration.page`;
                          ``gateway serve --workers N`` makes one)
``GATEWAY_DRAIN_DELAY``   seconds to keep serving after SIGTERM, with ``Connection:
                          close`` and ``/readyz`` 503, before shutting down (default 0)
========================  =====================================================
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from gateway.migration.rules import GatewayFile, read_gateway_file

DEFAULT_THREADS = 100
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "[::1]")
DEFAULT_MAX_BODY_SIZE = 10 * 1024 * 1024
DEFAULT_MAX_HEADER_SIZE = 16 * 1024
DEFAULT_BODY_TIMEOUT = 30.0
DEFAULT_HEADER_TIMEOUT = 5.0
DEFAULT_READY_TIMEOUT = 2.0
FLASK_PREFIX, DJANGO_PREFIX = "/flask", "/django"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_SIZE = re.compile(r"(\d+)\s*([KMG]?)(?:i?B)?", re.IGNORECASE)
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


@dataclass(frozen=True)
class Config:
    """What the gateway serves and how."""

    env: str = "development"
    mounts: tuple[str, ...] = ()
    threads: int = DEFAULT_THREADS
    data_dir: Path = field(default_factory=lambda: Path("var").resolve())
    allowed_hosts: tuple[str, ...] = DEFAULT_HOSTS
    max_body_size: int = DEFAULT_MAX_BODY_SIZE
    max_body_sizes: Mapping[str, int] = field(default_factory=dict)
    max_header_size: int = DEFAULT_MAX_HEADER_SIZE
    trusted_proxies: tuple[Network, ...] = ()
    https: bool = False
    log_format: str = "text"
    access_log: bool = True
    drain_delay: float = 0.0
    graceful_timeout: float | None = None
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    ready_timeout: float = DEFAULT_READY_TIMEOUT
    stream_bodies: tuple[str, ...] = ()
    #: ``gateway.toml`` (``GATEWAY_CONFIG``, ``--config``): named apps, mounts, route rules.
    config_file: Path | None = None
    #: One sign-in for both apps: the name of Django's session cookie, whose path the
    #: gateway leaves at the site root so that every app receives it (``GATEWAY_SHARED_SIGNIN``).
    shared_signin: str | None = None
    #: ``/metrics`` in Prometheus' text format (``GATEWAY_METRICS``, ``--metrics``).
    metrics: bool = False
    #: An OpenTelemetry span per request (``GATEWAY_TRACING``, ``--tracing``).
    tracing: bool = False
    #: Where the workers of one server share the migration page's counts
    #: (``GATEWAY_MIGRATION_DIR``; None: each worker's page shows its own).
    migration_dir: Path | None = None
    file: GatewayFile = field(default_factory=GatewayFile)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Config:
        """Read the settings from ``GATEWAY_*`` variables."""
        env = environ.get("GATEWAY_ENV", "development").strip().lower() or "development"
        if env not in {"development", "production"}:
            raise ValueError(f'GATEWAY_ENV="{env}" must be "development" or "production".')
        log_format = environ.get("GATEWAY_LOG_FORMAT", "text").strip().lower() or "text"
        if log_format not in {"text", "json"}:
            raise ValueError(f'GATEWAY_LOG_FORMAT="{log_format}" must be "text" or "json".')
        return cls(
            env=env,
            mounts=tuple(environ.get("GATEWAY_MOUNTS", "").split()),
            threads=_positive_int(environ, "GATEWAY_THREADS", DEFAULT_THREADS),
            data_dir=Path(environ.get("GATEWAY_DATA_DIR", "var")).resolve(),
            allowed_hosts=parse_hosts(environ.get("GATEWAY_ALLOWED_HOSTS")),
            max_body_size=parse_size(
                environ.get("GATEWAY_MAX_BODY_SIZE", str(DEFAULT_MAX_BODY_SIZE)), "GATEWAY_MAX_BODY_SIZE"
            ),
            max_body_sizes=_sizes(environ.get("GATEWAY_MAX_BODY_SIZES", "")),
            max_header_size=parse_size(
                environ.get("GATEWAY_MAX_HEADER_SIZE", str(DEFAULT_MAX_HEADER_SIZE)), "GATEWAY_MAX_HEADER_SIZE"
            ),
            trusted_proxies=parse_proxies(environ.get("GATEWAY_TRUSTED_PROXIES")),
            https=_strict_flag(environ, "GATEWAY_HTTPS", False),
            log_format=log_format,
            access_log=_strict_flag(environ, "GATEWAY_ACCESS_LOG", True),
            drain_delay=_seconds(environ, "GATEWAY_DRAIN_DELAY"),
            graceful_timeout=_seconds(environ, "GATEWAY_GRACEFUL_TIMEOUT") if environ.get(
                "GATEWAY_GRACEFUL_TIMEOUT", "").strip() else None,
            body_timeout=_timeout(environ, "GATEWAY_BODY_TIMEOUT", DEFAULT_BODY_TIMEOUT),
            header_timeout=_timeout(environ, "GATEWAY_HEADER_TIMEOUT", DEFAULT_HEADER_TIMEOUT),
            ready_timeout=_timeout(environ, "GATEWAY_READY_TIMEOUT", DEFAULT_READY_TIMEOUT),
            stream_bodies=tuple(_prefix(p) for p in _split(environ.get("GATEWAY_STREAM_BODIES"))),
            shared_signin=_shared_signin(environ.get("GATEWAY_SHARED_SIGNIN", "")),
            metrics=_strict_flag(environ, "GATEWAY_METRICS", False),
            tracing=_strict_flag(environ, "GATEWAY_TRACING", False),
            migration_dir=_migration_dir(environ.get("GATEWAY_MIGRATION_DIR", "")),
        ).with_file(config_path(environ))

    def with_file(self, path: Path | None) -> Config:
        """This configuration with the ``gateway.toml`` at ``path`` read in (None: none)."""
        if path is None:
            return replace(self, config_file=None, file=GatewayFile())
        return replace(self, config_file=path.resolve(), file=read_gateway_file(path))

    def to_env(self) -> dict[str, str]:
        """Return the ``GATEWAY_*`` variables that :meth:`from_env` reads back."""
        return {
            "GATEWAY_ENV": self.env,
            "GATEWAY_MOUNTS": " ".join(self.mounts),
            "GATEWAY_THREADS": str(self.threads),
            "GATEWAY_DATA_DIR": str(self.data_dir),
            "GATEWAY_ALLOWED_HOSTS": ",".join(self.allowed_hosts),
            "GATEWAY_MAX_BODY_SIZE": str(self.max_body_size),
            "GATEWAY_MAX_BODY_SIZES": ",".join(f"{p}={n}" for p, n in self.max_body_sizes.items()),
            "GATEWAY_MAX_HEADER_SIZE": str(self.max_header_size),
            "GATEWAY_TRUSTED_PROXIES": ",".join(str(n) for n in self.trusted_proxies),
            "GATEWAY_HTTPS": "1" if self.https else "",
            "GATEWAY_LOG_FORMAT": self.log_format,
            "GATEWAY_ACCESS_LOG": "1" if self.access_log else "0",
            "GATEWAY_DRAIN_DELAY": str(self.drain_delay),
            "GATEWAY_GRACEFUL_TIMEOUT": "" if self.graceful_timeout is None else str(self.graceful_timeout),
            "GATEWAY_BODY_TIMEOUT": str(self.body_timeout),
            "GATEWAY_HEADER_TIMEOUT": str(self.header_timeout),
            "GATEWAY_READY_TIMEOUT": str(self.ready_timeout),
            "GATEWAY_STREAM_BODIES": ",".join(self.stream_bodies),
            "GATEWAY_CONFIG": str(self.config_file or ""),
            "GATEWAY_SHARED_SIGNIN": self.shared_signin or "",
            "GATEWAY_METRICS": "1" if self.metrics else "0",
            "GATEWAY_TRACING": "1" if self.tracing else "0",
            "GATEWAY_MIGRATION_DIR": str(self.migration_dir or ""),
        }

    def body_limit(self, prefix: str) -> int:
        """Return the request body limit for the mount at ``prefix``."""
        return self.max_body_sizes.get(prefix, self.max_body_size)


#: The gateway.toml read when neither ``--config`` nor ``GATEWAY_CONFIG`` names one.
DEFAULT_CONFIG_FILE = "gateway.toml"


def config_path(environ: Mapping[str, str]) -> Path | None:
    """The ``gateway.toml`` to read: ``GATEWAY_CONFIG``'s, else ``./gateway.toml`` if there is one."""
    if named := environ.get("GATEWAY_CONFIG", "").strip():
        return Path(named)
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.is_file() else None


def configure_apps(config: Config, environ: MutableMapping[str, str] = os.environ, *, strict: bool = True) -> None:
    """Set the frameworks' own variables from the gateway's, where not already set.

    In production the secret keys must come from the environment, debug mode must be
    off and the allowed hosts must not be ``*``; otherwise raises ValueError with one
    sentence naming every problem (see :func:`production_problems`); ``strict=False``
    leaves that to the caller (``gateway check`` lists them with the rest). Settings the
    apps would fail on with a traceback (:func:`environment_problems`) are refused the
    same way, always.
    """
    problems = environment_problems(config, environ)
    if strict and config.env == "production":
        problems += [f"{p} (GATEWAY_ENV=production)" for p in production_problems(config, environ)]
    if problems:
        raise ValueError("; ".join(problems) + ".")
    environ.setdefault("DJANGO_SETTINGS_MODULE", "django_hello.settings")
    environ.setdefault("DJANGO_DATA_DIR", str(config.data_dir))
    environ.setdefault("DJANGO_ALLOWED_HOSTS", ",".join(config.allowed_hosts))
    environ.setdefault("DJANGO_DATA_UPLOAD_MAX_MEMORY_SIZE", str(config.body_limit(DJANGO_PREFIX)))
    environ.setdefault("FLASK_MAX_CONTENT_LENGTH", str(config.body_limit(FLASK_PREFIX)))
    if config.shared_signin:
        environ.setdefault("FLASK_SHARED_SIGNIN", "true")
    if config.https:
        environ.setdefault("DJANGO_HTTPS", "1")
        environ.setdefault("FLASK_SESSION_COOKIE_SECURE", "true")
    if "FLASK_SECRET_KEY" not in environ:
        environ["FLASK_SECRET_KEY"] = stored_secret(config.data_dir, "flask-secret-key")


# URL schemes of dj-database-url, and the module each needs: (module, what to install).
_DRIVERS = {
    "postgres": ("psycopg", "the \"postgres\" extra: from a clone, pip install '.[postgres]'; from a wheel, "
                 "pip install 'flask_django_gateway-<version>-py3-none-any.whl[postgres]'"),
    "mysql": ("MySQLdb", "mysqlclient (pip install mysqlclient); the gateway is tested on SQLite and PostgreSQL only"),
    "oracle": ("oracledb", "oracledb (pip install oracledb); the gateway is tested on SQLite and PostgreSQL only"),
}


def environment_problems(config: Config, environ: Mapping[str, str]) -> list[str]:
    """Settings the apps cannot start with, one clause each, naming the variable and the fix.

    Checked here, before Django reads them, because there they end in a traceback: a
    database URL whose driver is not installed (or that no backend knows), a data
    directory the process cannot write, a ``DJANGO_CONN_MAX_AGE`` that is not a number.
    """
    import importlib.util

    problems = []
    url = environ.get("DATABASE_URL", "").strip()
    if url:
        scheme = url.partition(":")[0].lower().partition("+")[0]
        family = next((f for f in ("postgres", "mysql", "oracle") if scheme.startswith(f)), None)
        if family is None and scheme not in {"sqlite", "spatialite"}:
            problems.append(f'DATABASE_URL has the scheme "{scheme}", which no database backend here takes: use '
                            "postgres://user:password@host/name, or unset it for the embedded SQLite database")
        elif family is not None:
            module, install = _DRIVERS[family]
            modules = ("psycopg", "psycopg2") if family == "postgres" else (module,)
            if not any(importlib.util.find_spec(m) for m in modules):
                problems.append(f"DATABASE_URL is a {family} URL, but its driver ({module}) is not installed: "
                                f"install {install}")
    raw = environ.get("DJANGO_CONN_MAX_AGE", "").strip()
    if raw and not (raw.isascii() and raw.isdigit()):
        problems.append(f'DJANGO_CONN_MAX_AGE="{raw}" must be a whole number of seconds, e.g. 60 (0 closes each '
                        "connection after its request)")
    # The data directory is written for the SQLite database, or for generated keys.
    writes = not url or "DJANGO_SECRET_KEY" not in environ or "FLASK_SECRET_KEY" not in environ
    if writes and (problem := unwritable(config.data_dir)):
        problems.append(f"GATEWAY_DATA_DIR={config.data_dir} {problem}: choose a directory this user can "
                        "write, e.g. GATEWAY_DATA_DIR=./var")
    return problems


def unwritable(directory: Path) -> str | None:
    """Say why ``directory`` cannot be created or written by this process, or None."""
    existing = directory
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        return f"cannot be created: {existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return "is not writable by this user" if existing == directory else f"cannot be created in {existing}"
    return None


def production_problems(config: Config, environ: Mapping[str, str]) -> list[str]:
    """What production cannot run with, one clause each, naming the variable and the fix.

    Weak or missing secret keys; debug mode on (Django's debug pages and Flask's debug
    mode show code, settings and URL patterns to anyone); and a wildcard host, which
    lets any ``Host`` header through to the apps.
    """
    import json

    problems = [f"{name} {problem}" for name in ("DJANGO_SECRET_KEY", "FLASK_SECRET_KEY")
                if (problem := weak_secret(environ.get(name, "")))]
    if _flag(value := environ.get("DJANGO_DEBUG")):  # django_hello.settings' own reading
        problems.append(f'DJANGO_DEBUG="{value}" turns on Django\'s debug pages: unset it or set DJANGO_DEBUG=0')
    if value := environ.get("FLASK_DEBUG", ""):
        try:  # as Flask's from_prefixed_env reads it: JSON, else the string itself
            debug = json.loads(value)
        except ValueError:
            debug = value
        if debug:
            problems.append(f'FLASK_DEBUG="{value}" turns on Flask\'s debug mode: unset it or set FLASK_DEBUG=0')
    if "*" in config.allowed_hosts:
        problems.append('GATEWAY_ALLOWED_HOSTS allows any host ("*"): list your host names, '
                        "e.g. GATEWAY_ALLOWED_HOSTS=example.org")
    if "*" in _split(environ.get("DJANGO_ALLOWED_HOSTS")):
        problems.append('DJANGO_ALLOWED_HOSTS allows any host ("*"): list your host names, '
                        "or unset it to follow GATEWAY_ALLOWED_HOSTS")
    return problems


def weak_secret(value: str) -> str | None:
    """Say what is wrong with a secret key, or None if it will do (Django's rule)."""
    if not value:
        return "is not set"
    if len(value) < 50 or len(set(value)) < 5 or value.startswith("django-insecure-"):
        return "is too weak: use at least 50 random characters"
    return None


def _migration_dir(value: str) -> Path | None:
    """``GATEWAY_MIGRATION_DIR``: a directory the workers can write, or unset."""
    if not value.strip():
        return None
    path = Path(value.strip()).resolve()
    if not path.is_dir() or not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"GATEWAY_MIGRATION_DIR={value} is not a writable directory: create it, empty, for this "
                         "server's workers, or unset the variable.")
    return path


def stored_secret(data_dir: Path, name: str) -> str:
    """Return the secret kept in ``data_dir/name``, generating it the first time."""
    path = data_dir / name
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # it holds the keys and the database
    # O_EXCL: when several workers start at once, the first key written wins.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    key = secrets.token_urlsafe(50)
    with os.fdopen(fd, "w") as f:
        f.write(key)
    return key


def parse_size(text: str, name: str) -> int:
    """Parse ``10485760``, ``10M`` or ``10MiB`` into bytes."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise ValueError(f'{name}="{text}" must be a size in bytes, e.g. 10485760 or 10M.')
    return int(match.group(1)) * _UNITS[match.group(2).upper()]


def _sizes(text: str) -> dict[str, int]:
    sizes = {}
    for item in _split(text):
        prefix, sep, size = item.partition("=")
        if not sep or not prefix.startswith("/"):
            raise ValueError(
                f'GATEWAY_MAX_BODY_SIZES item "{item}" must be in the form "/prefix=size", e.g. "/django=20M".'
            )
        sizes[prefix.rstrip("/")] = parse_size(size, f"GATEWAY_MAX_BODY_SIZES {prefix}")
    return sizes


def parse_hosts(text: str | None) -> tuple[str, ...]:
    """Host names, comma-separated; none given: the loopback names."""
    return tuple(_split(text)) or DEFAULT_HOSTS


def parse_proxies(text: str | None, name: str = "GATEWAY_TRUSTED_PROXIES") -> tuple[Network, ...]:
    """Addresses or networks, comma-separated; an error names the setting as ``name``."""
    return tuple(_network(item, name) for item in _split(text))


def _network(text: str, name: str) -> Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f'{name} item "{text}" must be an IP address or network, e.g. 10.0.0.0/8.') from None


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _shared_signin(raw: str) -> str | None:
    """``GATEWAY_SHARED_SIGNIN``: ``1`` (Django's default cookie, ``sessionid``), a cookie name, or off."""
    value = raw.strip()
    if not value or value.lower() in _FALSE:
        return None
    if value.lower() in _TRUE:
        return "sessionid"
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", value):
        raise ValueError(f'GATEWAY_SHARED_SIGNIN="{raw}" must be 1, 0, or the name of Django\'s session cookie.')
    return value


def _strict_flag(environ: Mapping[str, str], name: str, default: bool) -> bool:
    """A yes/no setting: ``1``/``true``/``yes``/``on``, ``0``/``false``/``no``/``off``, or empty."""
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise ValueError(f'{name}="{raw}" must be 1 or 0 (also true/false, yes/no, on/off).')


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _split(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def _seconds(environ: Mapping[str, str], name: str) -> float:
    raw = environ.get(name, "").strip()
    try:
        value = float(raw or 0)
    except ValueError:
        value = -1
    if not 0 <= value < float("inf"):  # also nan
        raise ValueError(f'{name}="{raw}" must be a number of seconds, e.g. {name}=5.')
    return value


def _timeout(environ: Mapping[str, str], name: str, default: float) -> float:
    if not environ.get(name, "").strip():
        return default
    value = _seconds(environ, name)
    if value <= 0:
        raise ValueError(f'{name}="{environ[name]}" must be a number of seconds above 0, e.g. {name}={default:g}.')
    return value


def _prefix(text: str) -> str:
    if not text.startswith("/") or text == "/":
        raise ValueError(f'GATEWAY_STREAM_BODIES item "{text}" must be a mount prefix, e.g. "/uploads".')
    return text.rstrip("/")


def _positive_int(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f'{name}="{raw}" must be a positive whole number, e.g. {name}={default}.')
    return value
