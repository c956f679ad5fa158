"""The worked example's Django port, made to fail: once the file ``FLAKY_PORT_FROM`` names
exists, every 20th answer is a 500 (5%), as a port with a bug some requests reach."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from newshop.wsgi import application as port

_FROM = Path(os.environ["FLAKY_PORT_FROM"])
_counter = itertools.count()


def application(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """The port, or a 500 for one request in 20 once the file exists."""
    if _FROM.exists() and next(_counter) % 20 == 0:
        start_response("500 Internal Server Error", [("Content-Type", "text/plain"), ("X-Served-By", "flaky port")])
        return [b"The port failed.\n"]
    return port(environ, start_response)  # type: ignore[no-any-return]
