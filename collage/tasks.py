"""The build job: download a SKU's photos, join them, upload the collage, record the result.

The periodic tasks are in maintenance.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TypeVar

import psycopg
from procrastinate import JobContext
from psycopg import AsyncConnection

from collage import imaging, metrics, products
from collage.app import QUEUE, app
from collage.errors import (
    BadImageUrls,
    CollageError,
    NoPhotos,
    Permanent,
    TooLarge,
    one_line,
)
from collage.settings import Settings, from_environment
from collage.storage import LONGEST_CALL_S, Bucket, collage_key

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Transient failures: retried 5 times, 15 s to 4 min apart, before the SKU is marked 'error'.
MAX_ATTEMPTS = 6
BACKOFF_BASE_S = 15.0
BACKOFF_MAX_S = 240.0
MAX_PHOTOS = 40  # 40 photos at the narrowest plausible width already pass JPEG's width limit
DOWNLOAD_CONCURRENCY = 4
# The compressed originals of one SKU held in memory at once, whatever the rows claim.
MAX_SKU_BYTES = 400 * 1024 * 1024
_JSON_TYPES = {dict: "object", str: "string", int: "number", float: "number", bool: "boolean"}
DB_RETRY_FOR_S = 60.0  # how long a build keeps retrying a database step after a dropped connection


@dataclass(frozen=True)
class Runtime:
    """What a job needs besides the database: the settings, the bucket, and threads to block in.

    Blocking work (S3 calls, Pillow) runs on this executor rather than asyncio's default one,
    so that a worker shutting down does not have to wait for an abandoned S3 call.
    """

    settings: Settings
    bucket: Bucket
    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(thread_name_prefix="collage")
    )

    async def run(self, func: Callable[..., T], /, *args: object, **kwargs: object) -> T:
        """Run a blocking call on the executor."""
        call = functools.partial(func, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self.executor, call)


@dataclass(frozen=True)
class Built:
    """A collage uploaded for a SKU."""

    url: str
    photos: int
    size: int


def runtime_of(context: JobContext) -> Runtime:
    """Use the Runtime `collage worker` passed in, or build one from the environment once."""
    given = (context.additional_context or {}).get("runtime")
    return given if isinstance(given, Runtime) else _environment_runtime()


@functools.cache
def _environment_runtime() -> Runtime:
    settings = from_environment()
    return Runtime(settings=settings, bucket=Bucket.from_settings(settings))


def backoff_s(attempt: int) -> float:
    """Wait longer after each transient failure: 15 s, 30 s, 60 s ... capped at 4 minutes."""
    return min(BACKOFF_BASE_S * 2**attempt, BACKOFF_MAX_S)


@app.task(name="collage.build", queue=QUEUE, pass_context=True)
async def build(context: JobContext, product_id: int, attempt: int = 0) -> str:
    """Build, upload and record one SKU's collage; returns what happened.

    Retries are queued by this task, not by Procrastinate's RetryStrategy: a retry of a job
    whose SKU already has a waiting job would collide with the queueing lock and strand the
    job in 'doing' (Procrastinate issues #1446, #1543).
    """
    runtime = runtime_of(context)
    started = time.monotonic()

    async def read() -> products.Product | None:
        async with connection(context) as conn:
            return await products.fetch(conn, product_id)

    product = await _retry_db(read, product_id=product_id, step="read the SKU")
    if product is None or product.image_status != "uploaded":
        status = product.image_status if product else "deleted"
        _log("collage skipped", product_id, outcome="skipped", status=status)
        metrics.record_outcome("skipped", duration_s=time.monotonic() - started)
        return "skipped"
    built: Built | None = None
    failure: Exception | None = None
    put: asyncio.Future[Built] | None = None
    try:
        made = await make_collage(runtime, product)
        put = asyncio.ensure_future(upload(runtime, made))
        built = await asyncio.shield(put)
    except asyncio.CancelledError:
        # The worker is shutting down past its grace period. An upload in flight cannot be
        # stopped: keep the SKU's lock until it has landed or failed, or a newer build could
        # finish first and be overwritten. Then queue the SKU for whoever is next.
        if put is not None and not put.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(put), LONGEST_CALL_S)
        await asyncio.shield(_enqueue_again(context, product.id))
        raise
    except Exception as exc:
        failure = exc
        if not isinstance(exc, CollageError):
            logger.exception("unexpected error while building", extra={"product_id": product.id})

    async def settle() -> products.Outcome:
        async with connection(context) as conn, conn.transaction():
            if built is not None:
                owned = await products.mark_ready(conn, product, collage_url=built.url)
                outcome = products.Outcome(
                    product_id=product.id,
                    job_id=None,
                    outcome="built" if owned else "superseded",
                    photos=built.photos,
                    bytes_out=built.size,
                )
            else:
                assert failure is not None
                outcome = await _settle_failure(conn, product, failure, attempt=attempt)
            outcome = dataclasses.replace(
                outcome, job_id=context.job.id, duration_s=time.monotonic() - started
            )
            await products.record_outcome(conn, outcome)
            return outcome

    # Writing the result again after a dropped connection is safe: the write is guarded.
    outcome = await _retry_db(settle, product_id=product.id, step="record the result")
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
    return outcome.outcome


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


async def _retry_db(step_call: Callable[[], Awaitable[T]], *, product_id: int, step: str) -> T:
    """Run a database step again after a dropped connection or a restart, for a minute at most.

    Without this, a connection killed under a build would fail the job and leave its SKU
    'uploaded' with no job until the next sweep.
    """
    deadline = time.monotonic() + DB_RETRY_FOR_S
    delay = 0.1
    while True:
        try:
            return await step_call()
        except psycopg.OperationalError as exc:  # includes PoolTimeout and AdminShutdown
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


def connection(context: JobContext) -> AbstractAsyncContextManager[AsyncConnection]:
    """Borrow a connection from the app's pool (the transaction-mode URL)."""
    return context.app.connector.pool.connection()  # type: ignore[attr-defined, no-any-return]


async def _enqueue_again(context: JobContext, product_id: int) -> None:
    async with connection(context) as conn:
        await products.enqueue(conn, product_id)
    _log("collage interrupted; queued again", product_id, outcome="interrupted")
    metrics.record_outcome("interrupted", duration_s=0.0)


def _log(message: str, product_id: int, **fields: object) -> None:
    logger.info(message, extra={"action": "build_collage", "product_id": product_id, **fields})
