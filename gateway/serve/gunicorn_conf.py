"""gunicorn's settings for the gateway, so that a reload cannot take the site down::

    gunicorn -c python:gateway.serve.gunicorn_conf gateway.wsgi:application

On ``SIGHUP`` gunicorn starts new workers, which read ``gateway.toml`` afresh, and stops
the old ones at once. With a file that cannot work, every new worker fails to boot and
gunicorn's master exits: the whole site goes down. Here the master first asks
``gateway routes`` (a process of its own, which reads, checks and imports everything the
file names, as a worker would) whether the file works. If it does not, the master logs
one line and starts no new worker, so the old ones keep serving the rules they have.

The master also keeps the configuration it last accepted (read at its start, and again
at each reload that passed the check), and every worker it forks builds from that one
(``post_fork``, through :data:`gateway.serve.builder.forked_config`), never from the file
as it is when the worker starts: a worker that replaces one that died (killed, out of
memory) would otherwise read a file edited since, fail to boot, and gunicorn's master
would shut the whole site down.

This reaches into two things gunicorn 23-27 does in ``Arbiter.reload`` (it spawns
``workers`` new ones, then waits until every worker is newer than the last it had),
which no public hook can stop: ``tests/system/test_gunicorn_servers.py`` holds it to
gunicorn's behaviour.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from gateway.core.config import Config

#: Seconds the check of a file may take (it imports the apps, Django included).
CHECK_TIMEOUT = 120

#: The configuration the master last accepted; None until it starts, or when the
#: environment's cannot be read (each worker then reads it, and says what is wrong).
accepted: Config | None = None


def accept() -> None:
    """Keep the environment's configuration as the one workers build from."""
    global accepted
    try:
        accepted = Config.from_env()
    except Exception:  # a worker reads it again, and its error says what is wrong, as before
        accepted = None


def problem_with_configuration() -> str | None:
    """What ``gateway routes`` says is wrong with the configuration a new worker would
    read (the environment and folder of this process), or None if it works."""
    try:
        done = subprocess.run([sys.executable, "-m", "gateway", "routes"], capture_output=True, text=True,
                              env=os.environ.copy(), timeout=CHECK_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        return f"checking it took more than {CHECK_TIMEOUT} s"
    if done.returncode == 0:
        return None
    lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    last = lines[-1] if lines else f"`gateway routes` exited with status {done.returncode}"
    return last.removeprefix("gateway: error: ").removeprefix("Error: ").rstrip(".")


def on_starting(server: Any) -> None:
    """gunicorn's hook, run by the master before it binds: the open-files limit raised to
    the hard limit, as ``gateway serve`` does (each client is a file)."""
    from gateway.serve.runners import raise_open_files_limit

    raise_open_files_limit()
    accept()


def post_fork(server: Any, worker: Any) -> None:
    """gunicorn's hook, run in each new worker before it loads the app: the gateway is
    built from the configuration the master accepted (:data:`accepted`)."""
    if accepted is not None:
        from gateway.serve import builder

        builder.forked_config = accepted


def post_worker_init(worker: Any) -> None:
    """gunicorn's hook, run in a worker once its app is loaded: one line that it serves."""
    worker.log.info("Worker (pid:%s) serves the gateway.", worker.pid)


def on_reload(server: Any) -> None:
    """gunicorn's hook, run by the master on ``SIGHUP`` before it starts new workers."""
    problem = problem_with_configuration()
    if problem is None:
        accept()
        return
    server.log.error("The configuration was not reloaded: %s; the workers keep serving what they had.", problem)
    keep_workers(server)


def keep_workers(server: Any) -> None:
    """Make this reload start no worker and stop none.

    ``Arbiter.reload`` calls ``spawn_worker`` ``workers`` times, then stops the oldest
    workers past that number, then waits until every worker is newer than those it had:
    the spawns are skipped, and the workers kept are made newer (their order unchanged).
    """
    left = server.cfg.workers

    def skip() -> None:
        nonlocal left
        left -= 1
        if left <= 0:
            del server.spawn_worker  # gunicorn's own again, for the next worker it needs
            offset = server.worker_age
            for worker in server.WORKERS.values():
                worker.age += offset
            server.worker_age += offset

    if left <= 0:
        return
    server.spawn_worker = skip
