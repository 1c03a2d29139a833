"""The build job: read a SKU, download and join its photos, then let settle.py decide its fate.

The periodic tasks are in periodic.py; what jobs run with is in resources.py.
"""

from __future__ import annotations

import asyncio
import logging
import time

from procrastinate import JobContext

from collage.constants import BUILD_TASK, QUEUE
from collage.db import builds
from collage.db.outcomes import Outcome
from collage.db.products import Product
from collage.errors import CollageError, S3Refused, Transient
from collage.queue import metrics, settle
from collage.queue.app import app
from collage.queue.progress import Reporter
from collage.queue.resources import Resources, connection, resources_of, retry_db
from collage.queue.settle import Made
from collage.storage.downloads import download_all
from collage.storage.keys import collage_key

logger = logging.getLogger(__name__)


@app.task(name=BUILD_TASK, queue=QUEUE, pass_context=True)
async def build(
    context: JobContext,
    product_id: int,
    attempt: int = 0,
    generation: int | None = None,
    brand: str | None = None,  # carried for pauses and fair shares (migrations/008)
) -> str:
    """Build, publish and record one generation of a SKU's collage; return what happened.

    Retries are queued by settle.py, not by Procrastinate's RetryStrategy: a retry of a job
    whose SKU already has a waiting job would collide with the queueing lock and strand the
    job in 'doing' (Procrastinate issues #1446, #1543).
    """
    resources = resources_of(context)
    started = time.monotonic()
    product = await retry_db(
        lambda: start(context, product_id, generation), product_id=product_id, what="read the SKU"
    )
    if product is None or product.image_status != "uploaded":
        return _skip(product_id, started, status=product.image_status if product else "deleted")
    if generation is not None and product.generation != generation:
        # A newer upload came after this job was queued; its own job is waiting.
        return _skip(product_id, started, status=f"generation {product.generation}")
    if product.paused:
        # Paused while this job was being fetched: it waits with the others until resumed.
        await retry_db(
            lambda: hand_over(context, product.id), product_id=product.id, what="hold it back"
        )
        return _skip(product_id, started, status="paused")
    if resources.gate.shut:
        # S3 refuses every request: trying would only spend this SKU's attempts.
        resources.gate.held.add(product.id)
        await retry_db(
            lambda: hold_back(context, product, attempt), product_id=product.id, what="hold it"
        )
        return _skip(product_id, started, status="held back", reason=resources.gate.why())
    reporter = Reporter(
        lambda: connection(context), product_id=product.id, generation=product.generation
    )
    try:
        result = await make_collage(resources, product, reporter)
        if isinstance(result, S3Refused):
            await resources.run(resources.gate.after_refusal, resources.bucket, result)
            if resources.gate.shut:
                resources.gate.held.add(product.id)  # its retry, too, goes as S3 answers
        if isinstance(result, Made):
            reporter.say("uploading the collage")

        async def decide() -> Outcome:
            async with connection(context) as conn:
                return await settle.settle(
                    conn,
                    resources,
                    product,
                    result,
                    job_id=context.job.id,
                    attempt=attempt,
                    duration_s=time.monotonic() - started,
                )

        outcome = await retry_db(decide, product_id=product.id, what="record the result")
    except asyncio.CancelledError:
        # The worker is shutting down past its grace period: the SKU goes back in the queue,
        # even if the worker's supervisor cancels again (it waits for resources.handovers).
        await asyncio.shield(resources.track(interrupted(context, product, attempt)))
        raise
    finally:
        await reporter.close()
    settle.report(
        outcome, product, attempt=attempt, made=result if isinstance(result, Made) else None
    )
    return str(outcome.outcome)


async def start(context: JobContext, product_id: int, generation: int | None) -> Product | None:
    """Read the SKU as it is when the job starts, noting the build's first step if it is built."""
    async with connection(context) as conn:
        return await builds.start(conn, product_id, generation=generation)


async def make_collage(
    resources: Resources, product: Product, reporter: Reporter
) -> Made | Exception:
    """Download the photos and join them; return the collage, or why it cannot be built.

    Bounded as a whole by COLLAGE_DEADLINE_S, whatever S3 or the build child does (the
    upload's bounds are botocore's timeouts).
    """
    deadline_s = resources.settings.build_deadline_s
    try:
        return await asyncio.wait_for(_make(resources, product, reporter), deadline_s)
    except TimeoutError:
        return Transient(f"building the collage took over {deadline_s} s")


async def _make(resources: Resources, product: Product, reporter: Reporter) -> Made | Exception:
    try:
        key = collage_key(product.brand, product.external_id)
        keys = resources.bucket.photo_keys(product.image_urls)
        photos = await download_all(
            resources.bucket,
            keys,
            executor=resources.executor,
            deadline_s=resources.settings.download_deadline_s,
        )
        metrics.BYTES_DOWNLOADED.inc(sum(len(photo) for photo in photos))
        pool = resources.pool
        assert pool is not None, "these resources build no collages"
        built = await resources.run(
            pool.build,
            photos,
            target=resources.target,
            names=keys,
            on_photo=lambda index, label: reporter.say(f"decoding {label} of {len(keys)}"),
        )
        return Made(key, built, len(keys))
    except Exception as exc:
        if not isinstance(exc, CollageError):
            logger.exception("unexpected error while building", extra={"product_id": product.id})
        return exc


async def hand_over(context: JobContext, product_id: int) -> None:
    """Queue the SKU again for whichever worker is next."""
    async with connection(context) as conn:
        await settle.hand_over(conn, product_id)


async def hold_back(context: JobContext, product: Product, attempt: int) -> None:
    """Queue the SKU again a little later, its attempts untouched."""
    async with connection(context) as conn:
        await settle.hold_back(conn, product, attempt=attempt)


async def interrupted(context: JobContext, product: Product, attempt: int) -> None:
    """Hand a SKU over at shutdown as a spent attempt (or its last), and say so."""
    async with connection(context) as conn:
        outcome = await settle.interrupted(conn, product, attempt=attempt)
    if outcome is not None:
        settle.report(outcome, product, attempt=attempt, made=None)
        return
    settle.log(
        "collage interrupted; queued again", product.id, outcome="interrupted", attempt=attempt
    )
    metrics.record_outcome("interrupted", duration_s=0.0)


def _skip(product_id: int, started: float, *, status: str | None, reason: str | None = None) -> str:
    settle.log("collage skipped", product_id, outcome="skipped", status=status, reason=reason)
    metrics.record_outcome("skipped", duration_s=time.monotonic() - started)
    return "skipped"
