"""SQL on the queue: its state, what runs, what stalls, a SKU's jobs, the workers' heartbeats.

Synchronous (the CLI, the console, metrics) but for pickup_delay_s (a worker middleware); one
statement per call, through the transaction pool.
"""

from __future__ import annotations

import psycopg

from collage.constants import BUILD_TASK, QUEUE, STALLED_WORKER_S, sku_lock
from collage.db.connect import Row


def summary(conn: psycopg.Connection[Row], *, timeout_s: float | None = None) -> Row:
    """Counts by status, the oldest waiting job's age, stalled jobs, live workers."""
    with conn.transaction():
        if timeout_s is not None:
            # Local to this transaction: a plain SET would stay on a transaction-pool connection.
            conn.execute(
                "SELECT set_config('statement_timeout', %s, true)", [f"{int(timeout_s * 1000)}ms"]
            )
        row = conn.execute("SELECT * FROM collage_queue_summary").fetchone()
    return dict(row or {})


async def pickup_delay_s(conn: psycopg.AsyncConnection, job_id: int) -> float | None:
    """Seconds from a job being due to now (its start, when called as it starts)."""
    cur = await conn.execute(
        "SELECT extract(epoch FROM now() - greatest(e.at, j.scheduled_at))"
        " FROM procrastinate_jobs j JOIN procrastinate_events e ON e.job_id = j.id"
        " WHERE j.id = %s AND e.type = 'deferred'",
        [job_id],
    )
    row = await cur.fetchone()
    return float(row[0]) if row and row[0] is not None else None


def running(conn: psycopg.Connection[Row], *, limit: int = 20) -> list[Row]:
    """Jobs being built now, longest-running first."""
    # From the running jobs, not the per-SKU view: that would read every product first.
    return conn.execute(
        "SELECT p.id AS product_id, p.brand, p.external_id, j.id AS job_id,"
        " (j.args ->> 'attempt')::int AS attempt,"
        " now() - (SELECT max(e.at) FROM procrastinate_events e"
        "          WHERE e.job_id = j.id AND e.type = 'started') AS running_for"
        " FROM procrastinate_jobs j"
        " JOIN raw_products p ON p.id = (j.args ->> 'product_id')::bigint"
        " WHERE j.status = 'doing' AND j.task_name = %s"
        " ORDER BY running_for DESC NULLS LAST LIMIT %s",
        [BUILD_TASK, limit],
    ).fetchall()


def stalled(conn: psycopg.Connection[Row]) -> list[Row]:
    """Running jobs whose worker has stopped sending heartbeats."""
    return conn.execute(
        "SELECT j.id AS job_id, (j.args ->> 'product_id')::bigint AS product_id, j.worker_id,"
        " w.last_heartbeat FROM procrastinate_jobs j"
        " LEFT JOIN procrastinate_workers w ON w.id = j.worker_id"
        " WHERE j.status = 'doing' AND j.queue_name = %s"
        " AND (w.id IS NULL OR w.last_heartbeat < now() - %s * interval '1 second')",
        [QUEUE, STALLED_WORKER_S],
    ).fetchall()


def history(conn: psycopg.Connection[Row], product_id: int) -> list[Row]:
    """Every job for a SKU with its times, oldest first, and what each attempt ended in."""
    return conn.execute(
        """
        SELECT j.id AS job_id, j.task_name, j.status::text AS status,
               (j.args ->> 'attempt')::int AS attempt,
               min(e.at) FILTER (WHERE e.type = 'deferred') AS queued_at,
               max(e.at) FILTER (WHERE e.type = 'started') AS started_at,
               max(e.at) FILTER (WHERE e.type IN ('succeeded', 'failed', 'aborted', 'cancelled'))
                   AS finished_at,
               (SELECT o.outcome FROM collage_outcomes o WHERE o.job_id = j.id
                 ORDER BY o.id DESC LIMIT 1) AS outcome,
               (SELECT o.message FROM collage_outcomes o WHERE o.job_id = j.id
                 ORDER BY o.id DESC LIMIT 1) AS message
          FROM procrastinate_jobs j
          LEFT JOIN procrastinate_events e ON e.job_id = j.id
         WHERE j.lock = %s
         GROUP BY j.id ORDER BY j.id
        """,
        [sku_lock(product_id)],
    ).fetchall()


def heartbeat_age_s(conn: psycopg.Connection[Row]) -> float | None:
    """Seconds since the freshest worker heartbeat, or None when no worker is registered."""
    row = conn.execute(
        "SELECT extract(epoch FROM now() - max(last_heartbeat)) AS age FROM procrastinate_workers"
    ).fetchone()
    return float(row["age"]) if row and row["age"] is not None else None
