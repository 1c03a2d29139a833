"""What the web console asks of the queue and the SKUs, besides what the CLI asks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import psycopg

from collage.constants import BUILD_TASK, QUEUE
from collage.inspection.queue import Row

# What collage/web's pages read, each one statement, each bounded: every page of the console
# must answer within 200 ms at 1,000,000 SKUs and 100,000 waiting jobs (bin/bench-pipeline
# --console measures it).


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


def ping(conn: psycopg.Connection[Row]) -> None:
    """Raise unless the database answers (the console's /healthz)."""
    conn.execute("SELECT 1")


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


_SEARCH_COLUMNS = "SELECT id AS product_id, brand, external_id, image_status, updated_at"
_SEARCH = {
    "id": f"{_SEARCH_COLUMNS} FROM raw_products WHERE id = %(id)s LIMIT %(limit)s",
    "brand": f"{_SEARCH_COLUMNS} FROM raw_products WHERE brand = %(brand)s"
    " AND external_id = %(ext)s ORDER BY id LIMIT %(limit)s",
    "external_id": f"{_SEARCH_COLUMNS} FROM raw_products WHERE external_id = %(ext)s"
    " ORDER BY id LIMIT %(limit)s",
}


def search_products(conn: psycopg.Connection[Row], text: str, *, limit: int = 50) -> list[Row]:
    """Find SKUs by id, BRAND/EXTERNAL_ID, or an external_id alone (any brand), exactly."""
    text = text.strip()
    if text.isascii() and text.isdigit():
        kind, params = "id", {"id": int(text) if len(text) < 19 else -1}
    elif "/" in text:
        brand, external_id = text.split("/", 1)
        kind, params = "brand", {"brand": brand.strip(), "ext": external_id.strip()}
    else:
        kind, params = "external_id", {"ext": text}
    return conn.execute(_SEARCH[kind], {**params, "limit": limit}).fetchall()


def product(conn: psycopg.Connection[Row], product_id: int) -> Row | None:
    """One SKU as the console shows it: its row, its latest job and its last error."""
    return conn.execute(
        "SELECT v.*, p.image_urls, p.upload_generation, p.uploaded_at"
        " FROM collage_sku_jobs v JOIN raw_products p ON p.id = v.product_id"
        " WHERE v.product_id = %s",
        [product_id],
    ).fetchone()


def photos_of(conn: psycopg.Connection[Row], product_id: int) -> Row | None:
    """What a SKU's previews are read from: its photo URLs, its collage and its version."""
    return conn.execute(
        "SELECT id AS product_id, brand, external_id, image_urls, image_status, collage_url,"
        " upload_generation, updated_at FROM raw_products WHERE id = %s",
        [product_id],
    ).fetchone()


def outcomes_of(conn: psycopg.Connection[Row], product_id: int, *, limit: int = 50) -> list[Row]:
    """A SKU's finished attempts, newest first."""
    return conn.execute(
        "SELECT id, job_id, outcome, error_class, message, photos, bytes_out, duration_s,"
        " finished_at FROM collage_outcomes WHERE product_id = %s"
        " ORDER BY finished_at DESC, id DESC LIMIT %s",
        [product_id, limit],
    ).fetchall()


def latest_collages(
    conn: psycopg.Connection[Row], *, limit: int = 12, before: int | None = None
) -> list[Row]:
    """The SKUs built most recently and still 'collage_ready', newest first.

    Read from the latest 'built' outcomes (the ledger's primary key, newest first), not from
    raw_products: no index orders a million SKUs by when they were built. `before` pages on.
    """
    return conn.execute(
        """
        WITH built AS (
            SELECT o.product_id, max(o.id) AS outcome_id
              FROM (SELECT product_id, id FROM collage_outcomes
                     WHERE outcome = 'built' AND (%(before)s::bigint IS NULL OR id < %(before)s)
                     ORDER BY id DESC LIMIT %(scan)s) o
             GROUP BY o.product_id
        )
        SELECT b.outcome_id, p.id AS product_id, p.brand, p.external_id, p.collage_url,
               p.upload_generation, p.updated_at, o.photos, o.bytes_out, o.finished_at
          FROM built b
          JOIN raw_products p ON p.id = b.product_id AND p.image_status = 'collage_ready'
          JOIN collage_outcomes o ON o.id = b.outcome_id
         ORDER BY b.outcome_id DESC
         LIMIT %(limit)s
        """,
        {"limit": limit, "scan": limit * 4, "before": before},
    ).fetchall()
