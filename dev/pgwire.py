"""A counting proxy in front of PostgreSQL: how many round trips clients make, and of what kind.

Each simple query ('Q') and each extended-protocol Sync ('S') is one round trip: the client
waits for the server's ReadyForQuery before it goes on (a pipeline sends several before it
waits, and is counted by what it asked). The startup packet and the messages in between
(Parse, Bind, Execute) ride along. For benchmarks, never for production.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from psycopg.conninfo import conninfo_to_dict, make_conninfo


@dataclass
class Counts:
    """What the clients sent, by kind: queries, syncs (round trips), and the text of each."""

    messages: Counter[str] = field(default_factory=Counter)
    statements: Counter[str] = field(default_factory=Counter)

    @property
    def round_trips(self) -> int:
        return self.messages["Q"] + self.messages["S"]

    def reset(self) -> None:
        self.messages.clear()
        self.statements.clear()


class CountingProxy:
    """Forward TCP to PostgreSQL at `upstream` (host, port), counting the client's messages."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.counts = Counts()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.port = 0
        self._thread = threading.Thread(target=self._run, daemon=True, name="pgwire")
        self._thread.start()
        self._ready.wait(10)

    def dsn(self, dsn: str) -> str:
        """`dsn` pointed at this proxy, without TLS (the messages must be readable)."""
        params = conninfo_to_dict(dsn)
        params.update(host="127.0.0.1", port=str(self.port), sslmode="disable")
        return make_conninfo("", **params)

    def snapshot(self) -> Counts:
        with self._lock:
            return Counts(Counter(self.counts.messages), Counter(self.counts.statements))

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        back = asyncio.ensure_future(_pipe(up_reader, writer))
        try:
            await self._client_to_server(reader, up_writer)
        finally:
            back.cancel()
            for w in (writer, up_writer):
                with contextlib.suppress(Exception):
                    w.close()

    async def _client_to_server(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            length = struct.unpack(">I", await reader.readexactly(4))[0]
            writer.write(struct.pack(">I", length) + await reader.readexactly(length - 4))
            while True:
                kind = await reader.readexactly(1)
                size = await reader.readexactly(4)
                body = await reader.readexactly(struct.unpack(">I", size)[0] - 4)
                self._count(kind.decode("latin-1"), body)
                writer.write(kind + size + body)
                await writer.drain()

    def _count(self, kind: str, body: bytes) -> None:
        with self._lock:
            self.counts.messages[kind] += 1
            if kind == "Q":
                self.counts.statements[_text(body)] += 1
            elif kind == "P":  # Parse: name, then the query text
                name_end = body.index(b"\0")
                self.counts.statements[_text(body[name_end + 1 :])] += 1


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, asyncio.CancelledError):
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()


def _text(body: bytes) -> str:
    return " ".join(body.split(b"\0", 1)[0].decode("utf-8", "replace").split())[:120]


@contextlib.contextmanager
def counting(dsn: str) -> Iterator[CountingProxy]:
    """A counting proxy in front of the server `dsn` names, for the block."""
    params = conninfo_to_dict(dsn)
    proxy = CountingProxy(str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432))
    try:
        yield proxy
    finally:
        proxy.close()
