"""The build progress reporter: steps written newest last, and a close that always returns.

The connection is a stand-in: the fault under test (a cancel that a pool's wait loses) cannot be
made to happen on demand with a real pool.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from collage.queue import progress


class Recorder:
    """A connection that keeps the steps it is asked to write."""

    def __init__(self) -> None:
        self.steps: list[str] = []

    async def execute(self, query: str, params: list[Any]) -> None:
        self.steps.append(params[2])


def test_the_first_step_is_written_before_the_build_goes_on_and_later_ones_coalesce(
    monkeypatch: Any,
) -> None:
    monkeypatch.setattr(progress, "LATER_STEPS_AFTER_S", 0.05)
    conn = Recorder()

    @contextlib.asynccontextmanager
    async def connect() -> AsyncIterator[Recorder]:
        yield conn

    async def scenario() -> None:
        reporter = progress.Reporter(connect, product_id=7, generation=1)  # type: ignore[arg-type]
        for index in range(1, 4):
            reporter.say(f"decoding photo {index} of 3")
        await asyncio.sleep(0.2)
        reporter.say("uploading the collage")
        await reporter.close()
        await asyncio.sleep(0.1)  # nothing more is written after close

    asyncio.run(scenario())
    assert conn.steps == ["decoding photo 3 of 3"]  # the last of a burst, once


def test_close_returns_when_the_pool_loses_the_cancel() -> None:
    waiting = asyncio.Event()
    handed_over = asyncio.Event()
    conn = Recorder()

    @contextlib.asynccontextmanager
    async def losing_connect() -> AsyncIterator[Recorder]:
        waiting.set()
        with contextlib.suppress(asyncio.CancelledError):  # lost: it is handed over all the same
            await handed_over.wait()
        yield conn

    async def scenario() -> None:
        reporter = progress.Reporter(losing_connect, product_id=7, generation=1)  # type: ignore[arg-type]
        reporter.say("decoding photo 1 of 2")
        await waiting.wait()
        # Well under CLOSE_WAIT_S: a close that only waited out its bound would fail here too.
        await asyncio.wait_for(reporter.close(), timeout=progress.CLOSE_WAIT_S / 5)

    asyncio.run(scenario())
    assert conn.steps == ["decoding photo 1 of 2"]
