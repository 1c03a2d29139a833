"""What the tests read of the queue: jobs by state, pickups, overlapping builds, LISTEN."""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable, Mapping

import psycopg

from dev import sandbox
from tests.support.db import Db

# Procrastinate polls every POLLING_INTERVAL_S (1 s); a pickup this fast came from LISTEN.
LISTEN_PICKUP_S = 0.2


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


def defer_rescue(db: Db) -> None:
    """Queue the stalled-job rescue now instead of at the next minute's cron tick."""
    with contextlib.suppress(psycopg.errors.UniqueViolation):  # one is waiting already
        db.rows(
            "SELECT procrastinate_defer_jobs_v1(ARRAY[ROW('collage', 'collage.rescue', 0, NULL,"
            " 'collage.rescue', '{\"timestamp\": 0}'::jsonb, NULL)"
            "::procrastinate_job_to_defer_v1])"
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
