"""Adoption on a copy of the production schema: their columns, CHECK, triggers, rows and roles.

What a team cutting over from its Celery worker does, in order: migrate onto the staging copy,
queue the backlog, run the worker (through PgBouncer), cancel and requeue, and roll back.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from collage.db import migrate, products
from collage.db.migrate import MigrationError
from collage.queue import periodic
from collage.settings import Settings
from dev import sandbox
from dev.photos import jpeg
from tests.integration.cli.test_cli import run
from tests.support import staging
from tests.support.db import value
from tests.support.skus import StartWorker, final_state, upload

pytestmark = pytest.mark.slow


@pytest.fixture
def stg(admin_dsn: str) -> Iterator[str]:
    """The staging copy with its 20,000 rows, collage not migrated yet."""
    yield from staging.created(admin_dsn)


@pytest.fixture
def small(admin_dsn: str) -> Iterator[str]:
    """The staging schema with a few rows: for what needs a worker to run."""
    yield from staging.created(admin_dsn, rows=40)


def settings_for(dsn: str, s3_endpoint: str, bucket: str, tmp_path: Path) -> Settings:
    return Settings(
        db_url=dsn,
        db_session_url=dsn,
        s3_endpoint=s3_endpoint,
        s3_access_key=sandbox.S3_KEY,
        s3_secret_key=sandbox.S3_KEY,
        s3_bucket=bucket,
        s3_public_url=f"{s3_endpoint}/{bucket}",
        temp_dir=tmp_path / "scratch",
    )


def connect(dsn: str) -> psycopg.Connection:
    return psycopg.connect(dsn, autocommit=True)


def jobs_of(db: psycopg.Connection, product_id: int) -> list[tuple[str, int]]:
    return db.execute(
        "SELECT status::text, (args ->> 'product_id')::bigint FROM procrastinate_jobs"
        " WHERE lock = %s ORDER BY id",
        [f"product:{product_id}"],
    ).fetchall()


def a_row(db: psycopg.Connection, status: str) -> int:
    return int(value(db, "SELECT min(id) FROM raw_products WHERE image_status = %s", [status]))


def ids_in(db: psycopg.Connection, status: str) -> set[int]:
    rows = db.execute("SELECT id FROM raw_products WHERE image_status = %s", [status]).fetchall()
    return {row[0] for row in rows}


def summary(settings: Settings) -> dict[str, object]:
    return json.loads(run(settings, "jobs", "--json").output)["summary"]


def test_migrate_onto_the_staging_copy_keeps_its_rules_and_queues_the_next_upload(
    stg: str,
) -> None:
    before = staging.shape(stg)
    started = time.monotonic()
    applied = migrate.apply(stg)
    took = time.monotonic() - started
    print(f"\nmigrate onto 20,000 staging rows: {took:.2f}s, {len(applied)} steps")
    after = staging.shape(stg)
    theirs = {entry for entry in before if entry[0] in ("constraint", "trigger", "index")}
    assert theirs <= after  # their CHECK, UNIQUE, triggers and indexes are all still there
    added = {name for kind, name, _ in after - before if kind == "column"}
    assert added == {"raw_products.upload_generation", "raw_products.uploaded_at"}
    with connect(stg) as db:
        ours = db.execute(
            "SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = 'raw_products'::regclass"
            " AND tgname LIKE 'raw_products_upload%' ORDER BY 1"
        ).fetchall()
        assert ours and {enabled for _, enabled in ours} == {"O"}  # armed once all applied
        pending = a_row(db, "pending")
        db.execute("UPDATE raw_products SET image_status = 'uploaded' WHERE id = %s", [pending])
        assert jobs_of(db, pending) == [("todo", pending)]
        history = db.execute(
            "SELECT old_status, new_status FROM raw_products_status_history WHERE product_id = %s",
            [pending],
        ).fetchall()
        assert history == [("pending", "uploaded")]  # their own trigger still runs


def test_the_backlog_is_queued_at_once_in_fair_order_and_shown_until_then(
    stg: str, s3_endpoint: str, s3_bucket: str, tmp_path: Path
) -> None:
    migrate.apply(stg)
    settings = settings_for(stg, s3_endpoint, s3_bucket, tmp_path)
    with connect(stg) as db:
        backlog = value(db, "SELECT count(*) FROM raw_products WHERE image_status = 'uploaded'")
        assert summary(settings)["skus_unqueued"] == backlog == staging.ROWS // 5
        assert f"NOT QUEUED {backlog} SKU(s)" in run(settings, "jobs").output
        started = time.monotonic()
        swept = run(settings, "sweep")
        took = time.monotonic() - started
        print(f"\nthe backlog of {backlog} SKUs queued in {took:.2f}s")
        assert f"queued {backlog} SKU(s)" in swept.output, swept.output
        assert summary(settings)["skus_unqueued"] == 0
        assert summary(settings)["waiting"] == backlog
        # Fair order: the first jobs a worker takes are of every brand, not of the oldest one.
        first = db.execute(
            "SELECT args ->> 'brand' FROM procrastinate_jobs WHERE status = 'todo'"
            " ORDER BY priority DESC, id LIMIT %s",
            [len(staging.BRANDS)],
        ).fetchall()
        assert {brand for (brand,) in first} == set(staging.BRANDS)
        assert "queued 0 SKU(s)" in run(settings, "sweep").output  # nothing twice


def test_a_schema_without_what_collage_needs_is_refused_before_anything_is_written(
    admin_dsn: str,
) -> None:
    broken = staging.SCHEMA.replace("image_urls    jsonb,", "image_urls    json,").replace(
        "collage_url   text,", ""
    )
    dsn = staging.create(admin_dsn, rows=0, schema=broken)
    try:
        before = staging.shape(dsn)
        with pytest.raises(MigrationError) as refused:
            migrate.apply(dsn)
        message = str(refused.value)
        assert "\n" not in message
        assert "raw_products lacks collage_url (bpchar/text/varchar)" in message
        assert "raw_products.image_urls is json, not jsonb" in message
        assert staging.shape(dsn) == before  # no ledger, no queue, no trigger
    finally:
        sandbox.drop_database(admin_dsn, dsn)


@pytest.fixture
def role(admin_dsn: str) -> Iterator[str]:
    """A login role of the test's own, dropped with whatever it was granted."""
    name = f"collage_role_{uuid.uuid4().hex[:8]}"
    with connect(admin_dsn) as db:
        db.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
    yield name
    with connect(admin_dsn) as db:
        db.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def as_role(dsn: str, name: str) -> str:
    return psycopg.conninfo.make_conninfo(dsn, user=name)


def test_a_role_that_may_not_create_or_alter_is_told_what_it_lacks(small: str, role: str) -> None:
    before = staging.shape(small)
    with pytest.raises(MigrationError) as refused:
        migrate.apply(as_role(small, role))
    message = str(refused.value)
    assert f"role {role} may not create tables in schema public (GRANT CREATE ON SCHEMA" in message
    assert f"role {role} does not own raw_products" in message
    assert staging.shape(small) == before
    with connect(small) as db:
        db.execute(
            sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {}").format(
                sql.Identifier(role)
            )
        )


def test_a_migrate_that_fails_half_way_leaves_no_trigger_queueing(
    small: str, tmp_path: Path
) -> None:
    folder = tmp_path / "migrations"
    shutil.copytree(migrate.shipped_migrations(), folder)
    (folder / "999_boom.sql").write_text("SELECT 1 / 0;\n")
    with pytest.raises(psycopg.errors.DivisionByZero):
        migrate.apply(small, folder=folder)
    with connect(small) as db:
        pending = a_row(db, "pending")
        db.execute("UPDATE raw_products SET image_status = 'uploaded' WHERE id = %s", [pending])
        assert jobs_of(db, pending) == []  # installed, but not queueing
        (folder / "999_boom.sql").write_text("SELECT 1;\n")
        migrate.apply(small, folder=folder)
        other = a_row(db, "pending")
        db.execute("UPDATE raw_products SET image_status = 'uploaded' WHERE id = %s", [other])
        assert jobs_of(db, other) == [("todo", other)]


def test_cancel_works_where_a_check_allows_only_the_downloaders_statuses(
    small: str, s3_endpoint: str, s3_bucket: str, tmp_path: Path
) -> None:
    migrate.apply(small)
    settings = settings_for(small, s3_endpoint, s3_bucket, tmp_path)
    with connect(small) as db:
        pid = a_row(db, "pending")
        db.execute("UPDATE raw_products SET image_status = 'uploaded' WHERE id = %s", [pid])
        cancelled = run(settings, "cancel", "--id", str(pid), "--yes")
        assert cancelled.exit_code == 0 and "cancelled 1 build(s)" in cancelled.output
        assert value(db, "SELECT image_status FROM raw_products WHERE id = %s", [pid]) == "uploaded"
        assert jobs_of(db, pid) == [("cancelled", pid)]
        assert summary(settings)["skus_cancelled"] == 1
        run(settings, "sweep")
        assert jobs_of(db, pid) == [("cancelled", pid)]  # the sweep leaves it cancelled
        shown = run(settings, "show", str(pid)).output
        assert "cancelled_by" in shown and "(web console)" not in shown
        requeued = run(settings, "requeue", "--cancelled", "--id", str(pid))
        assert "requeued 1 SKU(s)" in requeued.output, requeued.output
        assert jobs_of(db, pid)[-1] == ("todo", pid)
        run(settings, "cancel", "--id", str(pid), "--yes")
        db.execute("UPDATE raw_products SET image_status = 'uploaded' WHERE id = %s", [pid])
        assert jobs_of(db, pid)[-1] == ("todo", pid)  # a new upload ends the cancellation
        assert summary(settings)["skus_cancelled"] == 0


def test_an_upsert_queues_one_job_for_the_row_it_wrote(small: str) -> None:
    migrate.apply(small)
    upsert = (
        "INSERT INTO raw_products (external_id, brand, image_urls, image_status)"
        " VALUES (%s, 'zara', '[\"s3://b/originals/x.jpg\"]', 'uploaded')"
        " ON CONFLICT (brand, external_id) DO UPDATE SET image_status = 'uploaded',"
        " image_urls = EXCLUDED.image_urls RETURNING id"
    )
    with connect(small) as db:
        before = value(db, "SELECT count(*) FROM procrastinate_jobs")
        existing = value(db, "SELECT id FROM raw_products WHERE brand = 'zara' LIMIT 1")
        external_id = value(db, "SELECT external_id FROM raw_products WHERE id = %s", [existing])
        assert value(db, upsert, [external_id]) == existing
        fresh = value(db, upsert, ["brand-new"])
        assert value(db, "SELECT count(*) FROM procrastinate_jobs") == before + 2
        queued_for = db.execute("SELECT (args ->> 'product_id')::bigint FROM procrastinate_jobs")
        assert {row[0] for row in queued_for} == {existing, fresh}  # no phantom id


def test_the_downloaders_own_role_needs_no_rights_on_the_queue(small: str, role: str) -> None:
    migrate.apply(small)
    with connect(small) as db:
        for grant in (
            "GRANT SELECT, INSERT, UPDATE ON raw_products, raw_products_status_history TO {}",
            "GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {}",
        ):
            db.execute(sql.SQL(grant).format(sql.Identifier(role)))
        pending = a_row(db, "pending")
    try:
        with connect(as_role(small, role)) as downloader:
            downloader.execute(
                "UPDATE raw_products SET image_status = 'uploaded' WHERE id = %s", [pending]
            )
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                downloader.execute("SELECT count(*) FROM procrastinate_jobs")
        with connect(small) as db:
            assert jobs_of(db, pending) == [("todo", pending)]
    finally:
        with connect(small) as db:
            db.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))


def test_the_worker_on_staging_through_pgbouncer_builds_retries_only_its_own_errors_and_logs(
    small: str,
    s3,
    s3_endpoint: str,
    s3_bucket: str,
    tmp_path: Path,
    start_worker: StartWorker,
    session_bouncer: sandbox.PgBouncer,
    transaction_bouncer: sandbox.PgBouncer,
) -> None:
    migrate.apply(small)
    direct = settings_for(small, s3_endpoint, s3_bucket, tmp_path)
    settings = direct.replace(
        db_url=transaction_bouncer.for_dsn(small), db_session_url=session_bouncer.for_dsn(small)
    )
    urls = upload(s3, direct, {"zara/1/front.jpg": jpeg(60, 80), "zara/1/back.jpg": jpeg(40, 80)})
    with connect(small) as db:
        backlog = {
            r[0] for r in db.execute("SELECT id FROM raw_products WHERE image_status = 'uploaded'")
        }
        old_errors = {
            r[0] for r in db.execute("SELECT id FROM raw_products WHERE image_status = 'error'")
        }
    start_worker(settings)  # it queues the backlog as it starts: photos in another bucket
    with connect(small) as db:
        good = value(
            db,
            "INSERT INTO raw_products (external_id, brand, image_urls, image_status)"
            " VALUES ('NEW-1', 'zara', %s, 'uploaded') RETURNING id",
            [json.dumps(urls)],
        )
        bad = a_row(db, "pending")  # its photo is in another bucket: refused, an error of ours
        db.execute("UPDATE raw_products SET image_status = 'uploaded' WHERE id = %s", [bad])
        assert final_state(db, good)[0] == "collage_ready"
        assert final_state(db, bad)[0] == "error"
        assert {final_state(db, pid)[0] for pid in backlog} == {"error"}
        steps = db.execute(
            "SELECT old_status, new_status FROM raw_products_status_history"
            " WHERE product_id = %s ORDER BY id",
            [bad],
        ).fetchall()
        assert steps == [("pending", "uploaded"), ("uploaded", "error")]
        head = s3.head_object(Bucket=s3_bucket, Key="collages/zara/NEW-1.jpg")
        assert (head["ContentType"], head["CacheControl"]) == ("image/jpeg", "no-cache")
        grants = s3.get_object_acl(Bucket=s3_bucket, Key="collages/zara/NEW-1.jpg")["Grants"]
        assert any(g["Grantee"].get("URI", "").endswith("/AllUsers") for g in grants)

        async def sweep() -> periodic.Swept:
            async with await psycopg.AsyncConnection.connect(small, autocommit=True) as conn:
                return await periodic.run_sweep(conn, batch=100)

        swept = asyncio.run(sweep())
        assert swept.refused is None
        # Every batch so far (the worker's first sweep may have logged the first builds).
        logged = db.execute(
            "SELECT sum(records_fetched), sum(records_new), sum(records_errors),"
            " sum(records_updated), sum((error_details ->> 'ForeignUrl')::int)"
            " FROM scraper_logs WHERE scraper_name = 'collage_worker'"
        ).fetchone()
        failed = len(backlog) + 1
        assert logged == (failed + 1, 1, failed, failed + 1, failed)

        # The hourly retry takes back the errors it made, never those the old worker left.
        async def retry() -> list[int]:
            async with await psycopg.AsyncConnection.connect(small, autocommit=True) as conn:
                return await products.requeue_errored(conn, limit=50, cooldown_s=0, max_rounds=3)

        assert len(old_errors) == 8
        assert set(asyncio.run(retry())) == backlog | {bad}


def test_a_scraper_logs_table_that_refuses_the_row_costs_the_log_line_not_the_queueing(
    small: str,
) -> None:
    migrate.apply(small)
    with connect(small) as db:
        db.execute("ALTER TABLE scraper_logs ADD COLUMN run_id text NOT NULL")
        db.execute("INSERT INTO collage_outcomes (product_id, outcome) VALUES (1, 'built')")
        lost = a_row(db, "uploaded")  # from before the migration: no job yet

    async def sweep() -> periodic.Swept:
        async with await psycopg.AsyncConnection.connect(small, autocommit=True) as conn:
            return await periodic.run_sweep(conn, batch=100)

    swept = asyncio.run(sweep())
    assert lost in swept.queued
    assert swept.refused and 'null value in column "run_id"' in swept.refused
    with connect(small) as db:
        assert jobs_of(db, lost) == [("todo", lost)]


def test_uninstall_leaves_the_staging_schema_exactly_as_it_was(small: str, tmp_path: Path) -> None:
    before = staging.shape(small)
    migrate.apply(small)
    settings = Settings(
        db_url=small,
        db_session_url=small,
        s3_endpoint="http://unused",
        s3_access_key="k",
        s3_secret_key="k",
        temp_dir=tmp_path,
    )
    migrated = staging.shape(small)
    shown = run(settings, "uninstall")
    assert shown.exit_code == 0
    assert shown.output.splitlines()[1] == "BEGIN;" and shown.output.splitlines()[-1] == "COMMIT;"
    first_drop = next(line for line in shown.output.splitlines() if line.startswith("DROP"))
    assert first_drop.startswith("DROP TRIGGER")  # the downloader's writes stop queueing first
    assert staging.shape(small) == migrated  # printed, not run
    done = run(settings, "uninstall", "--yes", "--drop-columns")
    assert done.exit_code == 0, done.output
    assert staging.shape(small) == before
    with connect(small) as db:
        pending = a_row(db, "pending")
        db.execute("UPDATE raw_products SET image_status = 'uploaded' WHERE id = %s", [pending])
        left = db.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace"
            " AND (relname LIKE 'collage%%' OR relname LIKE 'procrastinate%%')"
        ).fetchall()
        assert left == []
    assert "nothing of collage" in run(settings, "uninstall").output
