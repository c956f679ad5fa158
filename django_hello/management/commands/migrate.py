"""Django's ``migrate``, one at a time on a SQLite database file.

Two migrations of one database at once are not safe: on a fresh SQLite file both see no
tables, both create them, and the second fails with ``table "auth_permission" already
exists``. ``gateway serve`` migrates the embedded database when it starts, and
``gateway migrate``, ``gateway manage migrate`` and ``python -m django_hello migrate`` may
run at the same moment: all of them run this command, which first takes an exclusive
lock (``flock``) on ``<database>.migrate-lock`` next to the database file, so they take
turns, and the later one finds the migrations applied. The lock is the kernel's: it goes
with the process that holds it, however that process ends.

Other databases (PostgreSQL through ``DATABASE_URL``) are migrated once per release with
``gateway migrate``, never at start, and take no lock here.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.core.management.commands.migrate import Command as MigrateCommand
from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper


def sqlite_file(connection: BaseDatabaseWrapper) -> Path | None:
    """The file of a SQLite database (a path or a ``file:...?mode=rw`` URI); None for any other."""
    if connection.vendor != "sqlite" or connection.is_in_memory_db():
        return None
    return Path(str(connection.settings_dict["NAME"]).removeprefix("file:").partition("?")[0])


@contextlib.contextmanager
def migration_lock(connection: BaseDatabaseWrapper, waiting: Any = None) -> Iterator[None]:
    """Hold the migration lock of ``connection``'s SQLite file (none for other databases).

    ``waiting(path)`` is called when another process holds it, before waiting for it.
    """
    database = sqlite_file(connection)
    if database is None:
        yield
        return
    path = database.with_suffix(".migrate-lock")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting is not None:
                waiting(path)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


class Command(MigrateCommand):
    """``migrate`` holding the database's migration lock from its checks to its last signal."""

    def handle(self, *args: Any, **options: Any) -> None:
        def waiting(path: Path) -> None:
            if options["verbosity"] >= 1:
                self.stderr.write(f"Another migrate holds {path}; waiting for it to finish.")

        with migration_lock(connections[options["database"]], waiting):
            super().handle(*args, **options)
