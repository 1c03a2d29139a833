"""S3 misbehaving on purpose: a fault-injecting proxy, a stalling server, held photo GETs."""

from __future__ import annotations

import contextlib
import http.client
import http.server
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit


@dataclass
class Fault:
    """What the proxy does to one request: answer with `status`, or wait `delay_s` first.

    `trickle_s` spreads the body over that many seconds instead: slower than any timeout would
    allow at once, yet no single read waits long.
    """

    status: int | None = None
    delay_s: float = 0.0
    trickle_s: float = 0.0
    code: str = "ServiceUnavailable"  # the S3 error code the answer carries


FaultRule = Callable[[str, str], "Fault | None"]


class FaultyProxy:
    """An HTTP proxy in front of the S3 server that fails or stalls requests on demand.

    `rule(method, path)` returns a Fault (or None to pass the request through untouched).
    """

    def __init__(self, upstream: str, rule: FaultRule) -> None:
        self.upstream = urlsplit(upstream)
        self.rule = rule
        self.seen: list[tuple[str, str, int]] = []
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # method, path, headers
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return

            def _forward(self) -> None:
                proxy.handle(self)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def handle(self, request: Any) -> None:
        """Apply the rule to one request, then forward it or answer with the fault."""
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else None
        self.requests.append((request.command, request.path, dict(request.headers.items())))
        fault = self.rule(request.command, request.path)
        if fault and fault.delay_s:
            time.sleep(fault.delay_s)
        if fault and fault.status:
            self.seen.append((request.command, request.path, fault.status))
            payload = f"<Error><Code>{fault.code}</Code></Error>".encode()
            request.send_response(fault.status)
            request.send_header("Content-Length", str(len(payload)))
            request.end_headers()
            request.wfile.write(payload)
            return
        upstream = http.client.HTTPConnection(
            self.upstream.hostname, self.upstream.port, timeout=30
        )
        try:
            upstream.request(
                request.command, request.path, body=body, headers=dict(request.headers)
            )
            response = upstream.getresponse()
            data = response.read()
        finally:
            upstream.close()
        self.seen.append((request.command, request.path, response.status))
        request.send_response(response.status)
        for name, value in response.getheaders():
            if name.lower() not in {"content-length", "transfer-encoding", "connection"}:
                request.send_header(name, value)
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        if request.command == "HEAD":
            return
        if not (fault and fault.trickle_s) or not data:
            request.wfile.write(data)
            return
        pieces = 50
        size = max(1, -(-len(data) // pieces))
        try:
            for start in range(0, len(data), size):
                time.sleep(fault.trickle_s / pieces)
                request.wfile.write(data[start : start + size])
                request.wfile.flush()
        except OSError:  # the client hung up: what a deadline is for
            return

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


@dataclass
class SlowGets:
    """A FaultyProxy rule: hold every photo GET for `delay_s`, until released.

    The wait is an Event, not a sleep, so releasing it ends every stall at once (teardown
    never waits for a stalled request). Requests are recorded with their start time.
    """

    delay_s: float
    released: threading.Event = field(default_factory=threading.Event)
    requests: list[tuple[float, str, str]] = field(default_factory=list)

    def __call__(self, method: str, path: str) -> Fault | None:
        self.requests.append((time.monotonic(), method, path))
        if method == "GET" and "/collages/" not in path and not self.released.is_set():
            self.released.wait(self.delay_s)
        return None

    def gets(self) -> int:
        return sum(1 for _, method, _ in self.requests if method == "GET")


class RawS3:
    """A bare HTTP server on loopback that answers GETs its own way, one thread a connection.

    For what moto cannot be made to do: stall, trickle, or lie about sizes. `close()` ends
    every connection.
    """

    def __init__(self) -> None:
        self.release = threading.Event()
        self.connections = 0
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen()
        self._sock.settimeout(0.1)
        self.endpoint = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def _accept(self) -> None:
        while not self.release.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            request = b""
            with contextlib.suppress(OSError):
                while b"\r\n\r\n" not in request and not self.release.is_set():
                    try:
                        chunk = conn.recv(65536)
                    except TimeoutError:
                        if request and not request[:1].isalpha():
                            break  # not HTTP (a database client's startup packet): answer anyway
                        continue
                    if not chunk:
                        return
                    request += chunk
                parts = request.split(b" ", 2)
                self.answer(conn, parts[1].decode(errors="replace") if len(parts) > 2 else "")

    def answer(self, conn: socket.socket, path: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.release.set()
        self._accepter.join(5)
        self._sock.close()
        for thread in self._threads:
            thread.join(5)


class StallingS3(RawS3):
    """Answers a GET with headers and the first bytes of the body, then stalls.

    What a half-dead connection to S3 looks like from the client: the response started, and
    the rest never comes.
    """

    def __init__(self, *, declared: int = 10_000, sent: int = 100) -> None:
        self.declared, self.sent = declared, sent
        super().__init__()

    def answer(self, conn: socket.socket, path: str) -> None:
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\n"
            + f"Content-Length: {self.declared}\r\n\r\n".encode()
            + b"\xff" * self.sent
        )
        self.release.wait(60)


@dataclass
class Sent:
    """One body a TrickleS3 sent: how much, and when the client hung up."""

    path: str
    bytes: int = 0
    closed_at: float | None = None


class TrickleS3(RawS3):
    """Sends bodies chunked, with no Content-Length, a chunk at a time, until the client quits.

    A server lying by omission: only the client's own count can stop it short of `total`
    bytes. Keys ending in `missing` answer 404 NoSuchKey at once.
    """

    def __init__(
        self,
        *,
        chunk: int = 64 * 1024,
        every_s: float = 0.01,
        total: int = 8 * 1024 * 1024,
        missing: str = "",
    ) -> None:
        self.chunk, self.every_s, self.total, self.missing = chunk, every_s, total, missing
        self.sent: list[Sent] = []
        super().__init__()

    def answer(self, conn: socket.socket, path: str) -> None:
        if self.missing and path.endswith(self.missing):
            body = b"<Error><Code>NoSuchKey</Code><Message>gone</Message></Error>"
            conn.sendall(
                b"HTTP/1.1 404 Not Found\r\nContent-Type: application/xml\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            return
        record = Sent(path)
        self.sent.append(record)
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        payload = f"{self.chunk:x}\r\n".encode() + b"\xab" * self.chunk + b"\r\n"
        try:
            while not self.release.is_set() and record.bytes < self.total:
                conn.sendall(payload)
                record.bytes += self.chunk
                self.release.wait(self.every_s)
            conn.sendall(b"0\r\n\r\n")
        except OSError:
            pass
        record.closed_at = time.monotonic()


class SilentServer(RawS3):
    """Accepts connections and reads the request, then never says a word (a hung service)."""

    def answer(self, conn: socket.socket, path: str) -> None:
        self.release.wait(120)


@dataclass
class HoldOnce:
    """A FaultyProxy rule: hold the first GET of each photo until released, pass later ones.

    The worker that sent the first GET is stuck mid-download, for a test to kill it there; the
    worker that builds the SKU again gets the photo at once. `seen` counts GETs per path.
    """

    released: threading.Event = field(default_factory=threading.Event)
    seen: dict[str, int] = field(default_factory=dict)
    on_hold: Callable[[str], None] | None = None

    def __call__(self, method: str, path: str) -> Fault | None:
        if method != "GET" or "/collages/" in path:
            return None
        first = path not in self.seen
        self.seen[path] = self.seen.get(path, 0) + 1
        if first and not self.released.is_set():
            if self.on_hold is not None:
                self.on_hold(path)
            self.released.wait(120)
        return None

    def held(self, fragment: str) -> bool:
        return any(fragment in path for path in self.seen)
