"""``gateway.adapters.buffering.Outbox`` alone: a thread puts, the loop drains, in order,
through memory and a temporary file (the bridge's tests in tests/test_bridge.py cover it
inside a request)."""

from __future__ import annotations

import asyncio
import os
import threading

from gateway.adapters.buffering import Outbox
from gateway.types import Message

TIMEOUT = 5.0


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


def test_chunks_keep_their_order_through_memory_and_the_file() -> None:
    chunks = [bytes([65 + i]) * (3 + i % 4) for i in range(40)]
    sent, outbox = drained(chunks, memory=8)
    assert sent[-1] == b""  # the end
    assert b"".join(sent) == b"".join(chunks)
    assert sent[:-1] == chunks  # a chunk is a message: none are joined or split
    assert 0 < outbox.spilled < sum(map(len, chunks))


def test_a_long_response_takes_no_more_disk_than_it_holds_back() -> None:
    """Files are started over once read out, or replaced past ``file_size``: none grows with
    the response, though the client never quite catches up."""
    chunks = [bytes([65 + i % 26]) * 100 for i in range(50)]
    sizes: list[int] = []
    open_files = len(os.listdir("/proc/self/fd"))
    sent, outbox = drained(chunks, memory=0, limit=300, file_size=300, file_sizes=sizes)
    assert sent[:-1] == chunks
    assert outbox.spilled == 5000
    assert 0 < max(sizes) <= 400  # the file size, and the chunk put past it
    assert len(os.listdir("/proc/self/fd")) == open_files  # every file closed, the last by leave()


def test_a_chunk_longer_than_a_piece_goes_out_in_pieces() -> None:
    sent, _ = drained([b"0123456789"], memory=100, piece=4)
    assert sent == [b"0123", b"4567", b"89", b""]
