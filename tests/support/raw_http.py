"""HTTP/1.1 over a plain socket, for requests no HTTP client library will send: missing or
doubled Host headers, 10,000 header lines, bodies that stop half-way, one byte per second.

Every helper has a hard deadline so a server that never answers fails the test instead of
hanging it.
"""

from __future__ import annotations

import contextlib
import socket
import time


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def read_response(sock: socket.socket, deadline: float = 10.0) -> bytes:
    """Read until the server closes the connection, or a complete response (headers plus
    Content-Length bytes) has arrived, or ``deadline`` seconds pass."""
    data = b""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        sock.settimeout(max(0.05, end - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except (ConnectionResetError, BrokenPipeError):
            break
        if not chunk:
            break
        data += chunk
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            if len(body) >= length:
                break
    return data


def exchange(port: int, request: bytes, deadline: float = 10.0) -> bytes:
    """Send ``request`` whole and return what the server answers."""
    with connect(port) as sock:
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            sock.sendall(request)
        return read_response(sock, deadline)


def status_of(response: bytes) -> int:
    """The status code of a raw response (0 when the server closed without answering)."""
    if not response.startswith(b"HTTP/1."):
        return 0
    return int(response.split(b" ", 2)[1])


def seconds_until_closed(sock: socket.socket, limit: float) -> float:
    """How long until the server closes ``sock`` (reading and discarding what it sends);
    ``limit`` or more when it is still open after ``limit`` seconds."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        sock.settimeout(max(0.05, limit - (time.monotonic() - start)))
        try:
            if not sock.recv(65536):
                return time.monotonic() - start
        except TimeoutError:
            break
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - start
    return time.monotonic() - start
