"""Run Procrastinate's worker and keep it running through database outages.

Procrastinate's worker stops when the database goes away (a side task fails and the worker
returns). This supervisor starts it again with backoff, so a deployment needs no restart loop
of its own; it gives up (exit code 1) only after failing for `give_up_after_s` in a row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Sequence
from time import monotonic
from typing import Any

from procrastinate.middleware import WorkerMiddleware

from collage.app import bind
from collage.constants import GRACEFUL_TIMEOUT_S, QUEUE, STALLED_WORKER_S
from collage.runtime import Runtime
from collage.settings import Settings

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_GAVE_UP = 1
RESTART_DELAY_MIN_S = 0.2
RESTART_DELAY_MAX_S = 10.0
HEALTHY_RUN_S = 60.0  # a run at least this long resets the give-up clock
SHUTDOWN_SLACK_S = 10.0  # beyond the grace period, for Procrastinate to record what it aborted


async def supervise(
    settings: Settings,
    *,
    concurrency: int | None = None,
    graceful_timeout_s: float = float(GRACEFUL_TIMEOUT_S),
    give_up_after_s: float = 300.0,
    stop: asyncio.Event | None = None,
    middleware: Sequence[WorkerMiddleware] = (),
    worker_options: dict[str, Any] | None = None,
) -> int:
    """Run the worker until `stop` is set (SIGTERM/SIGINT by default); return an exit code."""
    stop = stop or _stop_on_signals()
    if concurrency:  # the connection pool is sized from the settings
        settings = settings.replace(worker_concurrency=concurrency)
    runtime = Runtime.from_settings(settings)
    delay = RESTART_DELAY_MIN_S
    failing_since: float | None = None
    while not stop.is_set():
        started = monotonic()
        error = await _run_once(
            settings,
            runtime=runtime,
            stop=stop,
            graceful_timeout_s=graceful_timeout_s,
            middleware=middleware,
            worker_options=worker_options or {},
        )
        if stop.is_set():
            break
        now = monotonic()
        if now - started > HEALTHY_RUN_S:  # it ran a good while: this is a fresh outage
            failing_since, delay = None, RESTART_DELAY_MIN_S
        if failing_since is None:
            failing_since = now
        if now - failing_since > give_up_after_s:
            logger.error(
                "worker keeps failing; giving up",
                extra={"action": "supervise", "error": error, "failing_s": give_up_after_s},
            )
            runtime.close()
            return EXIT_GAVE_UP
        logger.warning(
            "worker stopped unexpectedly; restarting",
            extra={"action": "supervise", "error": error, "restart_in_s": delay},
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay)
        delay = min(delay * 2, RESTART_DELAY_MAX_S)
    # Its job has been queued again already.
    runtime.close()
    logger.info("worker stopped", extra={"action": "supervise"})
    return EXIT_OK


async def _run_once(
    settings: Settings,
    *,
    runtime: Runtime,
    stop: asyncio.Event,
    graceful_timeout_s: float,
    middleware: Sequence[WorkerMiddleware],
    worker_options: dict[str, Any],
) -> str | None:
    """Run one Procrastinate worker until it stops or `stop` is set; say why it stopped."""
    with bind(settings) as app:
        try:
            async with app.open_async():
                worker = asyncio.create_task(
                    app.run_worker_async(
                        queues=[QUEUE],
                        concurrency=settings.worker_concurrency,
                        install_signal_handlers=False,
                        shutdown_graceful_timeout=graceful_timeout_s,
                        additional_context={"runtime": runtime},
                        stalled_worker_timeout=STALLED_WORKER_S,
                        worker_middleware=list(middleware),
                        **worker_options,
                    ),
                    name="procrastinate worker",
                )
                stopping = asyncio.create_task(stop.wait())
                await asyncio.wait({worker, stopping}, return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                if not worker.done():
                    logger.info("draining running jobs", extra={"action": "supervise"})
                    worker.cancel()  # Procrastinate turns this into a graceful stop
                # Bounded: with the database gone, Procrastinate's own clean-up would wait on it.
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    await asyncio.wait_for(worker, timeout=graceful_timeout_s + SHUTDOWN_SLACK_S)
                return None if stop.is_set() else "the worker returned on its own"
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}".strip()


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop
