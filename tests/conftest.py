"""Runs first: the environment the in-process apps need. The fixtures are in the plugin
``tests/fixtures.py``, the helpers in ``tests/support.py``."""

from __future__ import annotations

import os
import tempfile

# The in-process apps read their settings when first imported: point them at a data
# directory of their own before anything imports Django.
_DATA_DIR = tempfile.mkdtemp(prefix="gateway-tests-")
os.environ["GATEWAY_DATA_DIR"] = _DATA_DIR
for _name in ("DJANGO_DATA_DIR", "DJANGO_ALLOWED_HOSTS", "FLASK_TRUSTED_HOSTS", "FLASK_SECRET_KEY",
              "DATABASE_URL", "GATEWAY_MOUNTS", "SCRIPT_NAME"):
    os.environ.pop(_name, None)

pytest_plugins = ["tests.fixtures"]
