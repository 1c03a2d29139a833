from __future__ import annotations

import threading
from pathlib import Path

import psycopg

from collage.db import migrate


def _tables(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    return {row[0] for row in rows}


def test_an_empty_database_gets_everything_and_the_second_run_is_a_no_op(empty_db: str) -> None:
    first = migrate.apply(empty_db)
    assert first[0].startswith("procrastinate/schema-")
    assert "001_products.sql" in first
    assert {"raw_products", "scraper_logs", "procrastinate_jobs", "collage_migrations"} <= _tables(
        empty_db
    )
    assert migrate.apply(empty_db) == []
    state = migrate.status(empty_db)
    assert state.pending == []
    assert "001_products.sql" in state.applied


def test_status_lists_pending_without_changing_anything(empty_db: str) -> None:
    state = migrate.status(empty_db)
    assert state.applied == []
    assert state.pending[0].startswith("procrastinate/schema-")
    assert "001_products.sql" in state.pending
    assert "raw_products" not in _tables(empty_db)


def test_existing_product_tables_are_left_alone(empty_db: str) -> None:
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE raw_products (id bigserial PRIMARY KEY, external_id varchar(100),"
            " brand varchar(50), image_urls jsonb, collage_url text, image_status varchar(20),"
            " error_message text, updated_at timestamptz, legacy_column text)"
        )
        conn.execute(
            "INSERT INTO raw_products (external_id, brand, legacy_column) VALUES ('a', 'b', 'kept')"
        )
    migrate.apply(empty_db)
    with psycopg.connect(empty_db) as conn:
        assert conn.execute("SELECT legacy_column FROM raw_products").fetchone() == ("kept",)


def test_a_new_file_is_applied_later_and_only_once(empty_db: str, tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    folder.mkdir()
    for path in migrate.project_migrations():
        (folder / path.name).write_text(path.sql())
    migrate.apply(empty_db, folder=folder)
    (folder / "999_extra.sql").write_text(
        "CREATE TABLE extra (n int); INSERT INTO extra VALUES (1);"
    )
    assert migrate.status(empty_db, folder=folder).pending == ["999_extra.sql"]
    assert migrate.apply(empty_db, folder=folder) == ["999_extra.sql"]
    assert migrate.apply(empty_db, folder=folder) == []
    with psycopg.connect(empty_db) as conn:
        assert conn.execute("SELECT count(*) FROM extra").fetchone() == (1,)


def test_a_failing_file_is_rolled_back_and_stays_pending(empty_db: str, tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "001_bad.sql").write_text("CREATE TABLE half (n int); SELECT no_such_function();")
    try:
        migrate.apply(empty_db, folder=folder)
    except psycopg.errors.UndefinedFunction:
        pass
    else:
        raise AssertionError("the broken migration should have raised")
    assert "half" not in _tables(empty_db)
    assert migrate.status(empty_db, folder=folder).pending == ["001_bad.sql"]


def test_two_deploys_at_once_take_turns(empty_db: str) -> None:
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(migrate.apply(empty_db))
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert sorted(len(r) > 0 for r in results) == [False, False, True]


def test_indexes_on_existing_tables_are_built_concurrently_and_valid(empty_db: str) -> None:
    migrate.apply(empty_db)
    with psycopg.connect(empty_db) as conn:
        rows = conn.execute(
            "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE c.relname IN ('raw_products_image_status_updated_idx',"
            " 'scraper_logs_name_started_idx', 'collage_jobs_lock_idx')"
        ).fetchall()
    assert sorted(rows) == [
        ("collage_jobs_lock_idx", True),
        ("raw_products_image_status_updated_idx", True),
        ("scraper_logs_name_started_idx", True),
    ]
    indexes = next(m for m in migrate.project_migrations() if m.name == "004_indexes.sql")
    assert not indexes.transactional
    assert all("CONCURRENTLY" in statement for statement in indexes.statements())


def test_a_file_edited_after_it_was_applied_stops_the_migration(
    empty_db: str, tmp_path: Path
) -> None:
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "001_a.sql").write_text("CREATE TABLE a (n int);")
    migrate.apply(empty_db, folder=folder)
    (folder / "001_a.sql").write_text("CREATE TABLE a (n int, m int);")
    (folder / "002_b.sql").write_text("CREATE TABLE b (n int);")
    try:
        migrate.apply(empty_db, folder=folder)
    except RuntimeError as exc:
        assert "001_a.sql changed after being applied; put changes in a new file" in str(exc)
    else:
        raise AssertionError("an edited migration should stop the run")
    assert "b" not in _tables(empty_db)


def test_an_index_left_invalid_by_a_failed_run_is_rebuilt(empty_db: str) -> None:
    migrate.apply(empty_db)
    with psycopg.connect(empty_db, autocommit=True) as conn:
        # What a cancelled CREATE INDEX CONCURRENTLY leaves behind.
        conn.execute(
            "UPDATE pg_index SET indisvalid = false"
            " WHERE indexrelid = 'collage_jobs_lock_idx'::regclass"
        )
        conn.execute("DELETE FROM collage_migrations WHERE name = '004_indexes.sql'")
    assert migrate.apply(empty_db) == ["004_indexes.sql"]
    with psycopg.connect(empty_db) as conn:
        valid = conn.execute(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = 'collage_jobs_lock_idx'::regclass"
        ).fetchone()
    assert valid == (True,)
