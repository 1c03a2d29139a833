"""A build's progress, written as it goes: where it was, should its worker die (db.progress).

A worker that dies takes its memory with it: what it was doing must already be in the
database for the rescue to say, and to stop rescuing a SKU that kills every worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import psycopg
from psycopg import AsyncConnection

from collage.db import progress

logger = logging.getLogger(__name__)

# The first step of a build is written with the SKU's first read (db.builds.start): the rescue
# can then always say where it began. Each later one is written only if it lasts this long.
LATER_STEPS_AFTER_S = 0.5
CLOSE_WAIT_S = 5.0  # a step's write is one short statement: longer means the database is away


Connect = Callable[[], contextlib.AbstractAsyncContextManager[AsyncConnection]]


class Reporter:
    """Writes a build's latest step as it changes, one write at a time, newest last.

    A build of a second writes one row; a slow one, a row a step.

    `say` may be called from any thread (the build pool reports photos from its own); steps that
    come faster than the database takes them are coalesced. Losing a step costs only precision
    in a rescue's message, so a failed write is logged and the build goes on.
    """

    def __init__(self, connect: Connect, *, product_id: int, generation: int) -> None:
        self._connect, self._product_id, self._generation = connect, product_id, generation
        self._loop = asyncio.get_running_loop()
        self._latest: str | None = None
        self._changed = asyncio.Event()
        self._closed = False
        self._writer = asyncio.ensure_future(self._write_changes())

    def say(self, step: str) -> None:
        """Report a later step, from this thread or any other."""
        self._loop.call_soon_threadsafe(self._set, step)

    async def close(self) -> None:
        """Stop writing; a write that outlasts CLOSE_WAIT_S is left to finish on its own.

        The flag, not only the cancel, ends the writer: Python 3.11's asyncio.wait_for (in
        psycopg_pool's wait for a connection) can lose a cancel that lands as a connection is
        handed over, which once left a finished build waiting here for ever.
        """
        self._closed = True
        self._changed.set()
        self._writer.cancel()
        await asyncio.wait({self._writer}, timeout=CLOSE_WAIT_S)
        if (
            self._writer.done()
            and not self._writer.cancelled()
            and (exc := self._writer.exception())
        ):
            logger.warning(
                "build progress writer failed", extra={"action": "progress", "error": repr(exc)}
            )

    def _set(self, step: str) -> None:
        self._latest = step
        self._changed.set()

    async def _write_changes(self) -> None:
        while not self._closed:
            await self._changed.wait()
            # Later steps wait a moment: most builds are done before any needs writing, and a
            # step that lasts is the one a rescue wants to name.
            await asyncio.sleep(LATER_STEPS_AFTER_S)
            step = self._latest
            if self._closed or step is None:
                return
            try:
                await self._write(step)
            except psycopg.Error as exc:
                _not_written(exc)
            if self._latest == step:
                self._changed.clear()

    async def _write(self, step: str) -> None:
        async with self._connect() as conn:
            await progress.note(conn, self._product_id, self._generation, step)


def _not_written(exc: BaseException) -> None:
    logger.debug("build progress not written", extra={"action": "progress", "error": repr(exc)})
