"""The write guard against real interleavings: a re-upload always beats the build it replaces.

Each race is forced with two connections and a row lock held on purpose, never with sleeps:
the test waits until PostgreSQL reports the build's statement waiting for that lock.
"""

from __future__ import annotations

import asyncio
import json

import psycopg
import pytest

from collage import db as database
from collage.db import builds, products
from dev import sandbox


def add_uploaded(
    db: psycopg.Connection, *, external_id: str = "RACE-1", brand: str = "zara"
) -> int:
    row = db.execute(
        "INSERT INTO raw_products (external_id, brand, image_urls, image_status)"
        " VALUES (%s, %s, %s, 'uploaded') RETURNING id",
        [external_id, "zara", json.dumps(["s3://b/originals/a.jpg"])],
    ).fetchone()
    assert row
    return int(row[0])


def wait_for_lock(db: psycopg.Connection, backend_pid: int) -> None:
    """Return once that backend is waiting for a lock (the interleaving is then certain)."""
    sandbox.wait_until(
        lambda: (
            db.execute(
                "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s",
                [backend_pid],
            ).fetchone()
            == (True,)
        ),
        timeout=10,
        what="the build's write to wait for the row lock",
    )


async def try_to_publish(conn: psycopg.AsyncConnection, product: products.Product) -> bool:
    """What the build does with its result: claim the row and mark it ready if still its own."""
    async with conn.transaction():
        cur = await builds.publish(
            conn,
            product,
            collage_url="https://x/old.jpg",
            key="k",
            owner=None,
            job_id=None,
            photos=1,
            bytes_out=1,
            duration_s=0.0,
            quality=95,
        )
    return (await builds.published(cur)).outcome == "built"


def state(db: psycopg.Connection, pid: int) -> tuple:
    row = db.execute(
        "SELECT image_status, collage_url, upload_generation FROM raw_products WHERE id = %s",
        [pid],
    ).fetchone()
    assert row
    return tuple(row)


def test_a_reupload_that_commits_while_the_result_waits_for_the_row_wins(
    db: psycopg.Connection, db_dsn: str
) -> None:
    pid = add_uploaded(db)

    async def race() -> bool:
        build = await database.connect_async(db_dsn)
        downloader = await database.connect_async(db_dsn)
        async with build, downloader:
            product = await products.fetch(build, pid)  # the build read generation 1
            assert product is not None and product.generation == 1
            async with downloader.transaction():
                await downloader.execute(
                    "UPDATE raw_products SET image_status = 'uploaded' WHERE id = %s", [pid]
                )
                publishing = asyncio.create_task(try_to_publish(build, product))
                await asyncio.to_thread(wait_for_lock, db, build.info.backend_pid)
            return await publishing  # the downloader has committed generation 2

    assert asyncio.run(race()) is False
    assert state(db, pid) == ("uploaded", None, 2)
    jobs = db.execute(
        "SELECT status::text, args ->> 'generation' FROM procrastinate_jobs WHERE lock = %s",
        [f"product:{pid}"],
    ).fetchall()
    assert ("todo", "2") in jobs  # the new generation's build is waiting


def test_the_same_urls_written_again_during_a_build_make_its_result_stale(
    db: psycopg.Connection, db_dsn: str
) -> None:
    pid = add_uploaded(db)

    async def build_then_reupload() -> bool:
        build = await database.connect_async(db_dsn)
        async with build:
            product = await products.fetch(build, pid)
            assert product is not None
            # The downloader re-downloads to the same fixed keys: same image_urls, same status.
            db.execute(
                "UPDATE raw_products SET image_urls = image_urls, image_status = 'uploaded'"
                " WHERE id = %s",
                [pid],
            )
            return await try_to_publish(build, product)

    assert asyncio.run(build_then_reupload()) is False
    assert state(db, pid) == ("uploaded", None, 2)


def test_a_result_for_the_current_generation_lands(db: psycopg.Connection, db_dsn: str) -> None:
    pid = add_uploaded(db)

    async def build() -> bool:
        conn = await database.connect_async(db_dsn)
        async with conn:
            product = await products.fetch(conn, pid)
            assert product is not None
            return await try_to_publish(conn, product)

    assert asyncio.run(build()) is True
    assert state(db, pid) == ("collage_ready", "https://x/old.jpg", 1)


@pytest.mark.parametrize(
    "shadow",
    [
        "CREATE SCHEMA shadow; CREATE TABLE shadow.procrastinate_jobs (id bigint);"
        " SET search_path = shadow, public",
        "CREATE TEMP TABLE procrastinate_jobs (id bigint)",
        "CREATE TEMP TABLE raw_products (id bigint, upload_generation bigint)",
    ],
)
def test_a_callers_search_path_cannot_shadow_what_the_trigger_writes(
    db: psycopg.Connection, shadow: str
) -> None:
    for statement in shadow.split("; "):
        db.execute(statement)
    row = db.execute(
        "INSERT INTO public.raw_products (external_id, brand, image_urls, image_status)"
        " VALUES ('S-1', 'zara', '[]', 'uploaded') RETURNING id"
    ).fetchone()
    assert row
    queued = db.execute(
        "SELECT count(*) FROM public.procrastinate_jobs WHERE lock = %s", [f"product:{row[0]}"]
    ).fetchone()
    assert queued == (1,)
    again = db.execute("SELECT public.collage_enqueue(%s, 0, NULL, NULL)", [row[0]]).fetchone()
    assert again == (None,)  # it found the waiting job and the row's generation in public


def test_releasing_held_skus_makes_them_due_but_leaves_a_pause_alone(
    db: psycopg.Connection, db_dsn: str
) -> None:
    held, paused = add_uploaded(db, external_id="HELD-1"), add_uploaded(db, external_id="PAUSED-1")
    # As the gate and a pause leave them: one waiting 30 s, one never due.
    for pid, when in ((held, "now() + interval '30 seconds'"), (paused, "'infinity'")):
        db.execute(
            f"UPDATE procrastinate_jobs SET scheduled_at = {when} WHERE lock = %s",
            [f"product:{pid}"],
        )

    async def release() -> int:
        async with await database.connect_async(db_dsn) as conn:
            return await products.release(conn, [held, paused])

    assert asyncio.run(release()) == 1
    due = dict(
        db.execute(
            "SELECT lock, scheduled_at <= now() FROM procrastinate_jobs WHERE lock = ANY(%s)",
            [[f"product:{held}", f"product:{paused}"]],
        ).fetchall()
    )
    assert due == {f"product:{held}": True, f"product:{paused}": False}
