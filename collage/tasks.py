"""The build job: download a SKU's photos, join them, upload the collage, record the result.

The periodic tasks are in maintenance.py.
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

from collage import imaging, metrics, products
from collage.app import app
from collage.constants import BUILD_TASK, QUEUE
from collage.errors import (
    BadImageUrls,
    CollageError,
    NoPhotos,
    Permanent,
    TooLarge,
    one_line,
)
from collage.runtime import Runtime, connection, retry_db, runtime_of
from collage.storage import LONGEST_CALL_S, Bucket, collage_key

logger = logging.getLogger(__name__)

# Transient failures: retried 5 times, 15 s to 4 min apart, before the SKU is marked 'error'.
MAX_ATTEMPTS = 6
BACKOFF_BASE_S = 15.0
BACKOFF_MAX_S = 240.0
MAX_PHOTOS = 40  # 40 photos at the narrowest plausible width already pass JPEG's width limit
DOWNLOAD_CONCURRENCY = 4
# The compressed originals of one SKU held in memory at once, whatever the rows claim.
MAX_SKU_BYTES = 400 * 1024 * 1024
_JSON_TYPES = {dict: "object", str: "string", int: "number", float: "number", bool: "boolean"}


@dataclass(frozen=True)
class Built:
    """A collage uploaded for a SKU."""

    url: str
    photos: int
    size: int


def backoff_s(attempt: int) -> float:
    """Wait longer after each transient failure: 15 s, 30 s, 60 s ... capped at 4 minutes."""
    return min(BACKOFF_BASE_S * 2**attempt, BACKOFF_MAX_S)


@app.task(name=BUILD_TASK, queue=QUEUE, pass_context=True)
async def build(context: JobContext, product_id: int, attempt: int = 0) -> str:
    """Build, upload and record one SKU's collage; returns what happened.

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
        status = product.image_status if product else "deleted"
        _log("collage skipped", product_id, outcome="skipped", status=status)
        metrics.record_outcome("skipped", duration_s=time.monotonic() - started)
        return "skipped"
    result = await make_and_upload(context, runtime, product)
    # Writing the result again after a dropped connection is safe: the write is guarded.
    outcome = await retry_db(
        lambda: settle(context, product, result, attempt=attempt, started=started),
        product_id=product.id,
        step="record the result",
    )
    report(outcome, product, attempt=attempt)
    return outcome.outcome


async def read_product(context: JobContext, product_id: int) -> products.Product | None:
    """Read the SKU as it is when the job starts."""
    async with connection(context) as conn:
        return await products.fetch(conn, product_id)


async def make_and_upload(
    context: JobContext, runtime: Runtime, product: products.Product
) -> Built | Exception:
    """Build and upload the collage; return what was built, or why it could not be."""
    put: asyncio.Future[Built] | None = None
    try:
        made = await make_collage(runtime, product)
        put = asyncio.ensure_future(upload(runtime, made))
        return await asyncio.shield(put)
    except asyncio.CancelledError:
        await asyncio.shield(hand_over(context, product.id, put))
        raise
    except Exception as exc:
        if not isinstance(exc, CollageError):
            logger.exception("unexpected error while building", extra={"product_id": product.id})
        return exc


async def hand_over(
    context: JobContext, product_id: int, put: asyncio.Future[Built] | None
) -> None:
    """Queue an interrupted SKU again, once an upload in flight has landed or failed.

    The worker is shutting down past its grace period. An upload in flight cannot be stopped:
    the SKU's lock is kept until it is done, or a newer build could finish first and be
    overwritten.
    """
    if put is not None and not put.done():
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(put), LONGEST_CALL_S)
    async with connection(context) as conn:
        await products.enqueue(conn, product_id)
    _log("collage interrupted; queued again", product_id, outcome="interrupted")
    metrics.record_outcome("interrupted", duration_s=0.0)


async def settle(
    context: JobContext,
    product: products.Product,
    result: Built | Exception,
    *,
    attempt: int,
    started: float,
) -> products.Outcome:
    """Write the result and its outcome row in one transaction."""
    async with connection(context) as conn, conn.transaction():
        if isinstance(result, Built):
            owned = await products.mark_ready(conn, product, collage_url=result.url)
            outcome = products.Outcome(
                product_id=product.id,
                job_id=None,
                outcome="built" if owned else "superseded",
                photos=result.photos,
                bytes_out=result.size,
            )
        else:
            outcome = await _settle_failure(conn, product, result, attempt=attempt)
        outcome = dataclasses.replace(
            outcome, job_id=context.job.id, duration_s=time.monotonic() - started
        )
        await products.record_outcome(conn, outcome)
        return outcome


def report(outcome: products.Outcome, product: products.Product, *, attempt: int) -> None:
    """Count the outcome and log it in one line."""
    metrics.record_outcome(
        outcome.outcome, error_class=outcome.error_class, duration_s=outcome.duration_s or 0.0
    )
    _log(
        f"collage {outcome.outcome}",
        product.id,
        brand=product.brand,
        external_id=product.external_id,
        outcome=outcome.outcome,
        attempt=attempt,
        photos=outcome.photos,
        bytes_out=outcome.bytes_out,
        duration_s=round(outcome.duration_s or 0.0, 3),
        error_class=outcome.error_class,
        error=outcome.message,
    )


@dataclass(frozen=True)
class Made:
    """A collage built in memory, not uploaded yet."""

    key: str
    jpeg: bytes
    photos: int


async def make_collage(runtime: Runtime, product: products.Product) -> Made:
    """Download the photos and join them; raise CollageError on failure."""
    bucket, settings = runtime.bucket, runtime.settings
    key = collage_key(product.brand, product.external_id)
    keys = photo_keys(bucket, product.image_urls)
    limit = asyncio.Semaphore(DOWNLOAD_CONCURRENCY)
    downloaded = 0

    async def download(photo_key: str) -> bytes:
        nonlocal downloaded
        async with limit:
            data = await runtime.run(bucket.get, photo_key)
        metrics.BYTES_DOWNLOADED.inc(len(data))
        downloaded += len(data)
        if downloaded > MAX_SKU_BYTES:
            raise TooLarge(f"the photos add up to over {MAX_SKU_BYTES:,} bytes")
        return data

    photos = await asyncio.gather(*(download(k) for k in keys))
    jpeg = await runtime.run(
        imaging.build_collage, photos, quality=settings.collage_quality, names=keys
    )
    return Made(key=key, jpeg=jpeg, photos=len(keys))


async def upload(runtime: Runtime, made: Made) -> Built:
    """Put the collage where the try-on model reads it."""
    await runtime.run(runtime.bucket.put_jpeg, made.key, made.jpeg)
    metrics.BYTES_UPLOADED.inc(len(made.jpeg))
    return Built(
        url=runtime.bucket.public_url_for(made.key), photos=made.photos, size=len(made.jpeg)
    )


def photo_keys(bucket: Bucket, image_urls: object) -> list[str]:
    """Check image_urls and map every URL to a key in our bucket, before anything is fetched."""
    if image_urls is None or image_urls == []:
        raise NoPhotos("image_urls is empty")
    if not isinstance(image_urls, list):
        kind = _JSON_TYPES.get(type(image_urls), type(image_urls).__name__)
        raise BadImageUrls(f"image_urls is a JSON {kind}, not a list")
    if len(image_urls) > MAX_PHOTOS:
        raise BadImageUrls(f"image_urls has {len(image_urls)} photos; at most {MAX_PHOTOS} fit")
    return [bucket.key_for(url) for url in image_urls]


async def _settle_failure(
    conn: AsyncConnection, product: products.Product, exc: Exception, *, attempt: int
) -> products.Outcome:
    """Mark the SKU broken, or queue a later attempt for a failure that may pass."""
    message = exc.message if isinstance(exc, CollageError) else f"internal error: {one_line(exc)}"
    if not isinstance(exc, Permanent) and attempt + 1 < MAX_ATTEMPTS:
        await products.enqueue(conn, product.id, attempt=attempt + 1, delay_s=backoff_s(attempt))
        outcome = "retry"
    else:
        if not isinstance(exc, Permanent):
            message = f"gave up after {attempt + 1} attempts: {message}"
        marked = await products.mark_error(conn, product, message=message)
        outcome = "error" if marked else "superseded"
    return products.Outcome(
        product_id=product.id,
        job_id=None,
        outcome=outcome,
        error_class=type(exc).__name__,
        message=message,
    )


def _log(message: str, product_id: int, **fields: object) -> None:
    logger.info(message, extra={"action": "build_collage", "product_id": product_id, **fields})
