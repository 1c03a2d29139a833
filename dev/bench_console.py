"""The console's page times at production scale: `bin/bench-pipeline --console`.

Seeds a throwaway database with 1,000,000 SKUs (100,000 of them waiting in the queue, 10,000 in
'error'), 14 days of finished jobs and outcomes, then times every page of the web console end
to end (routing, SQL, templates) through Starlette's test client, first without the indexes
of migrations/009_console_indexes.sql, then with them.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from importlib import resources

import psycopg
from starlette.testclient import TestClient

from collage import db
from collage.db import failures, jobs, migrate, skus
from collage.settings import Settings
from collage.web.app import create_app
from dev import sandbox

ERROR_CLASSES = (
    "OriginalMissing",
    "PhotoUnreadable",
    "ForeignUrl",
    "TooLarge",
    "BadImageUrls",
    "KeyTaken",
    "OverBudget",
    "UnsafeKey",
)
CONSOLE_MIGRATION = "009_console_indexes.sql"


def seed(dsn: str, *, skus: int, waiting: int, errors: int) -> dict[str, int]:
    """Fill a migrated database with `skus` SKUs as a busy staging holds them; return samples."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        # As the downloader's rows arrive over months: the trigger would queue each one.
        conn.execute("ALTER TABLE raw_products DISABLE TRIGGER USER")
        conn.execute(
            """
            INSERT INTO raw_products (external_id, brand, image_urls, image_status, collage_url,
                                      error_message, upload_generation, uploaded_at, updated_at)
            SELECT 'E' || n, 'brand-' || lpad((n %% 50)::text, 2, '0'),
                   jsonb_build_array('s3://bench/originals/' || n || '/1.jpg',
                                     's3://bench/originals/' || n || '/2.jpg',
                                     's3://bench/originals/' || n || '/3.jpg',
                                     's3://bench/originals/' || n || '/4.jpg'),
                   s.status,
                   CASE WHEN s.status = 'collage_ready' THEN
                       'https://bench.s3.example/collages/brand-' || lpad((n %% 50)::text, 2, '0')
                       || '/E' || n || '.jpg' END,
                   CASE WHEN s.status = 'error' THEN
                       'photo 1 (originals/' || n || '/1.jpg) cannot be read: broken' END,
                   1, now() - n * interval '1 second', now() - n * interval '1 second'
              FROM generate_series(1, %(skus)s) n,
                   LATERAL (SELECT CASE WHEN n <= %(waiting)s THEN 'uploaded'
                                        WHEN n <= %(waiting)s + %(errors)s THEN 'error'
                                        WHEN n %% 100 = 0 THEN 'new'
                                        ELSE 'collage_ready' END AS status) s
            """,
            {"skus": skus, "waiting": waiting, "errors": errors},
        )
        conn.execute("ALTER TABLE raw_products ENABLE TRIGGER USER")
        # The waiting builds, queued by the project's own function (its events with them).
        conn.execute(
            "SELECT count(collage_enqueue(id, 0, NULL, 1)) FROM raw_products"
            " WHERE image_status = 'uploaded'"
        )
        # Two weeks of finished builds: one succeeded job and one outcome per SKU built lately.
        conn.execute(
            """
            INSERT INTO procrastinate_jobs (queue_name, task_name, priority, lock, args, status)
            SELECT 'collage', 'collage.build', 0, 'product:' || id,
                   jsonb_build_object('product_id', id, 'attempt', 0, 'generation', 1),
                   'succeeded'
              FROM raw_products WHERE image_status IN ('collage_ready', 'error')
               AND id <= %(finished)s
            """,
            {"finished": waiting + errors + 300_000},
        )
        conn.execute(
            """
            INSERT INTO collage_outcomes (product_id, job_id, outcome, error_class, message,
                                          photos, bytes_out, duration_s, finished_at)
            SELECT (j.args ->> 'product_id')::bigint, j.id,
                   CASE WHEN p.image_status = 'error' THEN 'error' ELSE 'built' END,
                   CASE WHEN p.image_status = 'error' THEN (%(classes)s::text[])[1 + p.id %% 8]
                   END,
                   p.error_message, 4, 2500000, 0.8,
                   -- spread over the 14 days kept, about 900 an hour
                   now() - ((j.id * 7919) %% 1209600) * interval '1 second'
              FROM procrastinate_jobs j JOIN raw_products p
                   ON p.id = (j.args ->> 'product_id')::bigint
             WHERE j.status = 'succeeded'
            """,
            {"classes": list(ERROR_CLASSES)},
        )
        conn.execute(
            "INSERT INTO collage_outcomes (product_id, outcome, error_class, message, finished_at)"
            " SELECT id, 'retry', 'Transient', 'S3 answered 503', updated_at"
            " FROM raw_products WHERE image_status = 'collage_ready' AND id % 50 = 0"
        )
        conn.execute("INSERT INTO procrastinate_workers (last_heartbeat) VALUES (now()), (now())")
        conn.execute("VACUUM ANALYZE")
        samples = conn.execute(
            "SELECT (SELECT min(id) FROM raw_products WHERE image_status = 'uploaded') AS waiting,"
            " (SELECT min(id) FROM raw_products WHERE image_status = 'error') AS error,"
            " (SELECT max(id) FROM raw_products WHERE image_status = 'collage_ready') AS ready"
        ).fetchone()
        assert samples
        return {"waiting": samples[0], "error": samples[1], "ready": samples[2]}


def _console_statements() -> list[str]:
    text = resources.files("collage.migrations").joinpath(CONSOLE_MIGRATION).read_text()
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    return [s.strip() for s in body.split(";") if s.strip()]


def _console_indexes(dsn: str) -> list[str]:
    """The names of the indexes migrations/009 builds."""
    return [s.split("IF NOT EXISTS", 1)[1].split()[0] for s in _console_statements()]


def drop_console_indexes(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name in _console_indexes(dsn):
            conn.execute(f"DROP INDEX IF EXISTS {name}")


def build_console_indexes(dsn: str) -> float:
    """Build 009's indexes as `collage migrate` does (CONCURRENTLY); return the seconds."""
    start = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in _console_statements():
            conn.execute(statement)
        conn.execute("ANALYZE raw_products")
    return time.perf_counter() - start


def pages(samples: dict[str, int]) -> list[tuple[str, str]]:
    """Every page of the console, as an operator opens them."""
    return [
        ("overview (summary, chart, errors, latest collages)", "/"),
        ("SKU page: waiting", f"/sku/{samples['waiting']}"),
        ("SKU page: error", f"/sku/{samples['error']}"),
        ("SKU page: collage_ready", f"/sku/{samples['ready']}"),
        ("search by id", f"/search?q={samples['ready']}"),
        (
            "search by brand/external_id",
            f"/search?q=brand-{samples['ready'] % 50:02d}/E{samples['ready']}",
        ),
        ("search by external_id alone", f"/search?q=E{samples['ready']}"),
        ("gallery (48 latest collages)", "/gallery"),
        ("/healthz", "/healthz"),
    ]


def time_pages(
    settings: Settings, samples: dict[str, int], *, rounds: int
) -> dict[str, list[float]]:
    """Milliseconds each page took, `rounds` times, after one warm-up request."""
    timings: dict[str, list[float]] = {}
    with TestClient(create_app(settings), follow_redirects=False) as client:
        for label, path in pages(samples):
            response = client.get(path)
            assert response.status_code in (200, 303), (path, response.status_code)
            timings[label] = []
            for _ in range(rounds):
                start = time.perf_counter()
                client.get(path)
                timings[label].append((time.perf_counter() - start) * 1000)
    return timings


def time_queries(dsn: str, *, rounds: int) -> dict[str, list[float]]:
    """Milliseconds of each query the overview makes, for where a slow page spends its time."""
    queries: dict[str, Callable[[psycopg.Connection], object]] = {
        "summary (collage_queue_summary)": jobs.summary,
        "throughput, 24 h": failures.throughput,
        "error groups": failures.error_groups,
        "latest collages": skus.latest_collages,
    }
    timings: dict[str, list[float]] = {}
    with db.connect_dicts(dsn) as conn:
        for label, query in queries.items():
            query(conn)
            timings[label] = []
            for _ in range(rounds):
                start = time.perf_counter()
                query(conn)
                timings[label].append((time.perf_counter() - start) * 1000)
    return timings


def report(
    admin_dsn: str, *, skus: int = 1_000_000, waiting: int = 100_000, rounds: int = 20
) -> list[str]:
    """Seed, time every page without and with 009's indexes; return the Markdown report."""
    dsn = sandbox.create_database(admin_dsn, prefix="collage_bench_console")
    try:
        migrate.apply(dsn)
        started = time.perf_counter()
        samples = seed(dsn, skus=skus, waiting=waiting, errors=skus // 100)
        seeded = time.perf_counter() - started
        settings = Settings(
            db_url=dsn,
            db_session_url=dsn,
            s3_endpoint="http://127.0.0.1:9",  # the pages read no object; previews do
            s3_access_key=sandbox.S3_KEY,
            s3_secret_key=sandbox.S3_KEY,
            s3_bucket="bench",
        )
        drop_console_indexes(dsn)
        before = time_pages(settings, samples, rounds=rounds)
        built = build_console_indexes(dsn)
        after = time_pages(settings, samples, rounds=rounds)
        queries = time_queries(dsn, rounds=rounds)
    finally:
        sandbox.drop_database(admin_dsn, dsn)
    report = [
        f"| console page, {skus:,} SKUs, {waiting:,} waiting jobs ({rounds} requests each, ms)"
        f" | without 009 p50 | max | with 009 p50 | max |",
        "|---|---|---|---|---|",
    ]
    for label, values in after.items():
        old = before[label]
        report.append(
            f"| {label} | {statistics.median(old):.1f} | {max(old):.1f} |"
            f" **{statistics.median(values):.1f}** | {max(values):.1f} |"
        )
    report += ["", "| what the overview asks (ms) | p50 | max |", "|---|---|---|"]
    for label, values in queries.items():
        report.append(f"| {label} | {statistics.median(values):.1f} | {max(values):.1f} |")
    report += [
        "",
        f"Seeding took {seeded:.0f} s; building 009's indexes CONCURRENTLY on the seeded table"
        f" took {built:.1f} s.",
    ]
    return report
