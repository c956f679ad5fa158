"""Drive the ASGI lifespan protocol of each ASGI mount from the gateway's own.

The gateway answers the server's lifespan itself and, for every ASGI mount, runs the
mount's lifespan as a bare server would: each gets a ``state`` dict of its own in its
lifespan scope, and each request to that mount gets a shallow copy of it (as uvicorn
copies a bare app's state into each request scope), so ``request.state`` works mounted.
A mount that does not speak lifespan (Django's ASGI handler raises on it) is skipped. A
mount's failed start-up fails the gateway's; a failed shutdown is reported as
``lifespan.shutdown.failed`` with the mount's message, so the server logs it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from gateway.core.mounts import MountTable
from gateway.types import ASGIApp, Message

logger = logging.getLogger("gateway")


class LifespanError(RuntimeError):
    """A mount failed to start or to shut down; the message names it."""


class LifespanDriver:
    """Run one ASGI mount's lifespan beside the gateway's."""

    def __init__(self, app: ASGIApp, prefix: str) -> None:
        self.app = app
        self.prefix = prefix
        self.state: dict[str, Any] = {}
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.outbox: asyncio.Queue[Message] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.received = False  # whether the app has taken a lifespan message

    async def _run(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": self.state}
        await self.app(scope, self._receive, self.outbox.put)

    async def _receive(self) -> Message:
        message = await self.inbox.get()
        self.received = True
        return message

    async def _answer(self) -> Message | None:
        """The mount's next lifespan message, or None if it ended without one."""
        assert self.task is not None
        getter = asyncio.ensure_future(self.outbox.get())
        await asyncio.wait({getter, self.task}, return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            return getter.result()
        getter.cancel()
        error = self.task.exception()
        if error is not None and self.received:
            # It took the message, then raised: a failure, not a lack of support (Django's
            # handler raises on the scope, before it receives anything).
            raise LifespanError(f"The app at {self.prefix} failed: {type(error).__name__}: {error}")
        if error is not None:
            logger.debug("The app at %s does not support lifespan.", self.prefix)
        return None

    async def startup(self) -> bool:
        """Start the mount; True if it took part in the protocol."""
        self.task = asyncio.create_task(self._run())
        self.task.add_done_callback(_retrieve)
        await self.inbox.put({"type": "lifespan.startup"})
        answer = await self._answer()
        if answer is None:
            return False
        if answer["type"] == "lifespan.startup.failed":
            raise LifespanError(f"The app at {self.prefix} failed to start: {answer.get('message', '')}")
        return True

    async def shutdown(self) -> None:
        """Stop the mount; raise :class:`LifespanError` if it says it failed."""
        await self.inbox.put({"type": "lifespan.shutdown"})
        answer = await self._answer()
        if answer is not None and answer["type"] == "lifespan.shutdown.failed":
            raise LifespanError(f"The app at {self.prefix} failed to shut down: {answer.get('message', '')}")


def _retrieve(task: asyncio.Task[None]) -> None:
    """Take a mount's lifespan exception once its task ends, so that asyncio never logs
    "Task exception was never retrieved" with a second traceback. Starlette sends
    ``lifespan.startup.failed`` and then raises the error again; :meth:`LifespanDriver._answer`
    has reported the failure already, as uvicorn stays quiet about a bare app's exception
    after a ``*.failed`` message."""
    if not task.cancelled() and (error := task.exception()) is not None:
        logger.debug("The lifespan of an ASGI mount ended with %s: %s", type(error).__name__, error)


class Lifespans:
    """The lifespans of a table's ASGI mounts, and the state each one keeps."""

    def __init__(self, table: MountTable) -> None:
        self.drivers = [LifespanDriver(m.app, m.prefix) for m in table if m.interface == "asgi"]
        self.running: list[LifespanDriver] = []
        #: prefix -> the state the mount's lifespan filled, for its requests.
        self.states: dict[str, dict[str, Any]] = {}

    async def startup(self) -> None:
        """Start every mount in order; on a failure, stop those started and raise."""
        for driver in self.drivers:
            try:
                started = await driver.startup()
            except LifespanError:
                await self.shutdown()
                raise
            if started:
                self.running.append(driver)
                if driver.state:
                    self.states[driver.prefix] = driver.state

    async def shutdown(self) -> None:
        """Stop the running mounts in reverse order; raise if any failed, naming each."""
        failures = []
        while self.running:
            try:
                await self.running.pop().shutdown()
            except LifespanError as exc:
                failures.append(str(exc))
        if failures:
            raise LifespanError(" ".join(failures))


async def serve_lifespan(lifespans: Lifespans, receive: Any, send: Any, on_startup: Any = None,
                         on_shutdown: Any = None) -> None:
    """Answer the server's lifespan messages for the gateway."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                await lifespans.startup()
            except LifespanError as exc:
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
            if on_startup is not None:
                on_startup()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            try:
                await lifespans.shutdown()
            except LifespanError as exc:
                await send({"type": "lifespan.shutdown.failed", "message": str(exc)})
                return
            finally:
                if on_shutdown is not None:
                    on_shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return
