"""Bodies between a worker thread and the event loop, so that no thread waits on a client.

The bridge (:mod:`gateway.adapters.bridge`) runs a WSGI app in a pool thread; the client is
served by the loop. These two buffers stand between them:

- :class:`Outbox`, a response on its way out. The thread puts each chunk and goes back
  to the app; the loop sends the chunks as the client takes them. Up to ``memory`` bytes
  wait in memory, more in a temporary file, up to ``limit`` bytes in all, as nginx buffers
  a response (``proxy_buffering``, ``proxy_max_temp_file_size``). Past ``limit`` the
  thread waits for the client, as nginx then passes the rest on synchronously; a
  client that takes nothing for the send timeout is cut off, which frees the thread.
- :class:`ReadAhead`, a request body on its way in, for a mount whose app reads its
  body as it arrives (``GATEWAY_STREAM_BODIES``). The loop receives up to ``limit`` bytes
  ahead of the app; the thread reads from them, and waits only when the app has read
  everything that has arrived: the one wait of a thread on a client left, bounded by the
  body timeout (``docs/upstream.md``).

Who does the file I/O: the thread writes the spilled part of a response (``os.pwrite``);
the loop reads it back (``os.pread``), in pieces of at most ``piece`` bytes, of data
written a moment before: page-cache reads, the same stance as the request body that
:func:`gateway.adapters.boundary.read_body` spools from the loop. The lock guards only
counters and queues, never I/O, so the loop never waits on the thread's writes.
"""

from __future__ import annotations

import asyncio
import io
import os
import tempfile
import threading
from collections import deque
from typing import IO, Any

from werkzeug.exceptions import ClientDisconnected as _WerkzeugClientDisconnected

from gateway.types import Message, Receive, Send


class ClientDisconnected(_WerkzeugClientDisconnected, OSError):
    """The client went away before the request body was read in full.

    A Werkzeug ``BadRequest`` (Flask answers it with a 400 and logs no traceback) and an
    ``OSError`` (Django turns it into ``UnreadablePostError``).
    """


#: A response's file is written from its start again once read out; while it is still
#: being read, past this size the rest goes to a new file, and the read one is closed.
FILE_SIZE = 16 * 1024 * 1024
#: The most sends a response makes before it lets the loop run the rest of its work.
SENDS_A_TURN = 16


def _release(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class SendWatch:
    """Cuts off the task that awaits a ``send`` once that send has waited ``timeout`` seconds.

    One timer for a whole response, not one per ``send`` as ``asyncio.timeout`` would
    set: when 300 large responses began at once under Granian (8 KiB a ``send``), the
    timers took a fifth of the loop's time (py-spy). The timer fires once per ``timeout``
    at most; a send that began since it was set moves it on. The sender sets
    :attr:`since` (``loop.time()``) before each ``send``, and None after.
    """

    __slots__ = ("_handle", "_loop", "_timeout", "expired", "since", "task")

    #: A timer may fire this much early (asyncio's clock resolution, uvloop's milliseconds).
    EARLY = 0.002

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float, task: asyncio.Task[Any]) -> None:
        self._loop = loop
        self._timeout = timeout
        self.task = task
        self.since: float | None = None
        self.expired = False
        self._handle = loop.call_at(loop.time() + timeout, self._check)

    def _check(self) -> None:
        since = self.since
        now = self._loop.time()
        if since is not None and now - since >= self._timeout - self.EARLY:
            self.expired = True
            self.task.cancel()
            return
        self._handle = self._loop.call_at((now if since is None else since) + self._timeout, self._check)

    def stop(self) -> None:
        self._handle.cancel()


class Outbox:
    """A response body from a worker thread (:meth:`put`, :meth:`end`) to the loop (:meth:`drain`).

    ``limit`` 0 makes every :meth:`put` wait until its chunk is sent: a streamed response.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, *, memory: int, limit: int, piece: int,
                 file_size: int = FILE_SIZE) -> None:
        self._loop = loop
        self._memory = memory
        self._limit = limit
        self._piece = piece
        self._file_size = file_size
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._chunks: deque[bytes | memoryview] = deque()  # waiting in memory, oldest first
        # The chunks waiting in files, oldest first: [file, offset, size] each.
        self._spilled: deque[list[Any]] = deque()
        self._file: IO[bytes] | None = None  # the file being written
        self._write_at = 0
        self._in_memory = 0  # bytes from memory not yet sent
        self._pending = 0  # bytes put and not yet sent
        self._ended = False
        self._complete = False
        self._waiter: asyncio.Future[None] | None = None  # the loop, waiting for a chunk
        self._users = 2  # the thread and the loop: the last to leave closes the file
        #: The client is gone or was cut off: nothing more is sent, and :meth:`put` says so.
        self.closed = False
        #: Bytes that went through the file (for the tests and the docs' numbers).
        self.spilled = 0

    # -- the thread's side --------------------------------------------------------------

    def put(self, data: bytes) -> bool:
        """Queue ``data`` (not empty); wait while more than ``limit`` bytes are unsent.

        Return False once the client is gone: the app need not be asked for more.
        """
        size = len(data)
        with self._lock:
            if self.closed:
                return False
            if not self._spilled and self._in_memory + size <= self._memory:
                # A memoryview: a chunk longer than ``piece`` leaves in pieces, each copied once.
                self._chunks.append(data if size <= self._piece else memoryview(data))
                self._in_memory += size
                return self._queued(size)
            if not self._spilled:
                self._write_at = 0  # the file was read out: start it over
            elif self._write_at + size > self._file_size and self._write_at:
                # Still being read: go on in a new file, and let the loop close this one
                # once read, so that a long response takes no more disk than it holds back.
                self._file = None
                self._write_at = 0
            offset = self._write_at
            self._write_at += size
            file = self._file
        if file is None:
            file = self._file = tempfile.TemporaryFile()  # noqa: SIM115 - closed once read, or by leave()
        _write(file, data, offset)
        with self._lock:
            if self.closed:
                return False
            self._spilled.append([file, offset, size])
            self.spilled += size
            return self._queued(size)

    def _queued(self, size: int) -> bool:
        """(Under the lock.) Count ``size`` more bytes to send, wake the loop, wait for room."""
        self._pending += size
        self._wake()
        while self._pending > self._limit and not self.closed:
            self._room.wait()
        return not self.closed

    def end(self, complete: bool = True) -> None:
        """No more chunks: the loop sends the end once the rest is out; with ``complete``
        False (the app failed) it sends the rest and no end, and the server aborts."""
        with self._lock:
            self._ended = True
            self._complete = complete
            self._wake()

    def _wake(self) -> None:
        """(Under the lock.) Wake the loop if it waits for a chunk."""
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            self._loop.call_soon_threadsafe(_release, waiter)

    def leave(self) -> None:
        """The thread, or the loop, is done with this outbox (once each): the last closes its files."""
        with self._lock:
            self._users -= 1
            if self._users:
                return
            files = {id(f): f for f, _, _ in self._spilled}
            if self._file is not None:
                files[id(self._file)] = self._file
            self._spilled.clear()
        for file in files.values():
            file.close()

    # -- the loop's side ----------------------------------------------------------------

    async def drain(self, send: Send, timeout: float) -> None:
        """Send the body as it comes, to its end or until :meth:`cut`.

        Each ``send`` must return within ``timeout`` seconds (else TimeoutError): a
        server's ``send`` waits while its write buffer is full, that is, on the client.
        """
        task = asyncio.current_task()
        assert task is not None, "drain() runs in a task"
        watch = SendWatch(self._loop, timeout, task)
        turn = SENDS_A_TURN
        try:
            while True:
                taken = self._take()
                if isinstance(taken, asyncio.Future):
                    await taken
                    continue
                if taken is None:
                    if not self.closed and self._complete:  # the end: the rest is out
                        watch.since = self._loop.time()
                        await send({"type": "http.response.body", "body": b"", "more_body": False})
                    return
                data, from_memory = taken
                watch.since = self._loop.time()
                await send({"type": "http.response.body", "body": data, "more_body": True})
                watch.since = None
                with self._lock:
                    self._pending -= len(data)
                    if from_memory:
                        self._in_memory -= len(data)
                    if self._pending <= self._limit:
                        self._room.notify()
                turn -= 1
                if not turn:
                    # A send that the server takes at once returns without a turn of the
                    # loop, and Granian's takes every one at once, ignored, once the
                    # client has gone: the loop would read out the whole rest of a file
                    # before the disconnect could cut it off, and nothing else would run.
                    turn = SENDS_A_TURN
                    await asyncio.sleep(0)
        except asyncio.CancelledError:
            if watch.expired and watch.task.uncancel() == 0:
                raise TimeoutError from None
            raise
        finally:
            watch.stop()
            self.cut()

    def _take(self) -> tuple[bytes, bool] | asyncio.Future[None] | None:
        """The next chunk to send and whether it came from memory, a future to wait on for
        one, or None at the end (or once cut off)."""
        with self._lock:
            if self.closed:
                return None
            if self._chunks:
                chunk = self._chunks[0]
                if len(chunk) <= self._piece:
                    self._chunks.popleft()
                    return bytes(chunk), True
                self._chunks[0] = chunk[self._piece :]
                return bytes(chunk[: self._piece]), True
            if not self._spilled:
                if self._ended:
                    return None
                self._waiter = self._loop.create_future()
                return self._waiter
            segment = self._spilled[0]
            file, offset, left = segment
        data = os.pread(file.fileno(), min(left, self._piece), offset)
        if not data:
            raise RuntimeError("A response's temporary file ended before the data written to it.")
        with self._lock:
            segment[1] += len(data)
            segment[2] -= len(data)
            done = None
            if not segment[2]:
                self._spilled.popleft()
                if file is not self._file and not (self._spilled and self._spilled[0][0] is file):
                    done = file  # read out, and the thread writes a newer one
        if done is not None:
            done.close()
        return data, False

    def cut(self) -> None:
        """Stop sending (the client went, or took too long); the thread's :meth:`put` returns False."""
        with self._lock:
            self.closed = True
            self._chunks.clear()
            self._room.notify_all()
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            _release(waiter)


def _write(file: IO[bytes], data: bytes, offset: int) -> None:
    fd = file.fileno()
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


class BodyTimedOut(ClientDisconnected):
    """The request body stopped arriving for the body timeout."""


class ReadAhead(io.RawIOBase):
    """``wsgi.input`` of a streaming mount: the loop receives up to ``limit`` bytes ahead of
    the app, which reads them in its thread.

    With ``started`` False (``Expect: 100-continue``) nothing is received before the app's
    first read, so that the app can refuse the body before the server asks for it.
    Between two messages the client gets ``timeout`` seconds; then the read raises
    :class:`BodyTimedOut`. A client gone raises :class:`ClientDisconnected`.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, receive: Receive, first: bytes, *,
                 limit: int, timeout: float, started: bool = True) -> None:
        self._loop = loop
        self._receive = receive
        self._limit = limit
        self._timeout = timeout
        self._buffer = bytearray(first)
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._room: asyncio.Future[None] | None = None  # the loop, waiting for the app to read
        self._error: ClientDisconnected | None = None
        self._task: asyncio.Task[None] | None = None
        #: The whole body has arrived (the bridge then watches for the client leaving).
        self.complete = False
        if started:
            self._start()

    def readable(self) -> bool:
        return True

    # -- the loop's side ----------------------------------------------------------------

    def _start(self) -> None:
        if self._task is None and not self.complete:
            self._task = self._loop.create_task(self._fill())

    async def _fill(self) -> None:
        error: ClientDisconnected | None = None
        try:
            while True:
                with self._lock:
                    if len(self._buffer) >= self._limit:
                        self._room = self._loop.create_future()
                if self._room is not None:
                    await self._room
                    continue
                async with asyncio.timeout(self._timeout):
                    message: Message = await self._receive()
                if message["type"] != "http.request":
                    error = ClientDisconnected("The client closed the connection while sending the body.")
                    return
                more = message.get("more_body", False)
                with self._lock:
                    self._buffer += message.get("body", b"")
                    self.complete = not more
                    self._arrived.notify_all()
                if not more:
                    return
        except TimeoutError:
            error = BodyTimedOut(f"The request body stopped arriving for {self._timeout:g} s.")
        except asyncio.CancelledError:
            error = ClientDisconnected("The request was cancelled while its body was read.")
            raise
        finally:
            with self._lock:
                self._error = error if not self.complete else None
                self.complete = True  # nothing more will arrive, one way or the other
                self._arrived.notify_all()

    def stop(self) -> None:
        """On the loop, once the app is done: receive no more of the body."""
        if self._task is not None:
            self._task.cancel()

    # -- the thread's side --------------------------------------------------------------

    def _part(self, most: int, line: bool = False) -> bytes:
        """Up to ``most`` bytes that have arrived (to the first newline, with ``line``), waiting
        for some if none have; b"" at the end of the body; the body's error after its data."""
        with self._lock:
            if self._task is None and not self.complete:
                self._loop.call_soon_threadsafe(self._start)
            while not self._buffer and not self.complete:
                self._arrived.wait()
            if not self._buffer:
                if self._error is not None:
                    raise self._error
                return b""
            size = min(most, len(self._buffer))
            if line and (end := self._buffer.find(b"\n", 0, size)) >= 0:
                size = end + 1
            data = bytes(self._buffer[:size])
            del self._buffer[:size]
            room, self._room = self._room, None
        if room is not None:
            self._loop.call_soon_threadsafe(_release, room)
        return data

    def read(self, size: int | None = -1) -> bytes:
        # To ``size`` bytes or the end, as ``wsgi.input`` readers expect of a whole body.
        left = size if size is not None and size >= 0 else None
        parts = []
        while left is None or left > 0:
            part = self._part(self._limit if left is None else left)
            if not part:
                break
            parts.append(part)
            if left is not None:
                left -= len(part)
        return b"".join(parts)

    def readinto(self, target: Any) -> int:
        data = self.read(len(target))
        target[: len(data)] = data
        return len(data)

    def readline(self, size: int | None = -1) -> bytes:
        left = size if size is not None and size >= 0 else None
        parts = []
        while left is None or left > 0:
            part = self._part(self._limit if left is None else left, line=True)
            if not part:
                break
            parts.append(part)
            if left is not None:
                left -= len(part)
            if part.endswith(b"\n"):
                break
        return b"".join(parts)
