"""Take back the jobs of dead workers: queue their SKUs again, or end a SKU that keeps killing.

Every worker runs this every few seconds (worker.py), and the periodic `collage.rescue` task
every minute as a net for workers started without it. A job is dead by the rule in
db.liveness.dead_jobs; two rescuers racing for one job are told apart by Procrastinate, which
lets only one of them finish it. What becomes of the SKU is settle.after_death's to decide.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import procrastinate
from procrastinate.exceptions import ConnectorException
from procrastinate.jobs import Status

from collage.constants import BUILD_TASK, STALLED_WORKER_S
from collage.db import liveness
from collage.queue import settle
from collage.queue.app import pool_of

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rescued:
    """What one rescue pass did."""

    requeued: list[int]  # product ids queued again
    ended: list[int]  # product ids marked 'error': their builds kept killing their workers
    failed_jobs: list[int]


async def rescue(app: procrastinate.App) -> Rescued:
    """Fail every dead job; queue its SKU again, or mark it 'error' after too many deaths."""
    pool = pool_of(app)
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
        async with pool.connection() as conn:
            ended = await settle.after_death(
                conn, job_id=job.id, product_id=product_id, generation=job.args.get("generation")
            )
        if ended is None:
            done.requeued.append(product_id)
            continue
        done.ended.append(product_id)
        outcome, product = ended
        settle.report(outcome, product, attempt=int(job.args.get("attempt") or 0), made=None)
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
