"""SQL on collage_outcomes (one row per finished attempt) and scraper_logs; bound parameters only.

Like products.py, every function takes an open async connection and leaves the transaction to
its caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection, sql
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


async def log_batch(conn: AsyncConnection) -> dict[str, Any] | None:
    """Write one scraper_logs row for the SKUs finished since the previous one; None if none.

    The batch runs from the first of those builds to the last: records_fetched counts the SKUs
    taken, records_new those built, records_errors those marked 'error'. Columns a staging table
    has beside them are left to their defaults, but for records_updated (rows this batch changed)
    and error_details (failures by class), written where they exist.
    """
    extra = await _extra_log_columns(conn)
    names = sql.SQL("").join(sql.SQL(", ") + sql.Identifier(c) for c in extra)
    values = sql.SQL("").join(sql.SQL(", ") + _EXTRA_VALUES[c] for c in extra)
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        _LOG_BATCH.format(extra_columns=names, extra_values=values), {"name": SCRAPER_NAME}
    )
    row = await cur.fetchone()
    return dict(row) if row else None


_EXTRA_VALUES = {
    "records_updated": sql.SQL("new + errors"),
    "error_details": sql.SQL("details"),
}

_LOG_BATCH = sql.SQL("""
WITH since AS (
    SELECT coalesce(max(completed_at), '-infinity'::timestamptz) AS t
      FROM scraper_logs WHERE scraper_name = %(name)s
), done AS (
    SELECT o.* FROM collage_outcomes o, since
     WHERE o.finished_at > since.t AND o.finished_at <= now() AND o.outcome IN ('built', 'error')
), batch AS (
    SELECT count(DISTINCT product_id) AS fetched,
           count(DISTINCT product_id) FILTER (WHERE outcome = 'built') AS new,
           count(DISTINCT product_id) FILTER (WHERE outcome = 'error') AS errors,
           min(finished_at - coalesce(duration_s, 0) * interval '1 second') AS started,
           max(finished_at) AS completed,
           (SELECT jsonb_object_agg(error_class, n) FROM (
                SELECT coalesce(error_class, 'unknown') AS error_class,
                       count(DISTINCT product_id) AS n
                  FROM done WHERE outcome = 'error' GROUP BY 1) c) AS details
      FROM done
)
INSERT INTO scraper_logs (scraper_name, status, records_fetched, records_new, records_errors,
                          started_at, completed_at, duration_seconds{extra_columns})
SELECT %(name)s,
       CASE WHEN errors = 0 THEN 'success' WHEN new = 0 THEN 'error' ELSE 'partial' END,
       fetched, new, errors, started, completed, extract(epoch FROM completed - started)
       {extra_values}
  FROM batch WHERE fetched > 0
RETURNING status, records_fetched, records_new, records_errors, duration_seconds
""")


async def _extra_log_columns(conn: AsyncConnection) -> list[str]:
    cur = await conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass('scraper_logs')"
        " AND attname = ANY(%s) AND NOT attisdropped ORDER BY attname",
        [list(_EXTRA_VALUES)],
    )
    return [str(row[0]) for row in await cur.fetchall()]
