"""``gateway.adapters.buffering.Outbox`` alone: a thread puts, the loop drains, in order,
through memory and a temporary file (the bridge's tests in tests/integration/test_bridge.py cover it
inside a request)."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from gateway.adapters.buffering import SENDS_A_TURN, ClientDisconnected, Outbox, ReadAhead
from gateway.types import Message

TIMEOUT = 5.0
T = TypeVar("T")


def drained(chunks: list[bytes], *, memory: int, limit: int = 1 << 30, piece: int = 1 << 16,
            file_size: int = 1 << 24, file_sizes: list[int] | None = None) -> tuple[list[bytes], Outbox]:
    """Put ``chunks`` from a thread; return what the loop sent, and the outbox. The size of
    its file at each send goes to ``file_sizes``."""
    sent: list[bytes] = []

    async def main() -> Outbox:
        loop = asyncio.get_running_loop()
        outbox = Outbox(loop, memory=memory, limit=limit, piece=piece, file_size=file_size)

        def produce() -> None:
            for chunk in chunks:
                assert outbox.put(chunk)
            outbox.end()
            outbox.leave()

        async def send(message: Message) -> None:
            sent.append(message["body"])
            if file_sizes is not None:
                files = {id(segment[0]): segment[0] for segment in outbox._spilled}
                file_sizes.extend(os.fstat(f.fileno()).st_size for f in files.values())
            if len(sent) == 1:
                await asyncio.sleep(0.01)  # a slow first send: the thread runs ahead

        thread = threading.Thread(target=produce)
        thread.start()
        await asyncio.wait_for(outbox.drain(send, TIMEOUT), TIMEOUT)
        outbox.leave()
        thread.join(TIMEOUT)
        return outbox

    outbox = asyncio.run(main())
    return sent, outbox


@pytest.fixture
def temporary_files(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every temporary file the outbox opens, from now on. (Not the process's descriptors:
    other tests' leftovers, closed by the garbage collector meanwhile, change their count;
    a parallel run once saw 18 against 25.)"""
    import tempfile

    opened: list[Any] = []
    make = tempfile.TemporaryFile

    def temporary_file(*args: Any, **kwargs: Any) -> Any:
        opened.append(make(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr("gateway.adapters.buffering.tempfile.TemporaryFile", temporary_file)
    return opened


def open_files(opened: list[Any]) -> int:
    """How many of the files ``opened`` are still open."""
    return sum(not f.closed for f in opened)


def test_chunks_keep_their_order_through_memory_and_the_file() -> None:
    chunks = [bytes([65 + i]) * (3 + i % 4) for i in range(40)]
    sent, outbox = drained(chunks, memory=8)
    assert sent[-1] == b""  # the end
    assert b"".join(sent) == b"".join(chunks)
    assert sent[:-1] == chunks  # a chunk is a message: none are joined or split
    assert 0 < outbox.spilled < sum(map(len, chunks))


def test_a_long_response_takes_no_more_disk_than_it_holds_back(temporary_files: list[Any]) -> None:
    """Files are started over once read out, or replaced past ``file_size``: none grows with
    the response, though the client never quite catches up."""
    chunks = [bytes([65 + i % 26]) * 100 for i in range(50)]
    sizes: list[int] = []
    sent, outbox = drained(chunks, memory=0, limit=300, file_size=300, file_sizes=sizes)
    assert sent[:-1] == chunks
    assert outbox.spilled == 5000
    assert 0 < max(sizes) <= 400  # the file size, and the chunk put past it
    assert len(temporary_files) > 1  # replaced past file_size
    assert open_files(temporary_files) == 0  # every file closed, the last by leave()


def test_a_chunk_longer_than_a_piece_goes_out_in_pieces() -> None:
    sent, _ = drained([b"0123456789"], memory=100, piece=4)
    assert sent == [b"0123", b"4567", b"89", b""]


def test_memory_is_free_again_once_its_chunks_are_sent() -> None:
    """``limit`` 0: each put waits until its chunk is sent, so no more than one chunk is
    ever in memory, and nothing goes to the file, whole chunks or a piece at a time."""
    chunks = [b"abcd"] * 10
    sent, outbox = drained(chunks, memory=8, limit=0)
    assert sent[:-1] == chunks and outbox.spilled == 0
    sent, outbox = drained([b"abcdef"] * 10, memory=8, limit=0, piece=4)
    assert b"".join(sent) == b"abcdef" * 10 and outbox.spilled == 0
    sent, outbox = drained([b"abcd", b"efghijkl"], memory=8, limit=0)  # the second fills memory alone
    assert sent[:-1] == [b"abcd", b"efghijkl"] and outbox.spilled == 0




def test_what_waits_fills_memory_to_its_size_then_one_file(caplog: pytest.LogCaptureFixture,
                                                          temporary_files: list[Any]) -> None:
    """Chunks put before the loop sends any: ``memory`` bytes exactly stay in memory; the
    rest goes to one file while it stays under ``file_size``; the last user to leave
    closes every file, sent or not."""
    async def main() -> tuple[int, int, int, list[bytes]]:
        outbox = Outbox(asyncio.get_running_loop(), memory=8, limit=1 << 20, piece=100, file_size=8)
        for chunk in (b"abcd", b"efgh", b"ijkl", b"mnop"):  # within the limit: no put waits
            assert outbox.put(chunk)
        spilled, files = outbox.spilled, open_files(temporary_files)
        for chunk in (b"qrst", b"uvwx"):  # past the file's size: a second file
            assert outbox.put(chunk)
        two_files = open_files(temporary_files)
        outbox.end()
        sent: list[bytes] = []

        async def send(message: Message) -> None:
            sent.append(message["body"])
            if len(sent) == 2:
                outbox.cut()  # the client goes with both files unread

        await outbox.drain(send, TIMEOUT)
        outbox.leave()
        outbox.leave()
        assert open_files(temporary_files) == 0
        return spilled, files, two_files, sent

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        spilled, files, two_files, sent = asyncio.run(main())
    assert not caplog.records  # waking a loop that did not wait yet is no error either
    assert (spilled, files, two_files) == (8, 1, 2)  # ijkl and mnop in the first file
    assert sent == [b"abcd", b"efgh"]


def test_a_client_that_does_not_take_the_end_is_cut_off() -> None:
    async def main() -> Outbox:
        outbox = Outbox(asyncio.get_running_loop(), memory=100, limit=100, piece=100)
        assert outbox.put(b"ab")  # within the limit: it does not wait
        outbox.end()

        async def send(message: Message) -> None:
            if not message["more_body"]:
                await asyncio.Event().wait()  # the client's window is full: the end never leaves

        with pytest.raises(TimeoutError):
            await outbox.drain(send, 0.01)
        return outbox

    outbox = asyncio.run(main())
    assert outbox.closed and outbox.put(b"more") is False


def test_sends_that_each_return_within_the_timeout_are_not_cut_off_however_long_in_all() -> None:
    """The send timeout is each send's, not the response's: five sends of 0.25 s with a
    1 s timeout all go out (one timer for the response, moved on by each send)."""
    async def main() -> list[bytes]:
        outbox = Outbox(asyncio.get_running_loop(), memory=100, limit=100, piece=2)
        assert outbox.put(b"aabbccddee")
        outbox.end()
        sent: list[bytes] = []

        async def send(message: Message) -> None:
            await asyncio.sleep(0.25)  # a client that takes each piece a quarter second late
            sent.append(message["body"])

        await outbox.drain(send, 1.0)
        return sent

    assert asyncio.run(main()) == [b"aa", b"bb", b"cc", b"dd", b"ee", b""]


def test_a_thread_slower_than_the_send_timeout_is_waited_for() -> None:
    """Waiting for the app's next chunk is no send: an app that takes longer than the send
    timeout between two chunks is not cut off (its client took all it was given); and a
    send that waits on the client after that pause is still cut off."""
    async def main() -> tuple[list[bytes], bool]:
        loop = asyncio.get_running_loop()
        outbox = Outbox(loop, memory=100, limit=100, piece=100)
        sent: list[bytes] = []
        first_sent = threading.Event()

        def produce() -> None:
            assert outbox.put(b"first")
            assert first_sent.wait(TIMEOUT)
            # The loop's timer, 0.05 s, runs out several times while the app works.
            assert not threading.Event().wait(0.3)
            assert outbox.put(b"second")
            outbox.end()
            outbox.leave()

        async def send(message: Message) -> None:
            sent.append(message["body"])
            first_sent.set()
            if not message["more_body"]:
                await asyncio.Event().wait()  # the client's window is full: the end never leaves

        thread = threading.Thread(target=produce)
        thread.start()
        drain = asyncio.ensure_future(outbox.drain(send, 0.05))
        await asyncio.wait({drain}, timeout=TIMEOUT)
        cut_off = drain.done() and isinstance(drain.exception(), TimeoutError)
        drain.cancel()
        outbox.leave()
        thread.join(TIMEOUT)
        return sent, cut_off

    assert asyncio.run(main()) == ([b"first", b"second", b""], True)


def test_a_response_whose_sends_all_return_at_once_lets_the_loop_cut_it_off() -> None:
    """Granian's ``send`` returns at once, the data ignored, once the client has gone: the
    drain gives the loop a turn every SENDS_A_TURN sends, so that the disconnect (here a
    task that cuts the outbox as soon as it runs) stops it, not the end of the file."""
    async def main() -> tuple[int, bool]:
        outbox = Outbox(asyncio.get_running_loop(), memory=10, limit=1 << 20, piece=10)
        assert outbox.put(b"x" * 10_000)  # a thousand pieces, from the file
        outbox.end()
        outbox.leave()  # the thread is done
        sends = 0

        async def send(message: Message) -> None:
            nonlocal sends
            sends += 1  # taken at once: no turn of the loop

        asyncio.get_running_loop().call_soon(outbox.cut)  # the client left
        await outbox.drain(send, TIMEOUT)
        outbox.leave()  # the loop is done: the file is closed
        return sends, outbox.closed

    assert asyncio.run(main()) == (SENDS_A_TURN, True)


def read_ahead(bodies: list[bytes | Message | None], reader: Callable[..., T], *, last: str = "http.request",
               first: bytes = b"", stop: bool = False) -> T:
    """Receive ``bodies`` (one message each, then a ``last`` one) into a :class:`ReadAhead`
    and return what ``reader(stream, release)`` makes of it in a thread, as an app reads
    ``wsgi.input``. A message given whole is received as it is; at a None the client sends
    nothing more until the reader calls ``release()``; past the list it sends nothing more.
    ``stop``: the loop stops the stream at once (the request is cancelled)."""
    messages: list[Message | None] = [{"type": "http.request", "body": body, "more_body": True}
                                      if isinstance(body, bytes) else body for body in bodies]
    if last:
        messages.append({"type": "http.request", "body": b"", "more_body": False} if last == "http.request"
                        else {"type": last})

    async def main() -> T:
        loop = asyncio.get_running_loop()
        gate = asyncio.Event()

        async def receive() -> Message:
            while messages:
                message = messages.pop(0)
                if message is not None:
                    return message
                await gate.wait()
                gate.clear()
            await asyncio.Event().wait()  # the client sends nothing more
            raise AssertionError("unreachable")

        def release() -> None:
            loop.call_soon_threadsafe(gate.set)

        stream = ReadAhead(loop, receive, first, limit=1 << 16, timeout=TIMEOUT)
        if stop:
            await asyncio.sleep(0)  # the stream's task is waiting for the client
            stream.stop()
        try:
            return await asyncio.wait_for(asyncio.to_thread(reader, stream, release), TIMEOUT)
        finally:
            stream.stop()

    return asyncio.run(main())


def test_readline_stops_at_a_newline_or_its_size_whatever_arrives_after() -> None:
    def lines(stream: ReadAhead, release: Callable[[], None]) -> list[bytes]:
        return [stream.readline(), stream.readline(), stream.readline(2), stream.readline(2), stream.readline(),
                stream.readline()]

    # A blank line first; the second line's newline arrives in a message of its own.
    assert read_ahead([b"\nab", b"\ncdef\n"], lines) == [b"\n", b"ab\n", b"cd", b"ef", b"\n", b""]
    assert read_ahead([b"a", b"b\n"], lambda stream, _: stream.readline(2)) == b"ab"  # across two messages


def reads_then_one_more(first: Callable[[ReadAhead], bytes]) -> Callable[..., list[bytes | str]]:
    """A reader: ``first``, then a read of one byte, or the error it raises."""
    def reads(stream: ReadAhead, release: Callable[[], None]) -> list[bytes | str]:
        got: list[bytes | str] = [first(stream)]
        try:
            got.append(stream.read(1))
        except ClientDisconnected as exc:
            got.append(str(exc))
        return got
    return reads


def test_a_read_of_n_bytes_returns_once_it_has_them() -> None:
    """The client went away just after the bytes the app asked for: a read of that many
    returns them, and only the read after sees the client gone."""
    gone = "400 Bad Request: The client closed the connection while sending the body."
    for first in (lambda stream: stream.readline(2), lambda stream: stream.read(2)):
        assert read_ahead([b"ab"], reads_then_one_more(first), last="http.disconnect") == [b"ab", gone]


def test_a_cancelled_request_tells_the_app_after_what_had_arrived() -> None:
    reader = reads_then_one_more(lambda stream: stream.read(2))
    assert read_ahead([], reader, first=b"ab", last="", stop=True) == [
        b"ab", "400 Bad Request: The request was cancelled while its body was read."]


def test_the_body_is_complete_only_after_its_last_message() -> None:
    def reader(stream: ReadAhead, release: Callable[[], None]) -> list[object]:
        got: list[object] = [stream.read(2), stream.complete]
        release()
        got += [stream.read(), stream.complete]
        return got

    assert read_ahead([b"ab", None, b"cd"], reader) == [b"ab", False, b"cd", True]


def test_body_and_more_body_may_be_left_out() -> None:
    """ASGI: ``body`` defaults to b"", ``more_body`` to False."""
    messages: list[bytes | Message | None] = [{"type": "http.request", "more_body": True},
                                              {"type": "http.request", "body": b"ab"}]
    assert read_ahead(messages, lambda stream, _: stream.read(), last="") == b"ab"


def test_the_stream_is_a_raw_io_that_buffered_readers_take() -> None:
    def into(stream: ReadAhead, release: Callable[[], None]) -> tuple[int, bytes, bytes]:
        target = bytearray(3)
        count = stream.readinto(target)
        return count, bytes(target), io.BufferedReader(stream).read()

    assert read_ahead([b"abcdef", b"gh"], into) == (3, b"abc", b"defgh")
