"""SQL on raw_products, scraper_logs and the job ledger; bound parameters only.

Every function takes an open async connection and leaves the transaction to its caller (a
connection borrowed from the pool commits when it is returned); none relies on session state,
so all work through PgBouncer's transaction pool.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from collage.constants import HOURLY_RETRY_SETTING, LOCK_PREFIX, sku_lock

SCRAPER_NAME = "collage_worker"


@dataclass(frozen=True)
class Product:
    """A SKU as the job read it when it started."""

    id: int
    external_id: str
    brand: str
    image_urls: Any  # as stored: the job checks that it is a list of URLs
    image_status: str | None
    urls_text: str | None  # image_urls as PostgreSQL prints it: what the write guard compares

    @property
    def lock(self) -> str:
        return sku_lock(self.id)


@dataclass(frozen=True)
class Outcome:
    """One finished attempt, written to collage_outcomes."""

    product_id: int
    job_id: int | None
    outcome: str  # built | error | retry | superseded
    error_class: str | None = None
    message: str | None = None
    photos: int | None = None
    bytes_out: int | None = None
    duration_s: float | None = None


async def fetch(conn: AsyncConnection, product_id: int) -> Product | None:
    """Read one SKU as it is now."""
    cur = await conn.execute(
        "SELECT id, external_id, brand, image_urls, image_status, image_urls::text"
        " FROM raw_products WHERE id = %s",
        [product_id],
    )
    row = await cur.fetchone()
    return Product(*row) if row else None


# The result is written only while the row is still the one the job read, and while no newer
# job waits for it: a re-upload during the build queues that job, which then owns the SKU.
_STILL_OURS = """
    id = %(id)s AND image_status = 'uploaded' AND image_urls::text IS NOT DISTINCT FROM %(urls)s
    AND NOT EXISTS (SELECT 1 FROM procrastinate_jobs
                     WHERE queueing_lock = %(lock)s AND status = 'todo')
"""


async def mark_ready(conn: AsyncConnection, product: Product, *, collage_url: str) -> bool:
    """Record the collage; False when a newer upload owns the SKU now."""
    cur = await conn.execute(
        "UPDATE raw_products SET collage_url = %(url)s, image_status = 'collage_ready',"
        " error_message = NULL, updated_at = now() WHERE" + _STILL_OURS,
        {**_guard(product), "url": collage_url},
    )
    if cur.rowcount:
        await conn.execute("DELETE FROM collage_retry_rounds WHERE product_id = %s", [product.id])
    return cur.rowcount == 1


async def mark_error(conn: AsyncConnection, product: Product, *, message: str) -> bool:
    """Mark the SKU broken with one line an operator can act on; False when superseded."""
    cur = await conn.execute(
        "UPDATE raw_products SET image_status = 'error', error_message = %(message)s,"
        " updated_at = now() WHERE" + _STILL_OURS,
        {**_guard(product), "message": message[:2000]},
    )
    return cur.rowcount == 1


def _guard(product: Product) -> dict[str, Any]:
    return {"id": product.id, "urls": product.urls_text, "lock": product.lock}


async def enqueue(
    conn: AsyncConnection, product_id: int, *, attempt: int = 0, delay_s: float | None = None
) -> int | None:
    """Queue a build through the same function the trigger uses; None if one already waits."""
    cur = await conn.execute(
        "SELECT collage_enqueue(%s, %s, %s * interval '1 second')", [product_id, attempt, delay_s]
    )
    row = await cur.fetchone()
    return row[0] if row else None


async def enqueue_unqueued(conn: AsyncConnection, *, limit: int) -> list[int]:
    """Queue 'uploaded' SKUs that have no waiting or running job (the safety sweep)."""
    cur = await conn.execute(
        """
        WITH lost AS (
            SELECT p.id FROM raw_products p
             WHERE p.image_status = 'uploaded'
               AND NOT EXISTS (SELECT 1 FROM procrastinate_jobs j
                                WHERE j.queueing_lock = %(prefix)s || p.id AND j.status = 'todo')
               AND NOT EXISTS (SELECT 1 FROM procrastinate_jobs j
                                WHERE j.lock = %(prefix)s || p.id AND j.status = 'doing')
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
    """Set errored SKUs back to 'uploaded' (the trigger queues them), a few rounds at most."""
    params = {"cooldown": cooldown_s, "max_rounds": max_rounds, "limit": limit}
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


async def record_outcome(conn: AsyncConnection, outcome: Outcome) -> None:
    """Append one attempt's result to the ledger."""
    await conn.execute(
        "INSERT INTO collage_outcomes (product_id, job_id, outcome, error_class, message,"
        " photos, bytes_out, duration_s) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        [
            outcome.product_id,
            outcome.job_id,
            outcome.outcome,
            outcome.error_class,
            outcome.message,
            outcome.photos,
            outcome.bytes_out,
            outcome.duration_s,
        ],
    )


async def prune_outcomes(conn: AsyncConnection, *, older_than_hours: int) -> None:
    """Forget finished attempts past retention (the finished jobs go at the same time)."""
    await conn.execute(
        "DELETE FROM collage_outcomes WHERE finished_at < now() - %s * interval '1 hour'",
        [older_than_hours],
    )


async def log_batch(conn: AsyncConnection, *, started_at: datetime) -> dict[str, Any]:
    """Write one scraper_logs row summing up the SKUs finished since the previous row."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        """
        WITH since AS (
            SELECT coalesce(max(completed_at), '-infinity'::timestamptz) AS t
              FROM scraper_logs WHERE scraper_name = %(name)s
        ), done AS (
            SELECT count(*) FILTER (WHERE outcome IN ('built', 'error')) AS fetched,
                   count(*) FILTER (WHERE outcome = 'built') AS new,
                   count(*) FILTER (WHERE outcome = 'error') AS errors
              FROM collage_outcomes, since WHERE finished_at > since.t AND finished_at <= now()
        )
        INSERT INTO scraper_logs (scraper_name, status, records_fetched, records_new,
                                  records_errors, started_at, completed_at, duration_seconds)
        SELECT %(name)s,
               CASE WHEN errors = 0 THEN 'success' WHEN new = 0 THEN 'error' ELSE 'partial' END,
               fetched, new, errors, %(started)s, now(),
               extract(epoch FROM now() - %(started)s)
          FROM done
        RETURNING status, records_fetched, records_new, records_errors
        """,
        {"name": SCRAPER_NAME, "started": started_at},
    )
    row = await cur.fetchone()
    return dict(row or {})
