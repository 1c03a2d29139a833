"""Run Procrastinate's worker, keep it running through database outages, and watch the others.

Procrastinate's worker stops when the database goes away (a side task fails and the worker
returns). This supervisor starts it again with backoff, so a deployment needs no restart loop
of its own; it gives up (exit code 1) only after failing for `give_up_after_s` in a row.

Beside it run: the liveness locks of its jobs (db/liveness.py), the rescue of dead workers'
jobs every RESCUE_EVERY_S (rescue.py), and the beat `collage health` reads in this container.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Sequence
from time import monotonic
from typing import Any

from procrastinate import JobContext
from procrastinate.exceptions import AlreadyEnqueued
from procrastinate.middleware import AsyncCallNext, WorkerMiddleware

from collage.backoff import Backoff
from collage.constants import (
    GRACEFUL_TIMEOUT_S,
    HEARTBEAT_EVERY_S,
    MAINTENANCE_QUEUE,
    QUEUE,
    RESCUE_EVERY_S,
    SHUTDOWN_SLACK_S,
    STALLED_WORKER_S,
    drain_s,
)
from collage.db import products
from collage.db.liveness import Liveness
from collage.queue import health, periodic, rescue
from collage.queue.app import bind, pool_of
from collage.queue.resources import Resources
from collage.queue.side_by_side import RESTART_FIRST_S, RESTART_MAX_S, restarted, together
from collage.settings import Settings

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_GAVE_UP = 1
HEALTHY_RUN_S = 60.0  # a run at least this long ends an outage: the next failure starts afresh


class Failing(Exception):
    """Procrastinate's worker stopped on its own soon after it started; the message says why."""


class RanWell(Exception):
    """Procrastinate's worker stopped on its own after a good while: a fresh outage begins."""


class GaveUp(Exception):
    """Procrastinate's worker kept stopping for `give_up_after_s`."""


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
    resources = Resources.from_settings(settings)
    liveness = Liveness(settings.db_session_url)
    failing_since = monotonic()

    async def run() -> None:
        if stop.is_set():
            return
        started = monotonic()
        error = await _run_once(
            settings,
            resources=resources,
            liveness=liveness,
            stop=stop,
            graceful_timeout_s=graceful_timeout_s,
            middleware=middleware,
            worker_options=worker_options or {},
        )
        if stop.is_set():
            return
        now = monotonic()
        if now - started > HEALTHY_RUN_S:
            raise RanWell(error)
        if now - failing_since > give_up_after_s:
            raise GaveUp(error)
        raise Failing(error)

    async def until_stopped(delay_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay_s)

    code = EXIT_OK
    while not stop.is_set():
        # Each outage gets the shortest delays first, and its own give-up clock.
        failing_since = monotonic()
        restarts = Backoff(first_s=RESTART_FIRST_S, max_s=RESTART_MAX_S)
        try:
            await restarts.call(run, on=Failing, on_retry=_restarting, sleep=until_stopped)
        except RanWell as exc:
            _restarting(exc, 0.0)
        except GaveUp as exc:
            logger.error(
                "worker keeps failing; giving up",
                extra={"action": "supervise", "error": str(exc), "failing_s": give_up_after_s},
            )
            code = EXIT_GAVE_UP
            break
    await _close(resources, liveness)
    if code == EXIT_OK:
        logger.info("worker stopped", extra={"action": "supervise"})
    return code


def _restarting(exc: BaseException, delay_s: float) -> None:
    logger.warning(
        "worker stopped unexpectedly; restarting",
        extra={"action": "supervise", "error": str(exc), "restart_in_s": delay_s},
    )


async def _close(resources: Resources, liveness: Liveness) -> None:
    """Let hand-overs finish, then drop the locks: what is still running becomes the rescue's."""
    await resources.finish_handovers(SHUTDOWN_SLACK_S)
    await liveness.close()
    resources.close()
    health.forget_beat(resources.settings.temp_dir)


async def _run_once(
    settings: Settings,
    *,
    resources: Resources,
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
                await _sweep_now()
                options: dict[str, Any] = {
                    "install_signal_handlers": False,
                    "shutdown_graceful_timeout": graceful_timeout_s,
                    "additional_context": {"resources": resources},
                    "stalled_worker_timeout": STALLED_WORKER_S,
                    "update_heartbeat_interval": HEARTBEAT_EVERY_S,
                    "worker_middleware": [_holding_locks(liveness), *middleware],
                    **worker_options,
                }
                worker = asyncio.create_task(
                    together(
                        app.run_worker_async(
                            queues=[QUEUE],
                            concurrency=settings.worker_concurrency,
                            name="builds",
                            **options,
                        ),
                        # Periodic jobs on a worker of their own: builds never hold them up.
                        restarted(
                            lambda: app.run_worker_async(
                                queues=[MAINTENANCE_QUEUE],
                                concurrency=1,
                                name="maintenance",
                                **options,
                            )
                        ),
                    ),
                    name="procrastinate workers",
                )
                watchers = [
                    asyncio.create_task(_rescue_every(app, worker), name="rescue"),
                    asyncio.create_task(_beat_every(app, resources, liveness, worker), name="beat"),
                ]
                stopping = asyncio.create_task(stop.wait())
                await asyncio.wait({worker, stopping}, return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                if not worker.done():
                    logger.info("draining running jobs", extra={"action": "supervise"})
                    worker.cancel()  # Procrastinate turns this into a graceful stop
                # Bounded: with the database gone, Procrastinate's own clean-up would wait on it.
                # The running jobs keep their liveness locks all along, so no rescue takes them.
                await asyncio.wait({worker}, timeout=drain_s(graceful_timeout_s))
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


async def _beat_every(
    app: Any, resources: Resources, liveness: Liveness, worker: asyncio.Task[Any]
) -> None:
    """Tell `collage health` in this container that this worker runs and reaches its database.

    While S3 refuses every request, each beat also asks it again, and says builds are held.
    """
    while not worker.done():
        with contextlib.suppress(Exception):  # no beat is the message
            await liveness.check()
            if resources.gate.shut:
                await resources.run(resources.gate.probe, resources.bucket)
                if not resources.gate.shut:
                    async with pool_of(app).connection() as conn:
                        await products.release(conn, resources.gate.take_held())
            health.write_beat(resources.settings.temp_dir, held=resources.gate.why())
        await asyncio.sleep(HEARTBEAT_EVERY_S)


async def _sweep_now() -> None:
    """Queue the sweep at start: SKUs 'uploaded' before the triggers existed are built now.

    At adoption that is the whole backlog, queued at once in fair order, not 15 minutes later.
    """
    with contextlib.suppress(AlreadyEnqueued):  # another worker's is waiting already
        await periodic.sweep.defer_async()


def _holding_locks(liveness: Liveness) -> WorkerMiddleware:
    """Hold each job's liveness lock for as long as it runs, its hand-over at shutdown included."""

    async def hold(call_next: AsyncCallNext, context: JobContext, worker: Any) -> Any:
        job_id = context.job.id
        assert job_id is not None
        await liveness.hold(job_id)
        try:
            return await call_next()
        finally:
            await asyncio.shield(liveness.release(job_id))

    return hold


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop
