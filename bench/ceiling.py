"""The ceiling: WSGI apps called in-process in a tight loop, with no server at all.

The environ is built once with Werkzeug's test tools; each call gets a shallow copy
(the frameworks store their request objects in it), then the response is consumed and
closed, as a server would. Several targets are measured in alternating batches of about
0.1 s, so that drift of the machine hits them alike. Prints one JSON line per target::

    taskset -c 0 python -m bench.ceiling flask gateway-flask --seconds 5
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
from collections.abc import Callable
from typing import Any

from gateway.core.config import Config, configure_apps

TARGETS = {
    "flask": ("flask_hello:app", "/"),
    "django": ("django_hello.wsgi:application", "/"),
    "gateway-flask": ("gateway.wsgi:application", "/flask/"),
    "gateway-django": ("gateway.wsgi:application", "/django/"),
}
_BATCH = 50


def load(target: str) -> Callable[..., Any]:
    """Import ``module:attr``."""
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)  # type: ignore[no-any-return]


class Target:
    """One app and a prepared request to it."""

    def __init__(self, name: str) -> None:
        from werkzeug.test import EnvironBuilder

        target, path = TARGETS[name]
        self.name = name
        self.app = load(target)
        self.environ = EnvironBuilder(path=path, base_url="http://127.0.0.1:8000").get_environ()
        self.calls = 0
        self.seconds = 0.0
        self.status = ""

    def start_response(self, status: str, headers: list[tuple[str, str]], exc_info: object = None) -> Any:
        self.status = status
        return lambda data: None

    def call(self) -> None:
        """Call the app once, as a server would."""
        result = self.app(self.environ.copy(), self.start_response)
        try:
            for _ in result:
                pass
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()

    def batch(self, seconds: float) -> None:
        """Call the app for about ``seconds``, counting calls and time."""
        start = time.perf_counter()
        deadline = start + seconds
        calls = 0
        while True:
            for _ in range(_BATCH):
                self.call()
            calls += _BATCH
            now = time.perf_counter()
            if now >= deadline:
                break
        self.calls += calls
        self.seconds += now - start


def measure(names: list[str], seconds: float) -> list[Target]:
    """Measure each target for ``seconds`` in total, in alternating batches."""
    targets = [Target(name) for name in names]
    for target in targets:
        target.call()
        if not target.status.startswith("200"):
            raise SystemExit(f"{target.name} answered {target.status!r} in-process, expected 200 OK.")
        for _ in range(200):  # warm caches (templates, URL resolvers)
            target.call()
        target.calls, target.seconds = 0, 0.0
    while min(t.seconds for t in targets) < seconds:
        for target in targets:
            target.batch(min(0.1, seconds))
    return targets


def main() -> None:
    """Measure the targets and print the results as JSON lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="+", choices=sorted(TARGETS))
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per target")
    args = parser.parse_args()
    configure_apps(Config.from_env())
    for target in measure(args.targets, args.seconds):
        rps = target.calls / target.seconds
        print("CEILING_JSON " + json.dumps({"target": target.name, "rps": rps, "calls": target.calls}), flush=True)


if __name__ == "__main__":
    main()
