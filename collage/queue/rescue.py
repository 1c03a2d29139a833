"""Take back the jobs of dead workers: queue their SKUs again, or end a SKU that keeps killing.

Every worker runs this every few seconds (worker.py), and the periodic `collage.rescue` task
every minute as a net for workers started without it. A job is dead by the rule in
liveness.dead_jobs; two rescuers racing for one job are told apart by Procrastinate, which
lets only one of them finish it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import procrastinate
from procrastinate.exceptions import ConnectorException
from procrastinate.jobs import Status
from psycopg import AsyncConnection

from collage import liveness, outcomes, products, progress
from collage.constants import BUILD_TASK, MAX_WORKER_DEATHS, STALLED_WORKER_S
from collage.errors import WorkerDied

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rescued:
    """What one rescue pass did."""

    requeued: list[int]  # product ids queued again
    ended: list[int]  # product ids marked 'error': their builds kept killing their workers
    failed_jobs: list[int]


async def rescue(app: procrastinate.App) -> Rescued:
    """Fail every dead job; queue its SKU again, or mark it 'error' after too many deaths."""
    pool = app.connector.pool  # type: ignore[attr-defined]
    async with pool.connection() as conn:
        dead = await liveness.dead_jobs(conn)
    done = Rescued(requeued=[], ended=[], failed_jobs=[])
    for job in dead:
        try:
            await app.job_manager.finish_job_by_id_async(
                job_id=job.id, status=Status.FAILED, delete_job=False
            )
        except ConnectorException:  # it finished meanwhile, or another rescuer took it
            continue
        done.failed_jobs.append(job.id)
        if job.task_name != BUILD_TASK:
            continue  # a maintenance job: its next tick does the work
        product_id = int(job.args["product_id"])
        async with pool.connection() as conn, conn.transaction():
            ended = await _after_death(conn, job.id, product_id, job.args.get("generation"))
        (done.ended if ended else done.requeued).append(product_id)
    await app.job_manager.prune_stalled_workers(seconds_since_heartbeat=STALLED_WORKER_S * 10)
    if done.failed_jobs:
        logger.warning(
            "jobs of dead workers rescued",
            extra={
                "action": "rescue",
                "jobs": done.failed_jobs,
                "requeued": done.requeued,
                "ended": done.ended,
            },
        )
    return done


async def _after_death(
    conn: AsyncConnection, job_id: int, product_id: int, generation: int | None
) -> bool:
    """Queue the SKU again, or end it after MAX_WORKER_DEATHS; True when it was ended."""
    product = await products.fetch(conn, product_id)
    if product is None or (generation is not None and product.generation != generation):
        await products.enqueue(conn, product_id)  # a newer upload: its own job builds it
        return False
    deaths, step = await progress.count_death(conn, product_id, product.generation)
    if deaths < MAX_WORKER_DEATHS or not await products.claim(conn, product):
        await products.enqueue(conn, product_id, generation=product.generation)
        return False
    died = WorkerDied(f"the worker died {deaths} times while building this SKU; last seen {step}")
    await products.mark_error(conn, product, message=died.message)
    await outcomes.record(
        conn,
        outcomes.Outcome(
            product_id=product_id,
            job_id=job_id,
            outcome="error",
            error_class=type(died).__name__,
            message=died.message,
        ),
    )
    return True
