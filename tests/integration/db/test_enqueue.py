"""The trigger and collage_enqueue(): what they promise, and what they rely on in Procrastinate."""

from __future__ import annotations

import json
import time

import psycopg
import pytest


def _insert(db: psycopg.Connection, status: str | None = "uploaded", urls: object = None) -> int:
    row = db.execute(
        "INSERT INTO raw_products (external_id, brand, image_urls, image_status)"
        " VALUES ('sku', 'brand', %s, %s) RETURNING id",
        [json.dumps(urls if urls is not None else ["s3://b/a.jpg"]), status],
    ).fetchone()
    assert row
    return int(row[0])


def args(product_id: int, *, attempt: int, generation: int) -> dict:
    """A build job's arguments as collage_enqueue writes them (brand: what _insert gives)."""
    return {
        "product_id": product_id,
        "attempt": attempt,
        "generation": generation,
        "brand": "brand",
    }


def _jobs(db: psycopg.Connection, product_id: int) -> list[tuple[str, dict]]:
    return [
        (str(status), args)
        for status, args in db.execute(
            "SELECT status, args FROM procrastinate_jobs WHERE lock = %s ORDER BY id",
            [f"product:{product_id}"],
        )
    ]


def test_inserting_an_uploaded_row_enqueues_one_job(db: psycopg.Connection) -> None:
    pid = _insert(db)
    assert _jobs(db, pid) == [("todo", args(pid, attempt=0, generation=1))]
    row = db.execute(
        "SELECT queue_name, task_name, queueing_lock FROM procrastinate_jobs"
    ).fetchone()
    assert row == ("collage", "collage.build", f"product:{pid}")


def test_other_statuses_do_not_enqueue(db: psycopg.Connection) -> None:
    pid = _insert(db, status="pending")
    _insert(db, status=None)
    assert db.execute("SELECT count(*) FROM procrastinate_jobs").fetchone() == (0,)
    db.execute("UPDATE raw_products SET image_status = 'uploaded' WHERE id = %s", [pid])
    assert len(_jobs(db, pid)) == 1


def test_writes_that_do_not_mark_the_sku_uploaded_do_not_enqueue(db: psycopg.Connection) -> None:
    pid = _insert(db)
    db.execute("UPDATE procrastinate_jobs SET status = 'doing'")  # as if a worker took it
    db.execute("UPDATE raw_products SET error_message = 'x', brand = 'y' WHERE id = %s", [pid])
    db.execute("UPDATE raw_products SET image_urls = image_urls WHERE id = %s", [pid])  # same value
    assert [s for s, _ in _jobs(db, pid)] == ["doing"]
    assert _generation(db, pid) == 1


def test_marking_an_uploaded_sku_uploaded_again_starts_a_new_generation(
    db: psycopg.Connection,
) -> None:
    # A re-download under the same fixed keys writes the same image_urls while the build runs.
    pid = _insert(db)
    db.execute("UPDATE procrastinate_jobs SET status = 'doing'")
    db.execute(
        "UPDATE raw_products SET image_status = 'uploaded', image_urls = image_urls WHERE id = %s",
        [pid],
    )
    assert _generation(db, pid) == 2
    assert _jobs(db, pid) == [
        ("doing", args(pid, attempt=0, generation=1)),
        ("todo", args(pid, attempt=0, generation=2)),
    ]


def test_a_waiting_job_takes_the_newest_generation_and_an_older_one_never_replaces_it(
    db: psycopg.Connection,
) -> None:
    pid = _insert(db)
    db.execute("UPDATE raw_products SET image_status = 'uploaded' WHERE id = %s", [pid])
    assert _jobs(db, pid) == [("todo", args(pid, attempt=0, generation=2))]
    # A retry queued later for generation 1 (a build that just failed) is absorbed.
    db.execute("SELECT collage_enqueue(%s, 1, interval '1 minute', 1)", [pid])
    assert _jobs(db, pid) == [("todo", args(pid, attempt=0, generation=2))]
    # Without a generation, the SKU's current one is meant (the sweep, the rescue).
    assert db.execute("SELECT collage_enqueue(%s)", [pid]).fetchone() == (None,)


def _generation(db: psycopg.Connection, pid: int) -> int:
    row = db.execute("SELECT upload_generation FROM raw_products WHERE id = %s", [pid]).fetchone()
    assert row
    return int(row[0])


def test_a_url_change_on_an_uploaded_row_enqueues(db: psycopg.Connection) -> None:
    pid = _insert(db)
    db.execute("UPDATE procrastinate_jobs SET status = 'doing'")
    db.execute(
        "UPDATE raw_products SET image_urls = %s WHERE id = %s",
        [json.dumps(["s3://b/new.jpg"]), pid],
    )
    assert [s for s, _ in _jobs(db, pid)] == ["doing", "todo"]


def test_a_url_change_on_a_row_not_uploaded_does_not_enqueue(db: psycopg.Connection) -> None:
    pid = _insert(db, status="collage_ready")
    db.execute(
        "UPDATE raw_products SET image_urls = %s WHERE id = %s", [json.dumps(["s3://b/n"]), pid]
    )
    assert _jobs(db, pid) == []


def test_a_duplicate_waiting_job_is_swallowed_and_the_update_succeeds(
    db: psycopg.Connection,
) -> None:
    pid = _insert(db)
    for _ in range(3):
        db.execute("UPDATE raw_products SET image_status = 'pending' WHERE id = %s", [pid])
        db.execute("UPDATE raw_products SET image_status = 'uploaded' WHERE id = %s", [pid])
    assert [s for s, _ in _jobs(db, pid)] == ["todo"]


def test_an_upload_brings_a_parked_retry_forward(db: psycopg.Connection) -> None:
    pid = _insert(db, status="pending")
    db.execute("SELECT collage_enqueue(%s, 3, interval '10 minutes')", [pid])
    row = db.execute("SELECT scheduled_at IS NOT NULL FROM procrastinate_jobs").fetchone()
    assert row == (True,)
    db.execute("UPDATE raw_products SET image_status = 'uploaded' WHERE id = %s", [pid])
    rows = db.execute("SELECT scheduled_at, args FROM procrastinate_jobs").fetchall()
    assert rows == [(None, args(pid, attempt=0, generation=1))]


def test_other_errors_in_the_trigger_are_not_swallowed(db: psycopg.Connection) -> None:
    db.execute("ALTER TABLE procrastinate_jobs ADD CONSTRAINT no_jobs CHECK (false) NOT VALID")
    with pytest.raises(psycopg.errors.CheckViolation):
        _insert(db)


def test_procrastinate_notifies_the_queue_at_commit(db_dsn: str, db: psycopg.Connection) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as listener:
        listener.execute('LISTEN "procrastinate_queue_v1#collage"')
        pid = _insert(db)
        deadline = time.monotonic() + 5
        payloads = []
        while not payloads and time.monotonic() < deadline:
            payloads = [n.payload for n in listener.notifies(timeout=0.2, stop_after=1)]
    assert payloads, "Procrastinate's insert trigger sent no NOTIFY"
    job_id = db.execute("SELECT id FROM procrastinate_jobs WHERE lock = %s", [f"product:{pid}"])
    assert str(job_id.fetchone()[0]) in payloads[0]


def test_bulk_update_creates_one_job_per_row(db: psycopg.Connection) -> None:
    db.execute(
        "INSERT INTO raw_products (external_id, brand, image_urls, image_status)"
        " SELECT 'sku' || n, 'b', '[\"s3://b/a.jpg\"]', 'pending' FROM generate_series(1, 2000) n"
    )
    db.execute("UPDATE raw_products SET image_status = 'uploaded'")
    row = db.execute(
        "SELECT count(*), count(DISTINCT queueing_lock) FROM procrastinate_jobs"
    ).fetchone()
    assert row == (2000, 2000)


def test_a_new_upload_restores_the_automatic_retry_rounds(db: psycopg.Connection) -> None:
    exhausted = _insert(db, status="error")
    retried = _insert(db, status="error")
    db.execute(
        "INSERT INTO collage_retry_rounds (product_id, rounds) VALUES (%s, 3), (%s, 1)",
        [exhausted, retried],
    )
    # The downloader fetches new photos: 'error' -> 'pending' -> 'uploaded'.
    db.execute("UPDATE raw_products SET image_status = 'pending' WHERE id = %s", [exhausted])
    db.execute("UPDATE raw_products SET image_status = 'uploaded' WHERE id = %s", [exhausted])
    # The downloader re-uploads an errored SKU with the same URLs, straight to 'uploaded'.
    same_urls = _insert(db, status="error")
    db.execute("INSERT INTO collage_retry_rounds (product_id, rounds) VALUES (%s, 3)", [same_urls])
    db.execute("UPDATE raw_products SET image_status = 'uploaded' WHERE id = %s", [same_urls])
    # The hourly retry marks its own transaction: its count must stay.
    with db.transaction():
        db.execute("SET LOCAL collage.hourly_retry = 'on'")
        db.execute("UPDATE raw_products SET image_status = 'uploaded' WHERE id = %s", [retried])
    rounds = dict(db.execute("SELECT product_id, rounds FROM collage_retry_rounds").fetchall())
    assert rounds == {retried: 1}
