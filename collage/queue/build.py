"""The build job: read a SKU, download and join its photos, publish the collage, record it.

The periodic tasks are in maintenance.py; what jobs run with is in runtime.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass

from procrastinate import JobContext
from psycopg import AsyncConnection

from collage import downloads, metrics, outcomes, products, progress
from collage.app import app
from collage.constants import BUILD_TASK, HANDOVER_S, QUEUE
from collage.errors import CollageError, KeyTaken, Permanent, one_line
from collage.runtime import Runtime, connection, retry_db, runtime_of
from collage.storage import collage_key

logger = logging.getLogger(__name__)

# Transient failures: retried 5 times, 15 s to 4 min apart, before the SKU is marked 'error'.
MAX_ATTEMPTS = 6
BACKOFF_BASE_S = 15.0
BACKOFF_MAX_S = 240.0


@dataclass(frozen=True)
class Made:
    """A collage built in memory, not published yet."""

    key: str
    jpeg: bytes
    photos: int
    cpu_s: float = 0.0  # what the build cost in its child process
    peak_rss: int = 0
    quality: int = 95  # the JPEG quality used: lower only to fit COLLAGE_MAX_BYTES


def backoff_s(attempt: int) -> float:
    """Wait longer after each transient failure: 15 s, 30 s, 60 s ... capped at 4 minutes."""
    return min(BACKOFF_BASE_S * 2**attempt, BACKOFF_MAX_S)


@app.task(name=BUILD_TASK, queue=QUEUE, pass_context=True)
async def build(
    context: JobContext,
    product_id: int,
    attempt: int = 0,
    generation: int | None = None,
    brand: str | None = None,  # carried for pauses and fair shares (migrations/008)
) -> str:
    """Build, publish and record one generation of a SKU's collage; return what happened.

    Retries are queued by this task, not by Procrastinate's RetryStrategy: a retry of a job
    whose SKU already has a waiting job would collide with the queueing lock and strand the
    job in 'doing' (Procrastinate issues #1446, #1543).
    """
    runtime = runtime_of(context)
    started = time.monotonic()
    product = await retry_db(
        lambda: read_product(context, product_id), product_id=product_id, step="read the SKU"
    )
    if product is None or product.image_status != "uploaded":
        return _skip(product_id, started, status=product.image_status if product else "deleted")
    if generation is not None and product.generation != generation:
        # A newer upload came after this job was queued; its own job is waiting.
        return _skip(product_id, started, status=f"generation {product.generation}")
    if product.paused:
        # Paused while this job was being fetched: it waits with the others until resumed.
        await retry_db(
            lambda: hand_over(context, product.id, log=False),
            product_id=product.id,
            step="hold the SKU back",
        )
        return _skip(product_id, started, status="paused")
    reporter = progress.Reporter(
        lambda: connection(context), product_id=product.id, generation=product.generation
    )
    try:
        result = await make_collage(runtime, product, reporter)
        if isinstance(result, Made):
            reporter.say("uploading the collage")
        outcome = await retry_db(
            lambda: settle(context, runtime, product, result, attempt=attempt, started=started),
            product_id=product.id,
            step="record the result",
        )
    except asyncio.CancelledError:
        # The worker is shutting down past its grace period: the SKU goes back in the queue,
        # even if the worker's supervisor cancels again (it waits for runtime.handovers).
        await asyncio.shield(runtime.track(hand_over(context, product.id)))
        raise
    finally:
        await reporter.close()
    report(outcome, product, attempt=attempt, made=result if isinstance(result, Made) else None)
    return outcome.outcome


async def read_product(context: JobContext, product_id: int) -> products.Product | None:
    """Read the SKU as it is when the job starts."""
    async with connection(context) as conn:
        return await products.fetch(conn, product_id)


async def make_collage(
    runtime: Runtime, product: products.Product, reporter: progress.Reporter
) -> Made | Exception:
    """Download the photos and join them; return the collage, or why it cannot be built."""
    try:
        key = collage_key(product.brand, product.external_id)
        keys = downloads.photo_keys(runtime.bucket, product.image_urls)
        await reporter.begin(f"downloading {len(keys)} photo{'s' if len(keys) != 1 else ''}")
        photos = await downloads.download_all(runtime, keys)
        builder = runtime.builder
        assert builder is not None, "this runtime builds no collages"
        built = await runtime.run(
            builder.build,
            photos,
            quality=runtime.settings.collage_quality,
            names=keys,
            on_photo=lambda index, label: reporter.say(f"decoding {label} of {len(keys)}"),
            max_bytes=runtime.settings.collage_max_bytes,
            min_quality=runtime.settings.collage_min_quality,
        )
        return Made(key, built.jpeg, len(keys), built.cpu_s, built.peak_rss, built.quality)
    except Exception as exc:
        if not isinstance(exc, CollageError):
            logger.exception("unexpected error while building", extra={"product_id": product.id})
        return exc


async def settle(
    context: JobContext,
    runtime: Runtime,
    product: products.Product,
    result: Made | Exception,
    *,
    attempt: int,
    started: float,
) -> outcomes.Outcome:
    """Publish or fail the SKU and record the attempt, in one transaction; safe to repeat."""
    async with connection(context) as conn, conn.transaction():
        if isinstance(result, Made):
            outcome = await publish(conn, runtime, product, result)
        else:
            outcome = await fail(conn, product, result, attempt=attempt)
        outcome = dataclasses.replace(
            outcome, job_id=context.job.id, duration_s=time.monotonic() - started
        )
        await outcomes.record(conn, outcome)
        await progress.forget(conn, product.id)
        return outcome


async def publish(
    conn: AsyncConnection, runtime: Runtime, product: products.Product, made: Made
) -> outcomes.Outcome:
    """Upload the collage and mark the SKU ready, unless a newer upload owns it by then.

    Builds that write the same key take turns (two rows may share brand and external_id), so
    an older upload never overwrites the collage of a newer one.
    """
    await products.lock_collage_key(conn, made.key)
    owner = await products.newer_owner(conn, product)
    if owner is None:
        await upload(runtime, made)
    if not await products.claim(conn, product):
        return _outcome(product, "superseded", made=made)
    owner = owner or await products.newer_owner(conn, product)
    if owner is not None:
        taken = KeyTaken(products.KEY_TAKEN.format(key=made.key, owner=owner))
        await products.mark_error(conn, product, message=taken.message)
        return _outcome(product, "error", error=taken)
    url = runtime.bucket.public_url_for(made.key)
    displaced = await products.mark_ready(conn, product, collage_url=url, key=made.key)
    if displaced:
        logger.warning(
            "rows with the same collage key marked 'error'",
            extra={"action": "build_collage", "product_id": product.id, "displaced": displaced},
        )
    return _outcome(product, "built", made=made)


async def upload(runtime: Runtime, made: Made) -> None:
    """Put the collage where the try-on model reads it; an upload in flight is seen through.

    A cancelled upload may still land: the SKU's lock and the key's are held until it has
    landed or failed, or a newer build could finish first and then be overwritten.
    """
    put = asyncio.ensure_future(runtime.run(runtime.bucket.put_jpeg, made.key, made.jpeg))
    try:
        await asyncio.shield(put)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(put), HANDOVER_S)
        raise
    metrics.BYTES_UPLOADED.inc(len(made.jpeg))


async def fail(
    conn: AsyncConnection, product: products.Product, exc: Exception, *, attempt: int
) -> outcomes.Outcome:
    """Mark the SKU broken, or queue a later attempt for a failure that may pass."""
    if not await products.claim(conn, product):
        return _outcome(product, "superseded", error=exc)
    if not isinstance(exc, Permanent) and attempt + 1 < MAX_ATTEMPTS:
        await products.enqueue(
            conn,
            product.id,
            attempt=attempt + 1,
            delay_s=backoff_s(attempt),
            generation=product.generation,
        )
        return _outcome(product, "retry", error=exc)
    outcome = _outcome(product, "error", error=exc)
    if not isinstance(exc, Permanent):
        outcome = dataclasses.replace(
            outcome, message=f"gave up after {attempt + 1} attempts: {outcome.message}"
        )
    await products.mark_error(conn, product, message=outcome.message or "")
    return outcome


async def hand_over(context: JobContext, product_id: int, *, log: bool = True) -> None:
    """Queue an interrupted SKU again for whichever worker is next."""
    async with connection(context) as conn:
        await products.enqueue(conn, product_id)
    if log:
        _log("collage interrupted; queued again", product_id, outcome="interrupted")
        metrics.record_outcome("interrupted", duration_s=0.0)


def report(
    outcome: outcomes.Outcome, product: products.Product, *, attempt: int, made: Made | None
) -> None:
    """Count the outcome and log it in one line."""
    metrics.record_outcome(
        outcome.outcome, error_class=outcome.error_class, duration_s=outcome.duration_s or 0.0
    )
    _log(
        f"collage {outcome.outcome}",
        product.id,
        brand=product.brand,
        external_id=product.external_id,
        generation=product.generation,
        outcome=outcome.outcome,
        attempt=attempt,
        photos=outcome.photos,
        bytes_out=outcome.bytes_out,
        duration_s=round(outcome.duration_s or 0.0, 3),
        build_cpu_s=round(made.cpu_s, 3) if made else None,
        build_peak_mib=round(made.peak_rss / 2**20) if made else None,
        quality=outcome.quality,
        error_class=outcome.error_class,
        error=outcome.message,
    )


def _outcome(
    product: products.Product,
    outcome: str,
    *,
    error: Exception | None = None,
    made: Made | None = None,
) -> outcomes.Outcome:
    message = None
    if error is not None:
        message = (
            error.message
            if isinstance(error, CollageError)
            else f"internal error: {one_line(error)}"
        )
    return outcomes.Outcome(
        product_id=product.id,
        job_id=None,
        outcome=outcome,
        error_class=type(error).__name__ if error is not None else None,
        message=message,
        photos=made.photos if made else None,
        bytes_out=len(made.jpeg) if made else None,
        quality=made.quality if made else None,
    )


def _skip(product_id: int, started: float, *, status: str | None) -> str:
    _log("collage skipped", product_id, outcome="skipped", status=status)
    metrics.record_outcome("skipped", duration_s=time.monotonic() - started)
    return "skipped"


def _log(message: str, product_id: int, **fields: object) -> None:
    logger.info(message, extra={"action": "build_collage", "product_id": product_id, **fields})
