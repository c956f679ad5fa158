"""Static file URLs that follow the script prefix of each request."""

from __future__ import annotations

from django.contrib.staticfiles.storage import StaticFilesStorage
from django.urls import get_script_prefix


class ScriptPrefixStaticFilesStorage(StaticFilesStorage):
    """Put the current request's script prefix in front of a relative STATIC_URL.

    Django resolves a relative STATIC_URL once, with the script prefix of whatever
    code reads it first, and caches it (``LazySettings.__getattr__``); WhiteNoise reads
    it at start-up, when the prefix is still ``/``. Mounted at ``/django`` (or under a
    proxy's ``X-Forwarded-Prefix``), pages would then link ``/static/...``. Resolving
    the prefix on every call keeps each link under the prefix the request came in on.
    """

    def __init__(self, location: str | None = None, base_url: str | None = None) -> None:
        super().__init__(location, base_url="/static/")
        self._relative_url = (base_url or "static/").lstrip("/")

    @property  # type: ignore[override]
    def base_url(self) -> str:
        return get_script_prefix() + self._relative_url
