"""What the tests read of the queue: jobs by state, pickups, overlapping builds, LISTEN."""

from __future__ import annotations

import contextlib
import itertools
import time
import uuid
from collections.abc import Callable, Mapping, Sequence

import psycopg

from dev import sandbox
from tests.support.db import Db, Queryable, rows, value

# Procrastinate polls every POLLING_INTERVAL_S (1 s); a pickup this fast came from LISTEN.
LISTEN_PICKUP_S = 0.2
# Below every build collage_enqueue queues (its fair-share tags stop at 2,000,000,000).
LOWEST_PRIORITY = -2_000_000_001


def listen_pids(db: Db) -> set[int]:
    """Backends of this database whose last statement was a LISTEN (Procrastinate's)."""
    return {
        row[0]
        for row in db.rows(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND query LIKE 'LISTEN%%'"
        )
    }


def build_jobs_in(db: Db, *statuses: str) -> list[tuple]:
    """Build jobs in these states: (id, lock, status)."""
    return db.rows(
        "SELECT id, lock, status::text FROM procrastinate_jobs"
        " WHERE task_name = 'collage.build' AND status::text = ANY(%s) ORDER BY id",
        [list(statuses)],
    )


def pickup_delay_s(db: Db, product_id: int) -> float:
    """Seconds from a SKU's newest build job being queued to it starting (procrastinate_events)."""
    return float(
        db.value(
            "SELECT extract(epoch FROM max(e.at) FILTER (WHERE e.type = 'started')"
            " - min(e.at) FILTER (WHERE e.type = 'deferred'))"
            " FROM procrastinate_events e WHERE e.job_id = ("
            " SELECT max(id) FROM procrastinate_jobs WHERE lock = %s)",
            [f"product:{product_id}"],
        )
    )


def overlapping_builds(db: Db) -> list[tuple]:
    """Pairs of build jobs of one SKU whose runs overlapped in time (should be none)."""
    runs = db.rows(
        "SELECT j.lock, j.id, min(e.at) FILTER (WHERE e.type = 'started'),"
        " max(e.at) FILTER (WHERE e.type IN ('succeeded', 'failed', 'aborted'))"
        " FROM procrastinate_jobs j JOIN procrastinate_events e ON e.job_id = j.id"
        " WHERE j.task_name = 'collage.build' GROUP BY j.id"
        " HAVING min(e.at) FILTER (WHERE e.type = 'started') IS NOT NULL ORDER BY j.lock, 3"
    )
    clashes = []
    for before, after in itertools.pairwise(runs):
        if before[0] == after[0] and (before[3] is None or after[2] < before[3]):
            clashes.append((before, after))
    return clashes


def defer_rescue(db: Db) -> int:
    """Queue the stalled-job rescue now instead of at the next minute's cron tick.

    Return its job id, or that of the rescue already waiting (the one a worker's start queued).
    """
    with contextlib.suppress(psycopg.errors.UniqueViolation):  # one is waiting already
        return int(
            db.value(
                "SELECT (procrastinate_defer_jobs_v1(ARRAY[ROW('collage_maintenance',"
                " 'collage.rescue', 0, NULL, 'collage.rescue', '{\"timestamp\": 0}'::jsonb,"
                " NULL)::procrastinate_job_to_defer_v1]))[1]"
            )
        )
    return int(
        db.value(
            "SELECT id FROM procrastinate_jobs WHERE queueing_lock = 'collage.rescue'"
            " AND status = 'todo'"
        )
    )


def doing_jobs(db: Db) -> list[tuple]:
    return db.rows(
        "SELECT id, lock, worker_id FROM procrastinate_jobs"
        " WHERE task_name = 'collage.build' AND status = 'doing' ORDER BY id"
    )


def first_true(
    checks: Mapping[str, Callable[[], bool]],
    *,
    timeout: float,
    explain: Callable[[], str] = lambda: "",
) -> dict[str, float]:
    """Poll several conditions at once; return how many seconds each took to become true."""
    started = time.monotonic()
    took: dict[str, float] = {}

    def all_true() -> bool:
        for name, check in checks.items():
            if name not in took:
                with contextlib.suppress(Exception):
                    if check():
                        took[name] = time.monotonic() - started
        return len(took) == len(checks)

    sandbox.wait_until(
        all_true,
        timeout=timeout,
        what=f"{sorted(checks)}",
        explain=lambda: f"got {took}\n{explain()}",
    )
    return took


def witness_pass(db: Queryable, *, timeout: float = 30) -> None:
    """Queue a build that does nothing, below every other, and wait until a worker has run it.

    Workers take due jobs highest priority first: once this one has run, every job that was due
    went before it, so whatever still waits was not due (paused, or waiting out a retry).
    """
    product_id = value(
        db,
        "INSERT INTO raw_products (external_id, brand, image_urls, image_status)"
        " VALUES (%s, 'witness', '[]', 'collage_ready') RETURNING id",
        [f"witness-{uuid.uuid4().hex[:10]}"],
    )
    job_id = value(
        db,
        "SELECT (procrastinate_defer_jobs_v1(ARRAY[ROW('collage', 'collage.build', %s, NULL,"
        " NULL, jsonb_build_object('product_id', %s::bigint), NULL)"
        "::procrastinate_job_to_defer_v1]))[1]",
        [LOWEST_PRIORITY, product_id],
    )
    sandbox.wait_until(
        lambda: (
            value(db, "SELECT status::text FROM procrastinate_jobs WHERE id = %s", [job_id])
            == "succeeded"
        ),
        timeout=timeout,
        what="a worker to run a build queued below every other",
    )


def job_states(db: Queryable, product_ids: Sequence[int]) -> set[str]:
    """The states of these SKUs' build jobs."""
    found = rows(
        db,
        "SELECT DISTINCT status::text FROM procrastinate_jobs WHERE lock = ANY(%s)",
        [[f"product:{pid}" for pid in product_ids]],
    )
    return {state for (state,) in found}
