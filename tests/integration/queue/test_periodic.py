"""The periodic tasks, run as real jobs or called directly against a real database."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import psycopg

from collage.queue import periodic
from collage.settings import Settings
from dev import sandbox
from tests.support.skus import StartWorker, add_product, final_state


def _run(coro_factory: Callable, settings: Settings):
    """Run a periodic task's body once against the test database."""

    async def main():
        conn = await psycopg.AsyncConnection.connect(settings.db_url, autocommit=True)
        async with conn:
            return await coro_factory(conn)

    return asyncio.run(main())


def test_the_sweep_queues_lost_skus_and_logs_the_batch(
    db: psycopg.Connection, settings: Settings
) -> None:
    db.execute("ALTER TABLE raw_products DISABLE TRIGGER USER")
    lost = [add_product(db, ["s3://b/a.jpg"]) for _ in range(3)]
    db.execute("ALTER TABLE raw_products ENABLE TRIGGER USER")
    queued_already = add_product(db, ["s3://b/a.jpg"])
    db.execute(
        "INSERT INTO collage_outcomes (product_id, outcome) VALUES (1, 'built'), (2, 'error')"
    )
    swept = _run(lambda conn: periodic.run_sweep(conn, batch=2), settings)
    assert swept.queued == lost and queued_already not in swept.queued  # two per transaction
    assert swept.refused is None
    log = db.execute(
        "SELECT scraper_name, status, records_fetched, records_new, records_errors,"
        " completed_at >= started_at, duration_seconds >= 0 FROM scraper_logs"
    ).fetchall()
    assert log == [("collage_worker", "partial", 2, 1, 1, True, True)]
    again = _run(lambda conn: periodic.run_sweep(conn, batch=10), settings)
    assert (again.queued, again.logged) == ([], None)  # nothing lost, nothing finished since
    assert db.execute("SELECT count(*) FROM scraper_logs").fetchone() == (1,)


def test_errored_skus_are_retried_after_the_cooldown_a_few_rounds_at_most(
    db: psycopg.Connection, settings: Settings
) -> None:
    from collage.db import products

    old = add_product(db, ["s3://b/a.jpg"], status="error")
    fresh = add_product(db, ["s3://b/a.jpg"], status="error")
    foreign = add_product(db, ["s3://b/a.jpg"], status="error")  # another worker's error
    for pid in (old, fresh):  # errors of ours: the message is one of the project's outcomes
        db.execute(
            "INSERT INTO collage_outcomes (product_id, outcome, message) VALUES (%s, 'error', 'm')",
            [pid],
        )
    db.execute(
        "UPDATE raw_products SET updated_at = now() - interval '2 hours',"
        " error_message = CASE WHEN id = %s THEN 'celery: gone' ELSE 'm' END WHERE id IN (%s, %s)",
        [foreign, old, foreign],
    )
    db.execute("UPDATE raw_products SET error_message = 'm' WHERE id = %s", [fresh])

    def retry(conn):
        return products.requeue_errored(conn, limit=50, cooldown_s=3600, max_rounds=2)

    assert _run(retry, settings) == [old]
    assert db.execute("SELECT image_status FROM raw_products WHERE id = %s", [old]).fetchone() == (
        "uploaded",
    )
    jobs = db.execute("SELECT count(*) FROM procrastinate_jobs WHERE lock = %s", [f"product:{old}"])
    assert jobs.fetchone() == (1,)  # the trigger queued it
    for expected in ([old], []):  # a second round, then no more
        db.execute(
            "UPDATE raw_products SET image_status = 'error', error_message = 'm',"
            " updated_at = now() - interval '2 hours' WHERE id = %s",
            [old],
        )
        assert _run(retry, settings) == expected
    assert fresh not in _run(retry, settings)
    assert foreign not in _run(retry, settings)


def test_stalled_jobs_of_a_dead_worker_are_failed_and_their_sku_queued_again(
    db: psycopg.Connection, settings: Settings, start_worker: StartWorker
) -> None:
    db.execute("ALTER TABLE raw_products DISABLE TRIGGER USER")
    pid = add_product(db, ["s3://b/a.jpg"])
    db.execute("ALTER TABLE raw_products ENABLE TRIGGER USER")
    dead = db.execute(
        "INSERT INTO procrastinate_workers (last_heartbeat) VALUES (now() - interval '1 hour')"
        " RETURNING id"
    ).fetchone()[0]
    stalled_job = db.execute(
        "INSERT INTO procrastinate_jobs (queue_name, task_name, lock, args, status, worker_id)"
        " VALUES ('collage', 'collage.build', %s, %s, 'doing', %s) RETURNING id",
        [f"product:{pid}", json.dumps({"product_id": pid}), dead],
    ).fetchone()[0]
    start_worker(settings)
    db.execute(
        "SELECT procrastinate_defer_jobs_v1(ARRAY[ROW('collage_maintenance', 'collage.rescue',"
        " 0, NULL,"
        " NULL, '{\"timestamp\": 0}'::jsonb, NULL)::procrastinate_job_to_defer_v1])"
    )
    status, _, error = final_state(db, pid)
    assert status == "error"  # it ran again: s3://b/ is another bucket, which it reports
    assert "not in bucket" in error or "is in bucket" in error
    old = db.execute("SELECT status::text FROM procrastinate_jobs WHERE id = %s", [stalled_job])
    assert old.fetchone() == ("failed",)


def test_cleanup_removes_day_old_scratch_files_only(tmp_path: Path) -> None:
    old, new = tmp_path / "a" / "old.jpg", tmp_path / "new.jpg"
    old.parent.mkdir()
    old.write_bytes(b"x")
    new.write_bytes(b"y")
    os.utime(old, (time.time() - 2 * 86400,) * 2)
    assert periodic.remove_old_files(tmp_path) == 1
    assert not old.exists() and new.exists()
    assert periodic.remove_old_files(tmp_path / "missing") == 0


def _defer(db: psycopg.Connection, task: str) -> None:
    db.execute(
        "SELECT procrastinate_defer_jobs_v1(ARRAY[ROW('collage', %s, 0, NULL, NULL,"
        " '{\"timestamp\": 0}'::jsonb, NULL)::procrastinate_job_to_defer_v1])",
        [task],
    )


def test_the_daily_cleanup_prunes_old_jobs_outcomes_and_scratch_files(
    db: psycopg.Connection, settings: Settings, start_worker: StartWorker
) -> None:
    scratch = settings.temp_dir
    scratch.mkdir(parents=True)
    old_file = scratch / "left-over.jpg"
    old_file.write_bytes(b"x")
    os.utime(old_file, (time.time() - 3 * 86400,) * 2)
    pid = add_product(db, [], status="pending")
    db.execute("SELECT collage_enqueue(%s)", [pid])
    db.execute("UPDATE procrastinate_jobs SET status = 'succeeded'")
    db.execute("UPDATE procrastinate_events SET at = now() - interval '30 days'")
    db.execute(
        "INSERT INTO collage_outcomes (product_id, outcome, finished_at) VALUES"
        " (%s, 'built', now() - interval '30 days'), (%s, 'built', now())",
        [pid, pid],
    )
    start_worker(settings)
    _defer(db, "collage.cleanup")
    sandbox.wait_until(
        lambda: db.execute(
            "SELECT count(*) FROM procrastinate_jobs WHERE task_name = 'collage.cleanup'"
            " AND status = 'succeeded'"
        ).fetchone()[0],
        timeout=20,
        what="the cleanup job",
    )
    assert not old_file.exists()
    left = db.execute("SELECT count(*) FROM procrastinate_jobs WHERE task_name = 'collage.build'")
    assert left.fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM collage_outcomes").fetchone() == (1,)


def test_the_hourly_retry_runs_as_a_job(
    db: psycopg.Connection, settings: Settings, start_worker: StartWorker
) -> None:
    pid = add_product(db, [], status="error")
    db.execute(  # an error of the project's own, an hour and more ago
        "INSERT INTO collage_outcomes (product_id, outcome, message)"
        " VALUES (%s, 'error', 'image_urls is empty')",
        [pid],
    )
    db.execute(
        "UPDATE raw_products SET updated_at = now() - interval '2 hours',"
        " error_message = 'image_urls is empty' WHERE id = %s",
        [pid],
    )
    start_worker(settings)
    _defer(db, "collage.retry_errors")
    sandbox.wait_until(
        lambda: db.execute("SELECT count(*) FROM collage_outcomes").fetchone()[0] > 1,
        timeout=20,
        what="the SKU to be built again",
    )
    status, _, error = final_state(db, pid)
    assert (status, error) == ("error", "image_urls is empty")  # built again, failed again
    rounds = db.execute("SELECT rounds FROM collage_retry_rounds WHERE product_id = %s", [pid])
    assert rounds.fetchone() == (1,)
