"""Run Procrastinate's worker, keep it running through database outages, and watch the others.

Procrastinate's worker stops when the database goes away (a side task fails and the worker
returns). This supervisor starts it again with backoff, so a deployment needs no restart loop
of its own; it gives up (exit code 1) only after failing for `give_up_after_s` in a row.

Beside it run: the liveness locks of its jobs (liveness.py), the rescue of dead workers' jobs
every RESCUE_EVERY_S (rescue.py), and the beat `collage health` reads in this container.
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

from collage import health, rescue
from collage.app import bind
from collage.constants import (
    GRACEFUL_TIMEOUT_S,
    HANDOVER_S,
    HEARTBEAT_EVERY_S,
    QUEUE,
    RESCUE_EVERY_S,
    SHUTDOWN_SLACK_S,
    STALLED_WORKER_S,
)
from collage.liveness import Liveness
from collage.runtime import Runtime
from collage.settings import Settings

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_GAVE_UP = 1
RESTART_DELAY_MIN_S = 0.2
RESTART_DELAY_MAX_S = 10.0
HEALTHY_RUN_S = 60.0  # a run at least this long resets the give-up clock


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
    liveness = Liveness(settings.db_session_url)
    delay = RESTART_DELAY_MIN_S
    failing_since: float | None = None
    while not stop.is_set():
        started = monotonic()
        error = await _run_once(
            settings,
            runtime=runtime,
            liveness=liveness,
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
            await _close(runtime, liveness)
            return EXIT_GAVE_UP
        logger.warning(
            "worker stopped unexpectedly; restarting",
            extra={"action": "supervise", "error": error, "restart_in_s": delay},
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay)
        delay = min(delay * 2, RESTART_DELAY_MAX_S)
    await _close(runtime, liveness)
    logger.info("worker stopped", extra={"action": "supervise"})
    return EXIT_OK


async def _close(runtime: Runtime, liveness: Liveness) -> None:
    """Let hand-overs finish, then drop the locks: what is still running becomes the rescue's."""
    await runtime.finish_handovers(SHUTDOWN_SLACK_S)
    await liveness.close()
    runtime.close()
    health.forget_beat(runtime.settings.temp_dir)


async def _run_once(
    settings: Settings,
    *,
    runtime: Runtime,
    liveness: Liveness,
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
                        update_heartbeat_interval=HEARTBEAT_EVERY_S,
                        worker_middleware=[liveness.middleware, *middleware],
                        **worker_options,
                    ),
                    name="procrastinate worker",
                )
                watchers = [
                    asyncio.create_task(_rescue_every(app, worker), name="rescue"),
                    asyncio.create_task(_beat_every(runtime, liveness, worker), name="beat"),
                ]
                stopping = asyncio.create_task(stop.wait())
                await asyncio.wait({worker, stopping}, return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                if not worker.done():
                    logger.info("draining running jobs", extra={"action": "supervise"})
                    worker.cancel()  # Procrastinate turns this into a graceful stop
                # Bounded: with the database gone, Procrastinate's own clean-up would wait on it.
                # The running jobs keep their liveness locks all along, so no rescue takes them.
                drain_s = graceful_timeout_s + HANDOVER_S + SHUTDOWN_SLACK_S
                await asyncio.wait({worker}, timeout=drain_s)
                for watcher in watchers:
                    watcher.cancel()
                if not worker.done():
                    logger.error("drain overran; stopping", extra={"action": "supervise"})
                    worker.cancel()
                    await asyncio.wait({worker}, timeout=SHUTDOWN_SLACK_S)
                return None if stop.is_set() else "the worker returned on its own"
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}".strip()


async def _rescue_every(app: Any, worker: asyncio.Task[Any]) -> None:
    """Take back the jobs of dead workers every few seconds, whatever this worker is doing.

    The loop also ends with the worker: a cancel lost in a pool's wait (see progress.Reporter)
    must not keep the process from exiting.
    """
    while not worker.done():
        await asyncio.sleep(RESCUE_EVERY_S)
        try:
            await rescue.rescue(app)
        except Exception as exc:  # the database may be away: the next round tries again
            logger.warning("rescue failed", extra={"action": "rescue", "error": str(exc)})


async def _beat_every(runtime: Runtime, liveness: Liveness, worker: asyncio.Task[Any]) -> None:
    """Tell `collage health` in this container that this worker runs and reaches its database."""
    while not worker.done():
        with contextlib.suppress(Exception):  # no beat is the message
            await liveness.check()
            health.write_beat(runtime.settings.temp_dir)
        await asyncio.sleep(HEARTBEAT_EVERY_S)


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop
