"""Procrastinate's workers side by side in one process: the builds', and the periodic jobs'."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from collage.backoff import Backoff
from collage.errors import one_line

logger = logging.getLogger(__name__)
# A Procrastinate worker that stopped on an error is started again after this, doubling.
RESTART_FIRST_S = 0.2
RESTART_MAX_S = 10.0


async def together(*runs: Coroutine[Any, Any, None]) -> None:
    """Run Procrastinate workers side by side: when one stops, or all are cancelled, all stop."""
    tasks = [asyncio.ensure_future(run) for run in runs]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()  # Procrastinate turns this into a graceful stop
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        task.result()  # the one that stopped first says why


async def restarted(run: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run the maintenance worker, and start it again whenever it stops on an error.

    Idle, it polls for jobs every second, so in a database outage its fetch fails first, and
    Procrastinate stops a worker whose fetch fails: that must not drain the running builds,
    which ride the outage out on their own retries.
    """

    def again(exc: BaseException, delay_s: float) -> None:
        logger.warning(
            "maintenance worker stopped; restarting",
            extra={"action": "supervise", "error": one_line(exc), "restart_in_s": delay_s},
        )

    await Backoff(first_s=RESTART_FIRST_S, max_s=RESTART_MAX_S).call(
        run, on=Exception, on_retry=again
    )
