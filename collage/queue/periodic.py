"""The periodic tasks: the safety sweep, the hourly retry, the stalled-job rescue, the clean-up.

Cron is UTC; each tick runs once across all workers, on a queue no build can hold up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import psycopg
from procrastinate import JobContext
from procrastinate.tasks import Task
from psycopg import AsyncConnection

from collage.constants import (
    CLEANUP_TASK,
    MAINTENANCE_PRIORITY,
    MAINTENANCE_QUEUE,
    RESCUE_TASK,
    RETRY_ERRORS_TASK,
    SWEEP_TASK,
)
from collage.db import outcomes, products, progress
from collage.errors import one_line
from collage.queue import rescue
from collage.queue.app import app
from collage.queue.resources import connection, resources_of

logger = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")

# The hourly retry of errored SKUs.
RETRY_COOLDOWN_S = 3600
RETRY_BATCH = 50
RETRY_MAX_ROUNDS = 3
RETENTION_HOURS = 24 * 14
SCRATCH_MAX_AGE_S = 24 * 3600


def _maintenance(
    name: str,
) -> Callable[[Callable[Concatenate[JobContext, P], R]], Task[Concatenate[JobContext, P], R, P]]:
    """Declare a periodic task: on its own queue, never behind builds, and one waiting at most.

    A tick that finds the previous one still waiting is dropped.
    """
    return app.task(
        name=name,
        queue=MAINTENANCE_QUEUE,
        queueing_lock=name,
        priority=MAINTENANCE_PRIORITY,
        pass_context=True,
    )


@dataclass(frozen=True)
class Swept:
    """What a sweep did: the SKUs it queued, the batch it logged, why scraper_logs refused it."""

    queued: list[int]
    logged: dict[str, Any] | None
    refused: str | None = None


@app.periodic(cron="*/15 * * * *")
@_maintenance(SWEEP_TASK)
async def sweep(context: JobContext, timestamp: int | None = None) -> list[int]:
    """Queue every 'uploaded' SKU no job covers, and log the batch to scraper_logs."""
    resources = resources_of(context)
    async with connection(context) as conn:
        swept = await run_sweep(conn, batch=resources.settings.batch_size)
    if swept.refused and resources.warn_once(swept.refused):
        logger.warning(
            "scraper_logs refused the batch row; batches go unlogged until the table takes it",
            extra={"action": "sweep", "error": swept.refused},
        )
    return swept.queued


async def run_sweep(conn: AsyncConnection, *, batch: int) -> Swept:
    """Do what the periodic sweep does (also `collage sweep`, `collage adopt`).

    The SKUs are queued `batch` at a time, each batch committed, so a backlog of thousands at
    the first start is queued whole in one sweep; the scraper_logs row is written after, in a
    transaction of its own: a table that refuses it costs the log line, never the queueing.
    """
    queued: list[int] = []
    while True:
        async with conn.transaction():
            found = await products.enqueue_unqueued(conn, limit=batch)
        queued += found
        if len(found) < batch:
            break
    refused = None
    try:
        async with conn.transaction():
            logged = await outcomes.log_batch(conn)
    except psycopg.DatabaseError as exc:
        logged, refused = None, one_line(exc)
    logger.info(
        "sweep done",
        extra={"action": "sweep", "queued": len(queued), "logged": logged, "refused": refused},
    )
    return Swept(queued, logged, refused)


@app.periodic(cron="30 * * * *")
@_maintenance(RETRY_ERRORS_TASK)
async def retry_errors(context: JobContext, timestamp: int | None = None) -> list[int]:
    """Give errored SKUs another round after a cool-down, a few rounds at most."""
    async with connection(context) as conn:
        ids = await products.requeue_errored(
            conn, limit=RETRY_BATCH, cooldown_s=RETRY_COOLDOWN_S, max_rounds=RETRY_MAX_ROUNDS
        )
    logger.info("errored SKUs requeued", extra={"action": "retry_errors", "count": len(ids)})
    return ids


@app.periodic(cron="* * * * *")
@_maintenance(RESCUE_TASK)
async def rescue_stalled(context: JobContext, timestamp: int | None = None) -> list[int]:
    """Take back the jobs of dead workers (every worker also does it every few seconds).

    A dead build is not retried in place (its SKU may already have a waiting job); a dead
    maintenance job is only failed: its next tick does the work.
    """
    done = await rescue.rescue(context.app)
    return done.requeued


@app.periodic(cron="0 4 * * *")
@_maintenance(CLEANUP_TASK)
async def cleanup(context: JobContext, timestamp: int | None = None) -> int:
    """Delete day-old scratch files and prune finished jobs and outcomes past retention."""
    resources = resources_of(context)
    removed = await resources.run(remove_old_files, resources.settings.temp_dir)
    await context.app.job_manager.delete_old_jobs(
        nb_hours=RETENTION_HOURS, include_failed=True, include_cancelled=True, include_aborted=True
    )
    async with connection(context) as conn:
        await outcomes.prune(conn, older_than_hours=RETENTION_HOURS)
        await progress.prune(conn, older_than_hours=RETENTION_HOURS)
    logger.info("cleanup done", extra={"action": "cleanup", "files_removed": removed})
    return removed


def remove_old_files(folder: Path, *, max_age_s: float = SCRATCH_MAX_AGE_S) -> int:
    """Delete files under `folder` not modified for `max_age_s`; return how many."""
    if not folder.is_dir():
        return 0
    cutoff = time.time() - max_age_s
    removed = 0
    for path in folder.rglob("*"):
        try:
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            continue  # another worker's cleanup got there first
    return removed
