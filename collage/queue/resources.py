"""What every job runs with: settings, the bucket, threads to block in, database connections.

Kept apart from the jobs themselves (tasks.py, maintenance.py) and from the process that runs
them (worker.py), as Procrastinate keeps its job context apart.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg
from procrastinate import JobContext
from psycopg import AsyncConnection

from collage.builder import MIB, Budget, Builder
from collage.errors import one_line
from collage.settings import Settings, from_environment
from collage.storage import Bucket

logger = logging.getLogger(__name__)
T = TypeVar("T")

DB_RETRY_FOR_S = 60.0  # how long a job keeps retrying a database step after a dropped connection


@dataclass(frozen=True)
class Runtime:
    """What a job needs besides the database: the settings, the bucket, and threads to block in.

    Blocking work (S3 calls, Pillow) runs on this executor rather than asyncio's default one,
    so that a worker shutting down does not have to wait for an abandoned S3 call.
    """

    settings: Settings
    bucket: Bucket
    builder: Builder | None = None  # None: collages are not built here (tests of the rest)
    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(thread_name_prefix="collage")
    )
    handovers: set[asyncio.Task[None]] = field(default_factory=set)

    @classmethod
    def from_settings(cls, settings: Settings) -> Runtime:
        """Build the bucket client and the collage builder's processes for these settings."""
        return cls(
            settings=settings, bucket=Bucket.from_settings(settings), builder=builder_for(settings)
        )

    async def run(self, func: Callable[..., T], /, *args: object, **kwargs: object) -> T:
        """Run a blocking call on the executor."""
        call = functools.partial(func, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self.executor, call)

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
        """Stop the builder's processes; let go of the threads without waiting for them.

        An S3 call abandoned at shutdown may hang on in a thread: its job is queued again.
        """
        if self.builder is not None:
            self.builder.close()
        self.executor.shutdown(wait=False, cancel_futures=True)


def builder_for(settings: Settings, *, processes: int | None = None) -> Builder:
    """Child processes for collages, one per job at once, bounded as the settings say."""
    budget = Budget(cpu_s=settings.build_cpu_s, memory_bytes=settings.build_memory_mb * MIB)
    return Builder(budget=budget, processes=processes or settings.worker_concurrency)


def runtime_of(context: JobContext) -> Runtime:
    """Use the Runtime `collage worker` passed in, or build one from the environment once."""
    given = (context.additional_context or {}).get("runtime")
    return given if isinstance(given, Runtime) else _environment_runtime()


@functools.cache
def _environment_runtime() -> Runtime:
    return Runtime.from_settings(from_environment())


def connection(context: JobContext) -> AbstractAsyncContextManager[AsyncConnection]:
    """Borrow a connection from the app's pool (the transaction-mode URL); it commits on return."""
    return context.app.connector.pool.connection()  # type: ignore[attr-defined, no-any-return]


async def retry_db(step_call: Callable[[], Awaitable[T]], *, product_id: int, step: str) -> T:
    """Run a database step again after a dropped connection or a restart, for a minute at most.

    Without this, a connection killed under a build would fail the job and leave its SKU
    'uploaded' with no job until the next sweep.
    """
    deadline = time.monotonic() + DB_RETRY_FOR_S
    delay = 0.1
    while True:
        try:
            return await step_call()
        # A dropped connection (PoolTimeout and AdminShutdown included), or a deadlock with a
        # downloader's bulk UPDATE (TransactionRollback is one too): the step's transaction was
        # rolled back whole, so running it again is safe.
        except psycopg.OperationalError as exc:
            if time.monotonic() + delay > deadline:
                raise
            logger.warning(
                "database step failed; retrying",
                extra={
                    "action": "build_collage",
                    "product_id": product_id,
                    "step": step,
                    "error": one_line(exc),
                    "retry_in_s": delay,
                },
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
