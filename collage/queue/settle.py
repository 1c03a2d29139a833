"""A SKU's fate after an attempt, decided in one place: built, retried later, broken, handed over.

Whatever ends an attempt (the build's result, a shutdown, a worker that died under it) comes
here: the row and the ledger (collage_outcomes) change in one transaction, and `report` counts
and logs it once it has committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from dataclasses import dataclass

from psycopg import AsyncConnection

from collage.backoff import Backoff
from collage.constants import HANDOVER_S, MAX_WORKER_DEATHS
from collage.db import builds, outcomes, products, progress
from collage.db.outcomes import Outcome
from collage.db.products import Product
from collage.errors import CollageError, KeyTaken, Permanent, Transient, WorkerDied, one_line
from collage.isolation.protocol import Built
from collage.queue import metrics
from collage.queue.gate import HOLD_S
from collage.queue.resources import Resources
from collage.text import cut

logger = logging.getLogger(__name__)

# Transient failures: retried 5 times, 15 s to 4 min apart, before the SKU is marked 'error'.
MAX_ATTEMPTS = 6
JOB_BACKOFF = Backoff(first_s=15.0, max_s=240.0)


@dataclass(frozen=True)
class Made:
    """A collage built in memory, not published yet."""

    key: str
    built: Built
    photos: int


async def settle(
    conn: AsyncConnection,
    resources: Resources,
    product: Product,
    result: Made | Exception,
    *,
    job_id: int | None,
    attempt: int,
    duration_s: float,
) -> Outcome:
    """Publish or fail the SKU and record the attempt, in one transaction; safe to repeat."""
    if isinstance(result, Made):
        return await _publish(
            conn, resources, product, result, job_id=job_id, duration_s=duration_s
        )
    async with conn.transaction():
        outcome = await _fail(conn, product, result, attempt=attempt)
        outcome = dataclasses.replace(outcome, job_id=job_id, duration_s=duration_s)
        await _record(conn, outcome)
        return outcome


async def hand_over(conn: AsyncConnection, product_id: int) -> None:
    """Queue a paused SKU again for whichever worker is next; it was not attempted."""
    await products.enqueue(conn, product_id)


async def hold_back(conn: AsyncConnection, product: Product, *, attempt: int) -> None:
    """Queue a SKU again after HOLD_S, same attempt: S3 refused this worker, not the SKU."""
    await products.enqueue(
        conn, product.id, attempt=attempt, delay_s=HOLD_S, generation=product.generation
    )


async def interrupted(conn: AsyncConnection, product: Product, *, attempt: int) -> Outcome | None:
    """Queue a SKU cut short at shutdown again as its next attempt, or end it at the cap.

    A SKU whose builds never finish (a server that trickles for ever) would otherwise be
    handed from worker to worker at every deploy, attempt 0 each time.
    """
    async with conn.transaction():
        if attempt + 1 < MAX_ATTEMPTS:
            await products.enqueue(
                conn, product.id, attempt=attempt + 1, generation=product.generation
            )
            return None
        if not await builds.claim(conn, product):
            return None
        stopped = Transient("the worker stopped while building this SKU")
        outcome = _outcome(product, "error", error=stopped)
        outcome = dataclasses.replace(
            outcome, message=f"gave up after {attempt + 1} attempts: {outcome.message}"
        )
        await builds.mark_error(conn, product, message=outcome.message or "")
        await _record(conn, outcome)
        return outcome


async def after_death(
    conn: AsyncConnection, *, job_id: int, product_id: int, generation: int | None
) -> tuple[Outcome, Product] | None:
    """Queue a dead worker's SKU again, or end it after MAX_WORKER_DEATHS; say how it ended."""
    async with conn.transaction():
        product = await products.fetch(conn, product_id)
        if product is None or (generation is not None and product.generation != generation):
            await products.enqueue(conn, product_id)  # a newer upload: its own job builds it
            return None
        deaths, step = await progress.count_death(conn, product_id, product.generation)
        if deaths < MAX_WORKER_DEATHS or not await builds.claim(conn, product):
            await products.enqueue(conn, product_id, generation=product.generation)
            return None
        died = WorkerDied(
            f"the worker died {deaths} times while building this SKU; last seen {step}"
        )
        await builds.mark_error(conn, product, message=died.message)
        outcome = dataclasses.replace(_outcome(product, "error", error=died), job_id=job_id)
        await _record(conn, outcome)
        return outcome, product


async def _publish(
    conn: AsyncConnection,
    resources: Resources,
    product: Product,
    made: Made,
    *,
    job_id: int | None,
    duration_s: float,
) -> Outcome:
    """Upload the collage and mark the SKU ready, unless a newer upload owns it by then.

    Builds that write the same key take turns (two rows may share brand and external_id), so
    an older upload never overwrites the collage of a newer one. Two round trips: the key's
    lock and the owner check (with the BEGIN), then the upload, then one statement that claims,
    records and forgets (with the COMMIT), pipelined.
    """
    try:
        async with conn.pipeline():
            # BEGIN and COMMIT by hand: psycopg's transaction block would wait on each.
            await conn.execute("BEGIN")
            await builds.lock_collage_key(conn, made.key)
            owner = await builds.newer_owner(conn, product)  # this fetch sends all three
            if owner is None:
                await _upload(resources, made)
            cur = await builds.publish(
                conn,
                product,
                collage_url=resources.bucket.public_url_for(made.key),
                key=made.key,
                owner=owner,
                job_id=job_id,
                photos=made.photos,
                bytes_out=len(made.built.jpeg),
                duration_s=duration_s,
                quality=made.built.quality,
            )
            await conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(Exception):  # a broken connection is the pool's to drop
            await asyncio.shield(conn.rollback())
        raise
    published = await builds.published(cur)  # the COMMIT went with it
    if published.displaced:
        logger.warning(
            "rows with the same collage key marked 'error'",
            extra={
                "action": "build_collage",
                "product_id": product.id,
                "displaced": published.displaced,
            },
        )
    if published.outcome == "error":
        taken = KeyTaken(published.message or "")
        outcome = _outcome(product, "error", error=taken)
    else:
        outcome = _outcome(product, published.outcome, made=made)
    return dataclasses.replace(outcome, job_id=job_id, duration_s=duration_s)


async def _upload(resources: Resources, made: Made) -> None:
    """Put the collage where the try-on model reads it; an upload in flight is seen through.

    A cancelled upload may still land: the SKU's lock and the key's are held until it has
    landed or failed, or a newer build could finish first and then be overwritten.
    """
    jpeg = made.built.jpeg
    put = asyncio.ensure_future(resources.run(resources.bucket.put_jpeg, made.key, jpeg))
    try:
        await asyncio.shield(put)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(put), HANDOVER_S)
        raise
    metrics.BYTES_UPLOADED.inc(len(jpeg))


async def _fail(
    conn: AsyncConnection, product: Product, exc: Exception, *, attempt: int
) -> Outcome:
    """Mark the SKU broken, or queue a later attempt for a failure that may pass."""
    if not await builds.claim(conn, product):
        return _outcome(product, "superseded", error=exc)
    if not isinstance(exc, Permanent) and attempt + 1 < MAX_ATTEMPTS:
        await products.enqueue(
            conn,
            product.id,
            attempt=attempt + 1,
            delay_s=JOB_BACKOFF.delay_s(attempt),
            generation=product.generation,
        )
        return _outcome(product, "retry", error=exc)
    outcome = _outcome(product, "error", error=exc)
    if not isinstance(exc, Permanent):
        outcome = dataclasses.replace(
            outcome, message=f"gave up after {attempt + 1} attempts: {outcome.message}"
        )
    await builds.mark_error(conn, product, message=outcome.message or "")
    return outcome


async def _record(conn: AsyncConnection, outcome: Outcome) -> None:
    """Append the attempt to the ledger; the build's progress and deaths are history now."""
    await outcomes.record(conn, outcome)
    await progress.forget(conn, outcome.product_id)


def report(outcome: Outcome, product: Product, *, attempt: int, made: Made | None) -> None:
    """Count a committed outcome and log it in one line."""
    metrics.record_outcome(
        outcome.outcome, error_class=outcome.error_class, duration_s=outcome.duration_s or 0.0
    )
    log(
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
        build_cpu_s=round(made.built.cpu_s, 3) if made else None,
        build_peak_mib=round(made.built.peak_rss / 2**20) if made else None,
        quality=outcome.quality,
        error_class=outcome.error_class,
        error=outcome.message,
    )


def log(message: str, product_id: int, **fields: object) -> None:
    """Log one line about a SKU's build."""
    logger.info(message, extra={"action": "build_collage", "product_id": product_id, **fields})


def _outcome(
    product: Product, outcome: str, *, error: Exception | None = None, made: Made | None = None
) -> Outcome:
    message = None
    if error is not None:
        message = cut(
            error.message
            if isinstance(error, CollageError)
            else f"internal error: {one_line(error)}",
            products.MESSAGE_CHARS,  # the ledger and the log keep what error_message keeps
        )
    return Outcome(
        product_id=product.id,
        job_id=None,
        outcome=outcome,
        error_class=type(error).__name__ if error is not None else None,
        message=message,
        photos=made.photos if made else None,
        bytes_out=len(made.built.jpeg) if made else None,
        quality=made.built.quality if made else None,
    )
