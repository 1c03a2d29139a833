"""What each PgBouncer pool allows: why STAGING_DB_URL and STAGING_DB_SESSION_URL differ."""

from __future__ import annotations

import time

import psycopg
from psycopg.conninfo import conninfo_to_dict

from dev.sandbox import PgBouncer


def _dbname(dsn: str) -> str:
    return str(conninfo_to_dict(dsn)["dbname"])


def _notified_within(listen_dsn: str, notify_dsn: str, seconds: float) -> bool:
    with psycopg.connect(listen_dsn, autocommit=True) as listener:
        listener.execute("LISTEN collage_probe")
        with psycopg.connect(notify_dsn, autocommit=True) as sender:
            sender.execute("NOTIFY collage_probe, 'hello'")
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for note in listener.notifies(timeout=0.1, stop_after=1):
                return note.payload == "hello"
    return False


def test_listen_works_through_the_session_pool(db_dsn: str, session_bouncer: PgBouncer) -> None:
    listen = session_bouncer.dsn(_dbname(db_dsn))
    assert _notified_within(listen, db_dsn, seconds=5)


def test_listen_through_the_transaction_pool_never_hears_anything(
    db_dsn: str, transaction_bouncer: PgBouncer
) -> None:
    # This is the silent failure that makes the LISTEN connection need its own, session-mode URL.
    listen = transaction_bouncer.dsn(_dbname(db_dsn))
    assert not _notified_within(listen, db_dsn, seconds=1.5)


def test_app_queries_work_through_the_transaction_pool_without_prepared_statements(
    db_dsn: str, transaction_bouncer: PgBouncer
) -> None:
    dsn = transaction_bouncer.dsn(_dbname(db_dsn))
    connections = [psycopg.connect(dsn, prepare_threshold=None) for _ in range(3)]
    try:
        for round_ in range(10):  # past psycopg's default threshold of 5 uses
            for conn in connections:
                with conn.transaction():
                    row = conn.execute(
                        "SELECT count(*) FROM raw_products WHERE image_status = %s", ["uploaded"]
                    ).fetchone()
                    assert row == (0,), round_
    finally:
        for conn in connections:
            conn.close()
