"""The gateway's settings: one table (:data:`SETTINGS`), one immutable :class:`Config`.

Each setting has a field of :class:`Config`, a ``GATEWAY_*`` variable, a key of the
``[gateway]`` table of ``gateway.toml`` and, for most, an option of ``gateway serve``,
all read by the same function. They are merged once, at the edge, by :func:`load_config`:
the defaults, then the file, then the variables, then the options, each over the one
before. ``gateway serve`` hands the result to the server and to every worker it starts
(pickled, never through ``os.environ``); the bare entry points (``gateway.wsgi``,
``gateway.asgi``) call :meth:`Config.from_env`. ``docs/configuration.md`` is generated
from the table (``scripts/configuration_docs.py``), and a test holds it to the code.

Before the demo apps are imported, :func:`configure_apps` translates these settings into
their own conventions (``DJANGO_*``, ``FLASK_*``), without overriding what the
environment already says.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from gateway.migration.rules import GatewayFile, read_gateway_file

DEFAULT_THREADS = 100
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "[::1]")
DEFAULT_MAX_BODY_SIZE = 10 * 1024 * 1024
DEFAULT_MAX_HEADER_SIZE = 16 * 1024
DEFAULT_BODY_TIMEOUT = 30.0
DEFAULT_SEND_TIMEOUT = 60.0
DEFAULT_HEADER_TIMEOUT = 5.0
DEFAULT_READY_TIMEOUT = 2.0
FLASK_PREFIX, DJANGO_PREFIX = "/flask", "/django"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_SIZE = re.compile(r"(\d+)\s*([KMG]?)(?:i?B)?", re.IGNORECASE)
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


@dataclass(frozen=True, kw_only=True)
class ServerSettings:
    """How ``gateway serve`` runs its server: its options, with uvicorn's names and meanings.

    ``kind``: ``uvicorn`` or ``granian``. ``backlog`` None: each server's default.
    ``limit_concurrency`` is the number of connections served at once (uvicorn's check
    counts the new connection too: it is given N + 1). ``reload_dirs``: the directories
    ``--reload`` watches, all of them.
    """

    kind: str = "uvicorn"
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    reload: bool = False
    log_level: str = "info"
    keep_alive: float = 5.0
    uds: str | None = None
    backlog: int | None = None
    root_path: str = ""
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    limit_concurrency: int | None = None
    limit_max_requests: int | None = None
    limit_max_requests_jitter: int = 0
    reload_dirs: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
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
    buffering_proxy: bool = False
    log_format: str = "text"
    access_log: bool = True
    drain_delay: float = 0.0
    graceful_timeout: float | None = None
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    send_timeout: float = DEFAULT_SEND_TIMEOUT
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    ready_timeout: float = DEFAULT_READY_TIMEOUT
    stream_bodies: tuple[str, ...] = ()
    stream_responses: tuple[str, ...] = ()
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
    #: The server ``gateway serve`` runs (its options only: the bare entry points have none).
    server: ServerSettings = field(default_factory=ServerSettings)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Config:
        """Read the settings from ``GATEWAY_*`` variables (and the ``gateway.toml`` they name,
        or ``./gateway.toml``)."""
        return load_config(environ)

    def with_file(self, path: Path | None) -> Config:
        """This configuration with the ``gateway.toml`` at ``path`` read in (None: none)."""
        if path is None:
            return replace(self, config_file=None, file=GatewayFile())
        file = read_gateway_file(path)  # first: it names a file that cannot be read in one line
        return replace(self, config_file=path.resolve(), file=file)

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


def production_problems(config: Config, environ: Mapping[str, str], *, demo: bool = True) -> list[str]:
    """What production cannot run with, one clause each, naming the variable and the fix.

    A wildcard host, which lets any ``Host`` header through to the apps; and, for the demo
    apps (``demo``), which read them from the environment: weak or missing secret keys, and
    debug mode on (Django's debug pages and Flask's debug mode show code, settings and URL
    patterns to anyone). Apps of your own keep their keys and debug switches in their own
    settings: ``gateway check --deploy`` runs Django's deployment checks on them.
    """
    import json

    wildcard = ('GATEWAY_ALLOWED_HOSTS allows any host ("*"): list your host names, '
                "e.g. GATEWAY_ALLOWED_HOSTS=example.org") if "*" in config.allowed_hosts else None
    if not demo:
        return [wildcard] if wildcard else []
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
    if wildcard:
        problems.append(wildcard)
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


def _migration_dir(value: str, name: str = "GATEWAY_MIGRATION_DIR") -> Path | None:
    """``GATEWAY_MIGRATION_DIR``: a directory the workers can write, or unset."""
    if not value.strip():
        return None
    path = Path(value.strip()).resolve()
    if not path.is_dir() or not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"{name}={value} is not a writable directory: create it, empty, for this "
                         "server's workers, or unset it.")
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


def _sizes(text: str, name: str = "GATEWAY_MAX_BODY_SIZES") -> dict[str, int]:
    sizes = {}
    for item in _split(text):
        prefix, sep, size = item.partition("=")
        if not sep or not prefix.startswith("/"):
            raise ValueError(f'{name} item "{item}" must be in the form "/prefix=size", e.g. "/django=20M".')
        sizes[prefix.rstrip("/")] = parse_size(size, f"{name} {prefix}")
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


def _shared_signin(raw: str, name: str = "GATEWAY_SHARED_SIGNIN") -> str | None:
    """``GATEWAY_SHARED_SIGNIN``: ``1`` (Django's default cookie, ``sessionid``), a cookie name, or off."""
    value = raw.strip()
    if not value or value.lower() in _FALSE:
        return None
    if value.lower() in _TRUE:
        return "sessionid"
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", value):
        raise ValueError(f'{name}="{raw}" must be 1, 0, or the name of Django\'s session cookie.')
    return value


def _strict_flag(text: str, name: str, default: bool) -> bool:
    """A yes/no setting: ``1``/``true``/``yes``/``on``, ``0``/``false``/``no``/``off``, or empty."""
    raw = text.strip()
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


def _seconds(text: str, name: str) -> float:
    raw = text.strip()
    try:
        value = float(raw or 0)
    except ValueError:
        value = -1
    if not 0 <= value < float("inf"):  # also nan
        raise ValueError(f'{name}="{raw}" must be a number of seconds, e.g. {name}=5.')
    return value


def _timeout(text: str, name: str, default: float) -> float:
    if not text.strip():
        return default
    value = _seconds(text, name)
    if value <= 0:
        raise ValueError(f'{name}="{text}" must be a number of seconds above 0, e.g. {name}={default:g}.')
    return value


def _prefix(text: str, name: str = "GATEWAY_STREAM_BODIES") -> str:
    if not text.startswith("/") or text == "/":
        raise ValueError(f'{name} item "{text}" must be a mount prefix, e.g. "/uploads".')
    return text.rstrip("/")


def _positive_int(raw: str, name: str, default: int) -> int:
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f'{name}="{raw}" must be a positive whole number, e.g. {name}={default}.')
    return value


@dataclass(frozen=True, kw_only=True)
class Setting:
    """One setting: its field of :class:`Config`, its variable, its ``gateway serve`` option,
    how its text is read, and what the docs say of it."""

    field: str
    variable: str
    #: Reads the text of a variable, an option or a file's value; ``name`` is how a
    #: ValueError (one sentence) names it: the variable, the option or the file's key.
    read: Callable[[str, str], object]
    default: str  # as the docs show it
    help: str
    option: str | None = None
    #: How the option is given: "value", "flag" (--x/--no-x) or "multiple" (repeated).
    kind: str = "value"
    #: What joins repeated options, and a file's list, into the variable's text.
    separator: str = ","

    def read_file_value(self, value: object, name: str) -> object:
        """Read a value of the ``[gateway]`` table: TOML's types, or the variable's text."""
        if isinstance(value, bool):
            return self.read("1" if value else "0", name)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return self.read(self.separator.join(value), name)
        if isinstance(value, str | int | float):
            return self.read(str(value), name)
        raise ValueError(f"{name} must be a string, a number, true or false, or a list of strings.")


def _choice(*choices: str) -> Callable[[str, str], str]:
    def read(raw: str, name: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError(f'{name}="{raw.strip()}" must be ' + " or ".join(f'"{c}"' for c in choices) + ".")
        return value
    return read


def _int(default: int) -> Callable[[str, str], int]:
    return lambda raw, name: _positive_int(raw, name, default)


def _timeout_of(default: float) -> Callable[[str, str], float]:
    return lambda raw, name: _timeout(raw, name, default)


SETTINGS: tuple[Setting, ...] = (
    Setting(field="env", variable="GATEWAY_ENV", read=_choice("development", "production"), default="development",
            help="`production` refuses to start, with one line listing every problem, without strong "
                 "`DJANGO_SECRET_KEY` and `FLASK_SECRET_KEY` (50+ random characters), with `DJANGO_DEBUG` or "
                 "`FLASK_DEBUG` on, or with `*` in the allowed hosts; in development the demo apps' keys are "
                 "generated once and kept in the data directory."),
    Setting(field="data_dir", variable="GATEWAY_DATA_DIR", read=lambda raw, name: Path(raw.strip()).resolve(),
            default="./var", help="The demo apps' SQLite database and generated keys, and the shadow comparisons' "
                                  "log; nothing is made there for apps of your own, but the rollouts' state "
                                  "when DATABASE_URL names no database (docs/rollouts.md)."),
    Setting(field="mounts", variable="GATEWAY_MOUNTS", read=lambda raw, name: tuple(raw.split()), default="",
            option="--mount", kind="multiple", separator=" ",
            help="More mounts, `/prefix=package.module:attribute` (`@wsgi` or `@asgi` to skip detection; "
                 "`module:factory()` calls a factory), space-separated; added to the gateway.toml's."),
    Setting(field="threads", variable="GATEWAY_THREADS", read=_int(DEFAULT_THREADS), default=str(DEFAULT_THREADS),
            option="--threads", help="Threads per worker for the WSGI apps under uvicorn."),
    Setting(field="allowed_hosts", variable="GATEWAY_ALLOWED_HOSTS", read=lambda raw, name: parse_hosts(raw),
            default=",".join(DEFAULT_HOSTS), option="--allowed-hosts",
            help="Host names served, comma-separated: any other gets a 400 before any app runs. `.example.org` "
                 "matches subdomains, `*` anything. Also the demo Django's `ALLOWED_HOSTS`."),
    Setting(field="max_body_size", variable="GATEWAY_MAX_BODY_SIZE", read=parse_size,
            default="10M", help="Request body limit (`K`, `M`, `G` suffixes): larger bodies get a 413 before they "
                                "are read. Also the demo apps' own limits."),
    Setting(field="max_body_sizes", variable="GATEWAY_MAX_BODY_SIZES", read=_sizes,
            default="", help="Per-mount body limits, `/django=50M,/flask=1M`."),
    Setting(field="max_header_size", variable="GATEWAY_MAX_HEADER_SIZE", read=parse_size,
            default="16K", help="Request headers in all: more gets a 431."),
    Setting(field="trusted_proxies", variable="GATEWAY_TRUSTED_PROXIES", read=parse_proxies,
            default="", option="--trusted-proxies",
            help="Addresses or networks (`10.0.0.0/8`) whose `X-Forwarded-For`, `-Proto`, `-Host`, `-Port` and "
                 "`-Prefix` are honoured (one hop, the last value, each only when well formed), comma-separated. "
                 "A client such a proxy cannot name (`unknown`, an address with a port) is unknown to the gateway, "
                 "never the proxy itself."),
    Setting(field="https", variable="GATEWAY_HTTPS", read=lambda raw, name: _strict_flag(raw, name, False),
            default="0", help="`1` when clients use HTTPS: secure cookies on both apps, and HSTS on every response "
                              "over HTTPS. Behind a proxy that ends TLS, list it in the trusted proxies too."),
    Setting(field="buffering_proxy", variable="GATEWAY_BUFFERING_PROXY",
            read=lambda raw, name: _strict_flag(raw, name, False), default="0",
            help="`1` when a proxy that reads each request whole before passing it on (nginx, whose "
                 "`proxy_request_buffering` is on by default) is in front. gunicorn gives the app no way to bound a "
                 "slow client, so under gunicorn the gateway warns without it, and refuses to start in production."),
    Setting(field="log_format", variable="GATEWAY_LOG_FORMAT", read=_choice("text", "json"), default="text",
            option="--log-format", help="Log lines as text, or as one JSON object a line, the banner included."),
    Setting(field="access_log", variable="GATEWAY_ACCESS_LOG", read=lambda raw, name: _strict_flag(raw, name, True),
            default="1", option="--access-log", kind="flag", help="One line per request (`0`: none)."),
    Setting(field="graceful_timeout", variable="GATEWAY_GRACEFUL_TIMEOUT", read=_seconds,
            default="no limit", option="--graceful-timeout",
            help="On shutdown, seconds to let running requests finish."),
    Setting(field="drain_delay", variable="GATEWAY_DRAIN_DELAY", read=_seconds,
            default="0", option="--drain-delay",
            help="On SIGTERM, seconds to keep serving (`Connection: close`, `/readyz` 503) before shutting down; "
                 "set it above your proxy's upstream `keepalive_timeout` (uvicorn only)."),
    Setting(field="header_timeout", variable="GATEWAY_HEADER_TIMEOUT", read=_timeout_of(DEFAULT_HEADER_TIMEOUT),
            default="5", option="--header-timeout",
            help="Seconds a connection gets to send a request's headers; then a 408 and the connection is closed."),
    Setting(field="body_timeout", variable="GATEWAY_BODY_TIMEOUT", read=_timeout_of(DEFAULT_BODY_TIMEOUT),
            default="30", option="--body-timeout",
            help="Seconds a request body may pause before a 408 (`gateway serve`, on uvicorn and Granian)."),
    Setting(field="send_timeout", variable="GATEWAY_SEND_TIMEOUT", read=_timeout_of(DEFAULT_SEND_TIMEOUT),
            default="60", option="--send-timeout",
            help="Seconds a WSGI app's response may wait on a client that takes none of it; then the connection "
                 "is cut off, with one warning (`gateway serve`, on uvicorn and Granian). On uvicorn a wait ends "
                 "when the write buffer has drained from 32 to 8 KiB: the default cuts off readers slower than "
                 "about 0.7 KiB/s."),
    Setting(field="ready_timeout", variable="GATEWAY_READY_TIMEOUT", read=_timeout_of(DEFAULT_READY_TIMEOUT),
            default="2", help="Seconds `/readyz` waits for its checks before answering 503 `busy`."),
    Setting(field="stream_bodies", variable="GATEWAY_STREAM_BODIES",
            read=lambda raw, name: tuple(_prefix(p, name) for p in _split(raw)), default="",
            option="--stream-body", kind="multiple",
            help="Mounts whose apps read uploads as they arrive, holding a thread meanwhile, comma-separated "
                 "prefixes (by default bodies are read whole first)."),
    Setting(field="stream_responses", variable="GATEWAY_STREAM_RESPONSES",
            read=lambda raw, name: tuple(_prefix(p, name) for p in _split(raw)), default="",
            option="--stream-response", kind="multiple",
            help="Mounts whose WSGI responses go out as the client takes them, holding a thread meanwhile "
                 "(server-sent events, endless downloads), comma-separated prefixes. By default a response "
                 "waits for its client in memory, then in a temporary file, up to 1 GiB, and the thread is freed "
                 "(`gateway serve`, on uvicorn and Granian)."),
    Setting(field="shared_signin", variable="GATEWAY_SHARED_SIGNIN", read=_shared_signin,
            default="0", help="`1`: one sign-in for both demo apps (Django's `sessionid` cookie is left at the site "
                              "root), or the name of Django's session cookie."),
    Setting(field="metrics", variable="GATEWAY_METRICS", read=lambda raw, name: _strict_flag(raw, name, False),
            default="0", option="--metrics", kind="flag",
            help="Answer `/metrics` (Prometheus) to loopback and the trusted proxies, summed over the workers."),
    Setting(field="tracing", variable="GATEWAY_TRACING", read=lambda raw, name: _strict_flag(raw, name, False),
            default="0", option="--tracing", kind="flag",
            help="An OpenTelemetry span per request, the client's `traceparent` honoured and passed on to the apps "
                 "(the `tracing` extra)."),
    Setting(field="migration_dir", variable="GATEWAY_MIGRATION_DIR", read=_migration_dir,
            default="one per run of gateway serve --workers N",
            help="An empty directory where the workers of one server share the migration page's counts."),
)
#: ``GATEWAY_CONFIG`` (``--config``) names the file the others can come from: read first, apart.
CONFIG_VARIABLE = "GATEWAY_CONFIG"


def load_config(environ: Mapping[str, str] = os.environ, options: Mapping[str, str] = {},
                config_file: Path | None = None) -> Config:
    """Merge the settings once: defaults, then the ``gateway.toml``'s ``[gateway]`` table, then
    the ``GATEWAY_*`` variables, then ``options`` (``gateway serve``'s, by option: its text).

    The file is ``config_file`` (``--config``), else ``GATEWAY_CONFIG``'s, else
    ``./gateway.toml`` if there is one. A value that cannot be read is one ValueError
    naming where it came from and the form it takes.
    """
    path = config_file or config_path(environ)
    gateway_file = read_gateway_file(path) if path is not None else GatewayFile()
    known = {setting.field for setting in SETTINGS}
    for key, (where, _) in gateway_file.settings.items():
        if key not in known:
            raise ValueError(f"{where}: unknown setting {key!r} in [gateway]; the settings are "
                             f"{', '.join(sorted(known))} (docs/configuration.md).")
    values: dict[str, object] = {}
    for setting in SETTINGS:
        if (given := gateway_file.settings.get(setting.field)) is not None:
            where, value = given
            try:
                values[setting.field] = setting.read_file_value(value, setting.field)
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
        if (raw := environ.get(setting.variable, "")).strip():
            values[setting.field] = setting.read(raw, setting.variable)
        if setting.option is not None and (text := options.get(setting.option)) is not None:
            values[setting.field] = setting.read(text, setting.option)
    return Config(**values, config_file=path.resolve() if path is not None else None,  # type: ignore[arg-type]
                  file=gateway_file)
