"""Django's Redis cache, with no cache while Redis cannot be reached (REDIS_URL)."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from django.core.cache.backends.redis import RedisCache
from redis.exceptions import RedisError

logger = logging.getLogger("django_hello")


class _Health:
    """Whether Redis answers, for the whole process: Django makes a cache object per thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.down_since: float | None = None
        self.next_try = 0.0


_HEALTH: dict[str, _Health] = {}
_HEALTH_LOCK = threading.Lock()


class DegradingRedisCache(RedisCache):
    """Reads miss and writes are dropped while Redis cannot be reached.

    Django's ``cached_db`` sessions ignore a failed cache read but not the write that
    follows it: with the cache host gone, the admin answered 500 after 10 s
    (tests/system/test_netns.py). django-redis's ``IGNORE_EXCEPTIONS`` would swallow the errors
    too, but would try Redis again on every call (each waiting for the socket timeout
    while the host is gone) and would not clear what the cache held from before the
    outage: hence this small backend on Django's own.

    Sessions are in the database, not here (a sign-out must reach every host: see
    django_hello/settings.py). One WARNING line an outage (in each process); Redis is tried
    again every ``retry`` seconds, and cleared before it is used again, so that nothing
    changed meanwhile elsewhere comes back from it.
    """

    retry = 5.0

    def __init__(self, server: str, params: dict[str, Any]) -> None:
        super().__init__(server, params)
        with _HEALTH_LOCK:
            self._health = _HEALTH.setdefault(server, _Health())

    def _guard(self, default: Any, call: Callable[[], Any]) -> Any:
        health = self._health
        if health.down_since is not None:
            with health.lock:
                if health.down_since is not None:
                    if time.monotonic() < health.next_try:
                        return default
                    try:
                        super().clear()
                    except RedisError:
                        health.next_try = time.monotonic() + self.retry
                        return default
                    logger.info("The cache answers again after %.0f s; cleared it.",
                                time.monotonic() - health.down_since)
                    health.down_since = None
        try:
            return call()
        except RedisError as exc:
            with health.lock:
                if health.down_since is None:
                    health.down_since = time.monotonic()
                    logger.warning("The cache is unavailable (%s: %s); Django's cache misses, and Redis is "
                                   "tried again every %g s.", type(exc).__name__, exc, self.retry)
                health.next_try = time.monotonic() + self.retry
            return default

    def get(self, key: Any, default: Any = None, version: Any = None) -> Any:
        return self._guard(default, functools.partial(super().get, key, default, version))

    def get_many(self, keys: Any, version: Any = None) -> Any:
        return self._guard({}, functools.partial(super().get_many, keys, version))

    def has_key(self, key: Any, version: Any = None) -> Any:
        return self._guard(False, functools.partial(super().has_key, key, version))

    def add(self, *args: Any, **kwargs: Any) -> Any:
        return self._guard(False, functools.partial(super().add, *args, **kwargs))

    def set(self, *args: Any, **kwargs: Any) -> Any:
        return self._guard(None, functools.partial(super().set, *args, **kwargs))

    def set_many(self, *args: Any, **kwargs: Any) -> Any:
        return self._guard([], functools.partial(super().set_many, *args, **kwargs))

    def touch(self, *args: Any, **kwargs: Any) -> Any:
        return self._guard(False, functools.partial(super().touch, *args, **kwargs))

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        return self._guard(False, functools.partial(super().delete, *args, **kwargs))

    def delete_many(self, *args: Any, **kwargs: Any) -> Any:
        return self._guard(None, functools.partial(super().delete_many, *args, **kwargs))
