"""What operators do to SKUs: requeue, cancel, pause and resume; one statement a batch.

Synchronous, for the CLI and the web console, through the transaction pool. Every change goes
through raw_products (the trigger queues) or the jobs' own columns, never around them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg

from collage.constants import BUILD_TASK, LOCK_PREFIX, QUEUE
from collage.text import shown, unsafe

Row = dict[str, Any]
EVERYTHING = "*"  # the scope of a pause of every brand
CANCELLED = "cancelled"  # a state of the project's (collage_cancellations), not an image_status


@dataclass(frozen=True, kw_only=True)
class SkuFilter:
    """Which SKUs an operator means; all given conditions must hold."""

    brand: str | None = None
    ids: Sequence[int] = ()
    error_like: str | None = None  # a literal piece of the message, any case
    error_pattern: str | None = None  # a LIKE pattern, for who wants % and _
    older_than: timedelta | None = None
    limit: int | None = None

    @property
    def is_empty(self) -> bool:
        return not (
            self.brand
            or self.ids
            or self.error_like
            or self.error_pattern
            or self.older_than
            or self.limit
        )

    def params(self) -> dict[str, Any]:
        return {
            "brand": self.brand,
            "ids": list(self.ids),
            "like": _containing(self.error_like),
            "pattern": self.error_pattern,
            "older": self.older_than,
            "limit": self.limit,
        }


_MATCHES = """
           AND (%(brand)s::text IS NULL OR p.brand = %(brand)s)
           AND (cardinality(%(ids)s::bigint[]) = 0 OR p.id = ANY(%(ids)s))
           AND (%(like)s::text IS NULL OR p.error_message ILIKE %(like)s)
           AND (%(pattern)s::text IS NULL OR p.error_message ILIKE %(pattern)s)
"""


def errored(conn: psycopg.Connection[Row], where: SkuFilter, *, status: str = "error") -> list[Row]:
    """List the SKUs 'error' or cancelled (`status`) that a filter selects, oldest first."""
    if status == CANCELLED:
        query = (
            "SELECT p.id AS product_id, p.brand, p.external_id, p.error_message,"
            " c.cancelled_at AS updated_at, c.cancelled_by"
            " FROM raw_products p JOIN collage_cancellations c"
            "   ON c.product_id = p.id AND c.generation = p.upload_generation"
            " WHERE p.image_status = 'uploaded'" + _MATCHES + "   AND (%(older)s::interval IS NULL"
            " OR c.cancelled_at < now() - %(older)s::interval)"
            " ORDER BY c.cancelled_at, p.id LIMIT %(limit)s"
        )
        return conn.execute(query, where.params()).fetchall()
    return conn.execute(
        "SELECT p.id AS product_id, p.brand, p.external_id, p.error_message, p.updated_at"
        " FROM raw_products p WHERE p.image_status = 'error'"
        + _MATCHES
        + "   AND (%(older)s::interval IS NULL OR p.updated_at < now() - %(older)s::interval)"
        " ORDER BY p.updated_at, p.id LIMIT %(limit)s",
        where.params(),
    ).fetchall()


def requeue(
    conn: psycopg.Connection[Row],
    ids: Sequence[int],
    *,
    status: str = "error",
    batch: int = 500,
) -> Iterator[int]:
    """Queue SKUs still 'error' (back to 'uploaded': the trigger queues them) or cancelled.

    In batches; yields how many each batch requeued. Their automatic-retry count starts again.
    """
    for start in range(0, len(ids), batch):
        chunk = list(ids[start : start + batch])
        with conn.transaction():
            if status == CANCELLED:
                cur = conn.execute(_UNCANCEL, [chunk])
            else:
                cur = conn.execute(
                    "UPDATE raw_products SET image_status = 'uploaded', error_message = NULL,"
                    " updated_at = now() WHERE id = ANY(%s) AND image_status = 'error'",
                    [chunk],
                )
            conn.execute("DELETE FROM collage_retry_rounds WHERE product_id = ANY(%s)", [chunk])
        yield cur.rowcount


# The cancellations of these SKUs' current uploads end, and their builds are queued again.
_UNCANCEL = """
WITH ended AS (
    DELETE FROM collage_cancellations c USING raw_products p
     WHERE c.product_id = ANY(%s) AND p.id = c.product_id
       AND p.upload_generation = c.generation AND p.image_status = 'uploaded'
    RETURNING c.product_id
)
SELECT product_id, collage_enqueue(product_id) FROM ended
"""


def waiting(conn: psycopg.Connection[Row], where: SkuFilter) -> list[Row]:
    """List the 'uploaded' SKUs whose build waits (not running) that a filter selects."""
    return conn.execute(
        "SELECT p.id AS product_id, p.brand, p.external_id, p.uploaded_at,"
        " j.id AS job_id, j.scheduled_at = 'infinity' AS paused"
        " FROM raw_products p JOIN procrastinate_jobs j"
        "   ON j.queueing_lock = %(prefix)s || p.id AND j.status = 'todo'"
        " WHERE p.image_status = 'uploaded'"
        + _MATCHES
        + "   AND (%(older)s::interval IS NULL OR p.uploaded_at < now() - %(older)s::interval)"
        "   AND NOT EXISTS (SELECT 1 FROM procrastinate_jobs d"
        "                    WHERE d.lock = %(prefix)s || p.id AND d.status = 'doing')"
        " ORDER BY p.uploaded_at, p.id LIMIT %(limit)s",
        {**where.params(), "prefix": LOCK_PREFIX},
    ).fetchall()


def cancel(
    conn: psycopg.Connection[Row], ids: Sequence[int], *, by: str, batch: int = 500
) -> Iterator[int]:
    """Cancel the waiting builds of these SKUs' current uploads (collage_cancellations).

    The rows are not touched: their image_status stays 'uploaded', whatever values the table
    allows. A build already running is left to finish; a new upload ends the cancellation.
    Yields how many each batch cancelled.
    """
    for start in range(0, len(ids), batch):
        chunk = list(ids[start : start + batch])
        cur = conn.execute(
            """
            WITH chosen AS (
                SELECT p.id, p.upload_generation FROM raw_products p
                 WHERE p.id = ANY(%(ids)s) AND p.image_status = 'uploaded'
                   AND NOT EXISTS (SELECT 1 FROM procrastinate_jobs d
                                    WHERE d.lock = %(prefix)s || p.id AND d.status = 'doing')
                   FOR UPDATE OF p
            ), jobs AS (
                UPDATE procrastinate_jobs j SET status = 'cancelled'
                  FROM chosen WHERE j.queueing_lock = %(prefix)s || chosen.id
                   AND j.status = 'todo' AND j.task_name = %(task)s
            )
            INSERT INTO collage_cancellations (product_id, generation, cancelled_by)
            SELECT id, upload_generation, %(by)s FROM chosen
                ON CONFLICT (product_id) DO UPDATE
               SET generation = EXCLUDED.generation, cancelled_by = EXCLUDED.cancelled_by,
                   cancelled_at = now()
            """,
            {"ids": chunk, "prefix": LOCK_PREFIX, "task": BUILD_TASK, "by": by},
        )
        yield cur.rowcount


class BadScope(ValueError):
    """A pause or resume names no brand it could mean exactly."""


def pause_scope(brand: str | None, *, every: bool) -> str:
    """The scope a pause names: one brand, exactly as rows spell it, or every brand when asked.

    An empty brand or '*' never means "everything" by accident: that takes `every`.
    """
    if every:
        if brand is not None:
            raise BadScope("name one brand or every brand, not both")
        return EVERYTHING
    if brand is None:
        raise BadScope("name a brand, or say every brand")
    if not brand.strip():
        raise BadScope("a brand cannot be empty")
    if brand == EVERYTHING:
        raise BadScope("'*' is not a brand; to pause every brand, say so")
    if unsafe(brand):
        raise BadScope(f"a brand cannot hold control characters: {shown(brand)}")
    return brand


def scope_name(scope: str) -> str:
    """A pause's scope as people read it: 'every brand', or the brand quoted and escaped."""
    return "every brand" if scope == EVERYTHING else f"brand '{shown(scope)}'"


def pause(conn: psycopg.Connection[Row], scope: str, *, by: str, reason: str | None = None) -> int:
    """Pause building one brand (or every brand, scope '*'); return the waiting builds held back.

    Uploads keep being queued; running builds finish; the pause outlives worker restarts.
    `scope` comes from pause_scope.
    """
    with conn.transaction():
        conn.execute(
            "INSERT INTO collage_pauses (scope, paused_by, reason) VALUES (%s, %s, %s)"
            " ON CONFLICT (scope) DO UPDATE SET paused_by = EXCLUDED.paused_by,"
            " reason = EXCLUDED.reason",
            [scope, by, reason],
        )
        cur = conn.execute(
            "UPDATE procrastinate_jobs SET scheduled_at = 'infinity'"
            " WHERE status = 'todo' AND queue_name = %(queue)s AND task_name = %(task)s"
            "   AND (%(scope)s = '*' OR args ->> 'brand' = %(scope)s)"
            "   AND scheduled_at IS DISTINCT FROM 'infinity'",
            {"queue": QUEUE, "task": BUILD_TASK, "scope": scope},
        )
        return cur.rowcount


def resume(conn: psycopg.Connection[Row], scope: str) -> int | None:
    """End a pause; return how many held-back builds are due again (workers poll every second).

    None when no pause has this exact scope. A brand paused on its own stays paused when every
    brand is resumed, and the reverse.
    """
    with conn.transaction():
        ended = conn.execute("DELETE FROM collage_pauses WHERE scope = %s", [scope])
        if not ended.rowcount:
            return None
        cur = conn.execute(
            "UPDATE procrastinate_jobs SET scheduled_at = NULL"
            " WHERE status = 'todo' AND queue_name = %(queue)s AND task_name = %(task)s"
            "   AND scheduled_at = 'infinity' AND NOT collage_paused(args ->> 'brand')",
            {"queue": QUEUE, "task": BUILD_TASK},
        )
        return cur.rowcount


def pauses(conn: psycopg.Connection[Row]) -> list[Row]:
    """Every pause in force, with who paused it and how many builds it holds back."""
    held = """
        SELECT count(*) FROM procrastinate_jobs j
         WHERE j.status = 'todo' AND j.scheduled_at = 'infinity' AND j.task_name = %s
           AND (s.scope = '*' OR j.args ->> 'brand' = s.scope)
    """
    query = f"SELECT s.*, ({held}) AS held FROM collage_pauses s ORDER BY s.scope"
    return conn.execute(query, [BUILD_TASK]).fetchall()


def _containing(text: str | None) -> str | None:
    """A LIKE pattern that matches `text` literally anywhere (a pasted message may hold % or _)."""
    if text is None:
        return None
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"
