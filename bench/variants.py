"""Diagnostic variants of the gateway, to split its overhead into parts.

``gateway_without_access_log`` is ``gateway.asgi:application`` with the
``gateway.access`` logger silenced: ``gateway serve`` writes an access line per request
whatever ``--log-level`` says, while the baselines write none::

    uvicorn --factory bench.variants:gateway_without_access_log
"""

from __future__ import annotations

import logging
from typing import Any


def gateway_without_access_log() -> Any:
    """Build the ASGI gateway, then turn its access log off."""
    import gateway.asgi

    application = gateway.asgi.application
    logging.getLogger("gateway.access").setLevel(logging.WARNING)
    return application
