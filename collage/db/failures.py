"""SQL on what failed: SKUs in 'error' or waiting out a retry, grouped by class; throughput.

What `collage jobs` and the console's overview read. The console's queries are bounded: every
page must answer within 200 ms at 1,000,000 SKUs and 100,000 waiting jobs (bin/bench-pipeline
--console measures each).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import psycopg

from collage.constants import BUILD_TASK, QUEUE
from collage.db.connect import Row


@contextlib.contextmanager
def _bounded(conn: psycopg.Connection[Row]) -> Iterator[None]:
    """Run a console query without JIT and for 5 s at most, in a transaction of its own.

    PostgreSQL compiles a query as costly as the error groups (10,000 SKUs in 'error') with its
    JIT, which takes longer than the query (30 ms against 45 ms measured). Both settings are
    local to the transaction: a plain SET would stay on a transaction-pool connection.
    """
    with conn.transaction():
        conn.execute(
            "SELECT set_config('jit', 'off', true), set_config('statement_timeout', '5s', true)"
        )
        yield


def recent_failures(conn: psycopg.Connection[Row], *, limit: int = 10) -> list[Row]:
    """The latest failed attempts with their error."""
    return conn.execute(
        "SELECT o.finished_at, o.product_id, p.brand, p.external_id, o.outcome, o.error_class,"
        " o.message FROM collage_outcomes o LEFT JOIN raw_products p ON p.id = o.product_id"
        " WHERE o.outcome IN ('error', 'retry') ORDER BY o.id DESC LIMIT %s",
        [limit],
    ).fetchall()


def throughput(conn: psycopg.Connection[Row], *, hours: int = 24) -> list[Row]:
    """Attempts built, failed and retried in each of the last `hours` hours, oldest first."""
    return conn.execute(
        """
        WITH counted AS (
            SELECT date_trunc('hour', finished_at) AS hour,
                   count(*) FILTER (WHERE outcome = 'built') AS built,
                   count(*) FILTER (WHERE outcome = 'error') AS errors,
                   count(*) FILTER (WHERE outcome = 'retry') AS retries
              FROM collage_outcomes
             WHERE finished_at >= date_trunc('hour', now()) - (%(hours)s - 1) * interval '1 hour'
             GROUP BY 1
        )
        SELECT h.hour, coalesce(c.built, 0) AS built, coalesce(c.errors, 0) AS errors,
               coalesce(c.retries, 0) AS retries
          FROM generate_series(date_trunc('hour', now()) - (%(hours)s - 1) * interval '1 hour',
                               date_trunc('hour', now()), interval '1 hour') AS h(hour)
          LEFT JOIN counted c ON c.hour = h.hour
         ORDER BY h.hour
        """,
        {"hours": hours},
    ).fetchall()


# Each SKU that failed, with the class of its last failure: in 'error' (its last error), or
# 'uploaded' with a retry waiting its back-off (its last retry; paused builds are not retries).
_FAILED = """
    SELECT p.id, p.brand, p.external_id, p.error_message AS message, p.updated_at AS at,
           'error' AS state, coalesce(o.error_class, 'unknown') AS error_class
      FROM raw_products p
      LEFT JOIN LATERAL (
            SELECT o.error_class FROM collage_outcomes o
             WHERE o.product_id = p.id AND o.outcome = 'error'
             ORDER BY o.finished_at DESC LIMIT 1
      ) o ON true
     WHERE p.image_status = 'error'
    UNION ALL
    SELECT p.id, p.brand, p.external_id, o.message, coalesce(o.finished_at, p.updated_at),
           'retrying', coalesce(o.error_class, 'unknown')
      FROM procrastinate_jobs j
      JOIN raw_products p
        ON p.id = (j.args ->> 'product_id')::bigint AND p.image_status = 'uploaded'
      LEFT JOIN LATERAL (
            SELECT o.error_class, o.message, o.finished_at FROM collage_outcomes o
             WHERE o.product_id = p.id AND o.outcome = 'retry'
             ORDER BY o.finished_at DESC LIMIT 1
      ) o ON true
     WHERE j.queue_name = %(queue)s AND j.status = 'todo' AND j.task_name = %(task)s
       AND j.scheduled_at > now() AND j.scheduled_at <> 'infinity'
"""


def error_groups(conn: psycopg.Connection[Row], *, examples: int = 3) -> list[Row]:
    """Failed SKUs grouped by the class of their last failure, largest group first.

    Each group counts its SKUs in 'error' and those waiting for a retry, says since when, and
    shows a few examples (the latest failures).
    """
    with _bounded(conn):
        return conn.execute(
            f"""
            WITH failed AS ({_FAILED}), ranked AS (
                SELECT *,
                       row_number() OVER (PARTITION BY error_class ORDER BY at DESC, id) AS n,
                       count(*) FILTER (WHERE state = 'error')
                           OVER (PARTITION BY error_class) AS errored,
                       count(*) FILTER (WHERE state = 'retrying')
                           OVER (PARTITION BY error_class) AS retrying,
                       min(at) OVER (PARTITION BY error_class) AS oldest
                  FROM failed
            )
            SELECT error_class, errored, retrying, oldest, max(at) AS newest,
                   jsonb_agg(jsonb_build_object('product_id', id, 'brand', brand,
                                                'external_id', external_id, 'state', state,
                                                'message', message) ORDER BY n) AS examples
              FROM ranked WHERE n <= %(examples)s
             GROUP BY error_class, errored, retrying, oldest
             ORDER BY errored + retrying DESC, error_class
            """,
            {"examples": examples, "queue": QUEUE, "task": BUILD_TASK},
        ).fetchall()


def failed_of_class(
    conn: psycopg.Connection[Row], error_class: str, *, state: str, limit: int | None = None
) -> list[int]:
    """The SKUs of one error group, oldest failure first: 'error' ones or 'retrying' ones."""
    with _bounded(conn):
        rows = conn.execute(
            f"""
            SELECT id FROM ({_FAILED}) failed
             WHERE error_class = %(class)s AND state = %(state)s
             ORDER BY at, id LIMIT %(limit)s
            """,
            {
                "class": error_class,
                "state": state,
                "limit": limit,
                "queue": QUEUE,
                "task": BUILD_TASK,
            },
        ).fetchall()
    return [int(row["id"]) for row in rows]
