"""Exact bytes over a socket, for requests a normal HTTP client refuses to send.

::

    response = request(port, b"GET /flask/%zz HTTP/1.1\\r\\nHost: localhost\\r\\n\\r\\n")
    assert response.status == 404

Every read has a deadline; a server that closes or resets the connection gives a
response with ``status=None`` and ``reset`` or ``eof`` set, never an exception.
"""

from __future__ import annotations

import re
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

# A line logged at ERROR or CRITICAL in uvicorn's, Flask's or the gateway's text format
# (the level comes within the first words), or in the gateway's JSON format.
_ERRORS = re.compile(
    r'^.{0,48}\b(?:ERROR|CRITICAL)\b|"level": ?"(?:ERROR|CRITICAL)"', re.MULTILINE
)


@dataclass
class Response:
    """What came back: the parsed head and body, or how the connection ended."""

    status: int | None = None
    reason: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    raw: bytes = b""
    eof: bool = False  # the server closed the connection
    reset: bool = False  # the connection was reset
    timed_out: bool = False

    def header(self, name: str) -> str | None:
        """Return the first value of header ``name`` (case-insensitive), or None."""
        values = self.header_all(name)
        return values[0] if values else None

    def header_all(self, name: str) -> list[str]:
        """Return every value of header ``name`` (case-insensitive)."""
        name = name.lower()
        return [v for n, v in self.headers if n == name]

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def __repr__(self) -> str:
        ended = "eof" if self.eof else "reset" if self.reset else "timeout" if self.timed_out else ""
        return f"<Response {self.status} {ended} {self.raw[:300]!r}>"


class Connection:
    """One client connection on loopback that writes bytes and reads responses."""

    def __init__(self, port: int, *, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""
        self.sent = 0

    def send(self, data: bytes) -> bool:
        """Write ``data``; False if the server no longer takes it (closed or reset)."""
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            return False
        self.sent += len(data)
        return True

    def _recv(self, deadline: float) -> bytes | None:
        """Read what is there before ``deadline``: b"" at EOF, None on timeout."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        self.sock.settimeout(remaining)
        try:
            return self.sock.recv(65536)
        except TimeoutError:
            return None

    def read_response(self, *, timeout: float = 10.0, head: bool = False) -> Response:
        """Read one response: the head, then a body framed by length, chunks or EOF."""
        deadline = time.monotonic() + timeout
        response = Response()
        try:
            while b"\r\n\r\n" not in self.buffer:
                data = self._recv(deadline)
                if data is None:
                    response.timed_out = True
                    return self._finish(response)
                if not data:
                    response.eof = True
                    return self._finish(response)
                self.buffer += data
            head_bytes, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            response.raw = head_bytes + b"\r\n\r\n"
            lines = head_bytes.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ", 2)
            response.status = int(parts[1])
            response.reason = parts[2] if len(parts) > 2 else ""
            for line in lines[1:]:
                name, _, value = line.partition(":")
                response.headers.append((name.strip().lower(), value.strip()))
            if head or response.status in (204, 304) or 100 <= response.status < 200:
                return response
            length = response.header("content-length")
            if "chunked" in (response.header("transfer-encoding") or "").lower():
                response.body = self._read_chunked(deadline, response)
            elif length is not None:
                response.body = self._read_exactly(int(length), deadline, response)
            else:
                response.body = self._read_to_eof(deadline, response)
            response.raw += response.body
        except ConnectionResetError:
            response.reset = True
        return response

    def _finish(self, response: Response) -> Response:
        response.raw = self.buffer
        return response

    def _read_exactly(self, size: int, deadline: float, response: Response) -> bytes:
        while len(self.buffer) < size:
            data = self._recv(deadline)
            if data is None:
                response.timed_out = True
                break
            if not data:
                response.eof = True
                break
            self.buffer += data
        body, self.buffer = self.buffer[:size], self.buffer[size:]
        return body

    def _read_line(self, deadline: float, response: Response) -> bytes:
        while b"\r\n" not in self.buffer:
            data = self._recv(deadline)
            if not data:
                response.timed_out = data is None
                response.eof = data == b""
                return b""
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def _read_chunked(self, deadline: float, response: Response) -> bytes:
        body = b""
        while True:
            line = self._read_line(deadline, response)
            if not line:
                return body
            size = int(line.split(b";")[0], 16)
            if size == 0:
                while self._read_line(deadline, response):
                    pass  # trailers
                return body
            body += self._read_exactly(size, deadline, response)
            self._read_line(deadline, response)

    def _read_to_eof(self, deadline: float, response: Response) -> bytes:
        while True:
            data = self._recv(deadline)
            if data is None:
                response.timed_out = True
                break
            if not data:
                response.eof = True
                break
            self.buffer += data
        body, self.buffer = self.buffer, b""
        return body

    def read_rest(self, timeout: float = 5.0) -> bytes:
        """Read whatever else comes until the server closes the connection."""
        return self._read_to_eof(time.monotonic() + timeout, Response())

    def wait_closed(self, timeout: float) -> bool:
        """True if the server closes (or resets) the connection within ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                data = self._recv(deadline)
            except ConnectionResetError:
                return True
            if data is None:
                return False
            if not data:
                return True
            self.buffer += data

    def abort(self) -> None:
        """Close with a reset (SO_LINGER 0), as a client that crashed would."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        self.sock.close()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def request(port: int, data: bytes, *, timeout: float = 10.0) -> Response:
    """Send ``data`` on a new connection and read one response (HEAD has no body)."""
    with Connection(port, timeout=timeout) as conn:
        sent = conn.send(data)
        try:
            response = conn.read_response(timeout=timeout, head=data.startswith(b"HEAD "))
        except OSError:
            response = Response(reset=True)
        if not sent and response.status is None:
            response.reset = True
        return response


def http_request(
    method: str,
    target: bytes | str,
    *,
    host: bytes | None = b"localhost",
    headers: list[tuple[bytes, bytes]] | None = None,
    body: bytes = b"",
    version: bytes = b"HTTP/1.1",
) -> bytes:
    """Build the bytes of a request; ``Connection: close`` unless a header says otherwise."""
    if isinstance(target, str):
        target = target.encode("latin-1")
    lines = [method.encode("ascii") + b" " + target + b" " + version]
    if host is not None:
        lines.append(b"Host: " + host)
    extra = list(headers or [])
    names = {name.lower() for name, _ in extra}
    if body and b"content-length" not in names and b"transfer-encoding" not in names:
        extra.append((b"Content-Length", str(len(body)).encode()))
    if b"connection" not in names:
        extra.append((b"Connection", b"close"))
    lines += [name + b": " + value for name, value in extra]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def chunked(data: bytes, sizes: list[int]) -> bytes:
    """Encode ``data`` as chunks of the given sizes (cycled), ending with the last chunk."""
    out = []
    pos = 0
    i = 0
    while pos < len(data):
        size = sizes[i % len(sizes)]
        piece = data[pos : pos + size]
        out.append(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        pos += size
        i += 1
    out.append(b"0\r\n\r\n")
    return b"".join(out)


def error_lines(text: str) -> list[str]:
    """Return the lines logged at ERROR or CRITICAL (text or JSON log format)."""
    return [m.group(0) for m in _ERRORS.finditer(text)]


def log_errors(text: str) -> list[str]:
    """Return the log's tracebacks and ERROR lines (text or JSON log format)."""
    return [line for line in text.splitlines() if "Traceback" in line] + error_lines(text)


class LogWatch:
    """The part of a server's log written since this object was made."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.offset = len(server.log)

    def text(self) -> str:
        return str(self.server.log[self.offset :])

    def wait_for(self, text: str, timeout: float = 5.0) -> bool:
        """Wait until ``text`` shows up in the log written since the watch began."""
        deadline = time.monotonic() + timeout
        while text not in self.text():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def settle(self, probe: str = "/flask/", timeout: float = 10.0) -> str:
        """Prove the server still serves (a probe request gets a 2xx/3xx and shows up in
        the access log), then return the log written since the watch began."""
        marker = uuid.uuid4().hex
        path = f"{probe}?probe={marker}"
        response = request(self.server.port, http_request("GET", path), timeout=timeout)
        assert response.status is not None and 200 <= response.status < 400, (
            f"the server no longer serves {probe}: {response!r}"
        )
        # The probe's access line (it carries the query string) shows the log has caught up.
        assert self.wait_for(marker, timeout), f"the probe's access line was not logged within {timeout} s"
        return self.text()

    def assert_clean(self, probe: str = "/flask/") -> str:
        """The server still serves, and logged no traceback and no ERROR line since."""
        text = self.settle(probe)
        errors = log_errors(text)
        assert not errors, f"errors logged for a bad request: {errors}\n--- log ---\n{text[-4000:]}"
        return text
