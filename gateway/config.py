"""The gateway's settings, read from ``GATEWAY_*`` environment variables.

The ``gateway`` command writes its options into the same variables, so that every
server worker process (uvicorn, Granian, gunicorn) builds the same gateway. Before the
apps are imported, :func:`configure_apps` translates these settings into each
framework's own conventions (``DJANGO_*``, ``FLASK_*``), without overriding what the
environment already says.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_THREADS = 100
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "[::1]")


@dataclass(frozen=True)
class Config:
    """What the gateway serves and how."""

    mounts: tuple[str, ...] = ()
    threads: int = DEFAULT_THREADS
    data_dir: Path = field(default_factory=lambda: Path("var").resolve())
    allowed_hosts: tuple[str, ...] = DEFAULT_HOSTS

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Config:
        """Read the settings from ``GATEWAY_*`` variables."""
        return cls(
            mounts=tuple(environ.get("GATEWAY_MOUNTS", "").split()),
            threads=_positive_int(environ, "GATEWAY_THREADS", DEFAULT_THREADS),
            data_dir=Path(environ.get("GATEWAY_DATA_DIR", "var")).resolve(),
            allowed_hosts=tuple(_split(environ.get("GATEWAY_ALLOWED_HOSTS"))) or DEFAULT_HOSTS,
        )

    def to_env(self) -> dict[str, str]:
        """Return the ``GATEWAY_*`` variables that :meth:`from_env` reads back."""
        return {
            "GATEWAY_MOUNTS": " ".join(self.mounts),
            "GATEWAY_THREADS": str(self.threads),
            "GATEWAY_DATA_DIR": str(self.data_dir),
            "GATEWAY_ALLOWED_HOSTS": ",".join(self.allowed_hosts),
        }


def configure_apps(config: Config, environ: MutableMapping[str, str] = os.environ) -> None:
    """Set the frameworks' own variables from the gateway's, where not already set."""
    environ.setdefault("DJANGO_SETTINGS_MODULE", "django_hello.settings")
    environ.setdefault("DJANGO_DATA_DIR", str(config.data_dir))
    environ.setdefault("DJANGO_ALLOWED_HOSTS", ",".join(config.allowed_hosts))
    environ.setdefault("FLASK_TRUSTED_HOSTS", json.dumps(_flask_hosts(config.allowed_hosts)))
    if "FLASK_SECRET_KEY" not in environ:
        environ["FLASK_SECRET_KEY"] = stored_secret(config.data_dir, "flask-secret-key")


def stored_secret(data_dir: Path, name: str) -> str:
    """Return the secret kept in ``data_dir/name``, generating it the first time."""
    path = data_dir / name
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    # O_EXCL: when several workers start at once, the first key written wins.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    key = secrets.token_urlsafe(50)
    with os.fdopen(fd, "w") as f:
        f.write(key)
    return key


def _flask_hosts(hosts: tuple[str, ...]) -> list[str]:
    """Translate Django-style host patterns (``.example.com``, ``*``) for Flask."""
    # Werkzeug matches a leading dot as a suffix, like Django; an empty list allows all.
    return [] if "*" in hosts else list(hosts)


def _split(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


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
