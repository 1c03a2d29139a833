"""SQL on collage_outcomes (one row per finished attempt) and scraper_logs; bound parameters only.

Like products.py, every function takes an open async connection and leaves the transaction to
its caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

SCRAPER_NAME = "collage_worker"


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
    # The JPEG quality of a built collage: below COLLAGE_QUALITY only to fit COLLAGE_MAX_BYTES.
    quality: int | None = None


async def record(conn: AsyncConnection, outcome: Outcome) -> None:
    """Append one attempt's result to the ledger."""
    await conn.execute(
        "INSERT INTO collage_outcomes (product_id, job_id, outcome, error_class, message,"
        " photos, bytes_out, duration_s, quality) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
        [
            outcome.product_id,
            outcome.job_id,
            outcome.outcome,
            outcome.error_class,
            outcome.message,
            outcome.photos,
            outcome.bytes_out,
            outcome.duration_s,
            outcome.quality,
        ],
    )


async def prune(conn: AsyncConnection, *, older_than_hours: int) -> None:
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
