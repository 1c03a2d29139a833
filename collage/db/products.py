"""SQL on raw_products for the worker: read a SKU, claim it for a result, mark it, queue it.

Every function takes an open async connection and leaves the transaction to its caller (a
connection borrowed from the pool commits when it is returned).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection

from collage.constants import HOURLY_RETRY_SETTING, LOCK_PREFIX, QUEUE, sku_lock

MESSAGE_CHARS = 2000  # error_message is cut to this: one line an operator reads, not a dump


@dataclass(frozen=True)
class Product:
    """A SKU as the job read it when it started."""

    id: int
    external_id: str
    brand: str
    image_urls: Any  # as stored: the job checks that it is a list of URLs
    image_status: str | None
    generation: int  # upload_generation: one more at every write that marks the SKU 'uploaded'
    uploaded_at: datetime | None
    paused: bool = False  # its brand, or every brand, is paused (collage pause)


async def fetch(conn: AsyncConnection, product_id: int) -> Product | None:
    """Read one SKU as it is now."""
    cur = await conn.execute(
        "SELECT id, external_id, brand, image_urls, image_status, upload_generation, uploaded_at,"
        " collage_paused(brand) FROM raw_products WHERE id = %s",
        [product_id],
    )
    row = await cur.fetchone()
    return Product(*row) if row else None


async def enqueue(
    conn: AsyncConnection,
    product_id: int,
    *,
    attempt: int = 0,
    delay_s: float | None = None,
    generation: int | None = None,
) -> int | None:
    """Queue a build through the same function the trigger uses; None if one already waits.

    Without a generation, the SKU's current one is built.
    """
    cur = await conn.execute(
        "SELECT collage_enqueue(%s, %s, %s * interval '1 second', %s)",
        [product_id, attempt, delay_s, generation],
    )
    row = await cur.fetchone()
    return row[0] if row else None


async def release(conn: AsyncConnection, product_ids: list[int]) -> int:
    """Make these SKUs' waiting builds due now (held back while S3 refused the worker).

    A build a pause holds (scheduled at 'infinity') stays held: the pause is the operator's.
    """
    if not product_ids:
        return 0
    cur = await conn.execute(
        "UPDATE procrastinate_jobs SET scheduled_at = now()"
        " WHERE status = 'todo' AND queue_name = %s AND scheduled_at > now()"
        " AND scheduled_at <> 'infinity' AND lock = ANY(%s)",
        [QUEUE, [sku_lock(product_id) for product_id in product_ids]],
    )
    return cur.rowcount


async def enqueue_unqueued(conn: AsyncConnection, *, limit: int) -> list[int]:
    """Queue up to `limit` 'uploaded' SKUs no job covers, oldest first (the sweep, adoption).

    Rows written before the triggers existed, or while they were off. Cancelled SKUs stay out.
    Brands interleave by the fair-share tags collage_enqueue gives, whatever the order here.
    """
    cur = await conn.execute(
        """
        WITH lost AS (
            SELECT p.id FROM raw_products p
             WHERE p.image_status = 'uploaded'
               AND NOT EXISTS (SELECT 1 FROM procrastinate_jobs j
                                WHERE j.queueing_lock = %(prefix)s || p.id AND j.status = 'todo')
               AND NOT EXISTS (SELECT 1 FROM procrastinate_jobs j
                                WHERE j.lock = %(prefix)s || p.id AND j.status = 'doing')
               AND NOT EXISTS (SELECT 1 FROM collage_cancellations c
                                WHERE c.product_id = p.id AND c.generation = p.upload_generation)
             ORDER BY p.updated_at, p.id LIMIT %(limit)s
        )
        SELECT id FROM lost WHERE collage_enqueue(id) IS NOT NULL
        """,
        {"prefix": LOCK_PREFIX, "limit": limit},
    )
    return [row[0] for row in await cur.fetchall()]


async def requeue_errored(
    conn: AsyncConnection, *, limit: int, cooldown_s: float, max_rounds: int
) -> list[int]:
    """Set SKUs this project marked 'error' back to 'uploaded', a few rounds at most.

    Only errors it wrote itself (the message is one of its outcomes for that SKU): errors another
    worker left, months ago perhaps, stay as they are until someone requeues them.
    """
    params = {
        "cooldown": cooldown_s,
        "max_rounds": max_rounds,
        "limit": limit,
        "message_chars": MESSAGE_CHARS,
    }
    async with conn.transaction():
        # Tells the trigger this is a retry, not a new upload: the rounds count must stay.
        await conn.execute("SELECT set_config(%s, 'on', true)", [HOURLY_RETRY_SETTING])
        cur = await conn.execute(_REQUEUE_ERRORED, params)
        return sorted(row[0] for row in await cur.fetchall())


_REQUEUE_ERRORED = """
WITH due AS (
    SELECT p.id FROM raw_products p
      LEFT JOIN collage_retry_rounds r ON r.product_id = p.id
     WHERE p.image_status = 'error'
       AND p.updated_at < now() - %(cooldown)s * interval '1 second'
       AND coalesce(r.rounds, 0) < %(max_rounds)s
       AND EXISTS (SELECT 1 FROM collage_outcomes o
                    WHERE o.product_id = p.id AND o.outcome = 'error'
                      AND left(o.message, %(message_chars)s) = p.error_message)
     ORDER BY p.updated_at, p.id
     LIMIT %(limit)s
       FOR UPDATE OF p SKIP LOCKED
), counted AS (
    INSERT INTO collage_retry_rounds (product_id, rounds)
    SELECT id, 1 FROM due
    ON CONFLICT (product_id) DO UPDATE
       SET rounds = collage_retry_rounds.rounds + 1, last_retry_at = now()
)
UPDATE raw_products p SET image_status = 'uploaded', updated_at = now()
  FROM due WHERE p.id = due.id
RETURNING p.id
"""
