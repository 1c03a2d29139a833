"""What every job runs with: settings, the bucket, the build pool, threads, database steps.

Kept apart from the jobs themselves (build.py, periodic.py) and from the process that runs
them (worker.py), as Procrastinate keeps its job context apart.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg
from procrastinate import JobContext
from psycopg import AsyncConnection

from collage.backoff import Backoff
from collage.errors import one_line
from collage.imaging import JpegTarget
from collage.isolation.pool import BuildPool
from collage.isolation.process import Budget
from collage.queue.app import pool_of
from collage.queue.gate import Gate
from collage.settings import Settings, from_environment
from collage.storage import Bucket

logger = logging.getLogger(__name__)
T = TypeVar("T")

# A database step after a dropped connection or a restart: retried for a minute at most.
DB_BACKOFF = Backoff(first_s=0.1, max_s=5.0, for_s=60.0)


@dataclass(frozen=True)
class Resources:
    """What a job needs besides the database: the settings, the bucket, and threads to block in.

    Blocking work (S3 calls) runs on this executor rather than asyncio's default one, so that a
    worker shutting down does not have to wait for an abandoned S3 call.
    """

    settings: Settings
    bucket: Bucket
    pool: BuildPool | None = None  # None: collages are not built here (tests of the rest)
    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(thread_name_prefix="collage")
    )
    handovers: set[asyncio.Task[None]] = field(default_factory=set)
    warned: set[str] = field(default_factory=set)  # problems already logged by this worker
    gate: Gate = field(default_factory=Gate)  # shut while S3 refuses every request

    @classmethod
    def from_settings(cls, settings: Settings) -> Resources:
        """Build the bucket client and the build pool's processes for these settings."""
        return cls(
            settings=settings, bucket=Bucket.from_settings(settings), pool=pool_for(settings)
        )

    @property
    def target(self) -> JpegTarget:
        """How collages are encoded (COLLAGE_QUALITY, COLLAGE_MAX_BYTES, COLLAGE_MIN_QUALITY)."""
        return jpeg_target(self.settings)

    async def run(self, func: Callable[..., T], /, *args: object, **kwargs: object) -> T:
        """Run a blocking call on the executor."""
        call = functools.partial(func, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self.executor, call)

    def warn_once(self, problem: str) -> bool:
        """True the first time this worker meets a problem: say it once, not every tick."""
        new = problem not in self.warned
        self.warned.add(problem)
        return new

    def track(self, handover: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run a SKU's hand-over at shutdown so that the worker can wait for it to finish."""
        task = asyncio.ensure_future(handover)
        self.handovers.add(task)
        task.add_done_callback(self.handovers.discard)
        return task

    async def finish_handovers(self, timeout_s: float) -> None:
        """Wait (bounded) for hand-overs still queueing SKUs again; the rescue covers the rest."""
        if self.handovers:
            await asyncio.wait(set(self.handovers), timeout=timeout_s)

    def close(self) -> None:
        """Stop the build pool's processes; let go of the threads without waiting for them.

        An S3 call abandoned at shutdown may hang on in a thread: its job is queued again.
        """
        if self.pool is not None:
            self.pool.close()
        self.executor.shutdown(wait=False, cancel_futures=True)


def jpeg_target(settings: Settings) -> JpegTarget:
    """The encoding the settings ask for; the quality floor matters only with a size limit."""
    limited = settings.collage_max_bytes is not None
    return JpegTarget(
        quality=settings.collage_quality,
        max_bytes=settings.collage_max_bytes,
        min_quality=settings.collage_min_quality if limited else None,
    )


def pool_for(settings: Settings, *, processes: int | None = None) -> BuildPool:
    """Child processes for collages, one per job at once, bounded as the settings say."""
    budget = Budget.of(cpu_s=settings.build_cpu_s, memory_mb=settings.build_memory_mb)
    return BuildPool(budget=budget, processes=processes or settings.worker_concurrency)


def resources_of(context: JobContext) -> Resources:
    """Use the Resources `collage worker` passed in, or build them from the environment once."""
    given = (context.additional_context or {}).get("resources")
    return given if isinstance(given, Resources) else _environment_resources()


@functools.cache
def _environment_resources() -> Resources:
    return Resources.from_settings(from_environment())


def connection(context: JobContext) -> AbstractAsyncContextManager[AsyncConnection]:
    """Borrow a connection from the app's pool (the transaction-mode URL); it commits on return."""
    return pool_of(context.app).connection()


async def retry_db(step: Callable[[], Awaitable[T]], *, product_id: int, what: str) -> T:
    """Run a database step again after a dropped connection or a restart, for a minute at most.

    Without this, a connection killed under a build would fail the job and leave its SKU
    'uploaded' with no job until the next sweep. A dropped connection (PoolTimeout and
    AdminShutdown included) or a deadlock with a downloader's bulk UPDATE (TransactionRollback)
    rolled the step's transaction back whole, so running it again is safe.
    """

    def on_retry(exc: BaseException, delay: float) -> None:
        logger.warning(
            "database step failed; retrying",
            extra={
                "action": "build_collage",
                "product_id": product_id,
                "step": what,
                "error": one_line(exc),
                "retry_in_s": delay,
            },
        )

    return await DB_BACKOFF.call(step, on=psycopg.OperationalError, on_retry=on_retry)
