"""Which running jobs still have a live worker, told by PostgreSQL itself.

Each job a worker runs holds a session-level advisory lock on a connection of the worker's own
(the session URL: through PgBouncer's session pool, whose reset on disconnect drops the lock
too). When the worker dies, its connection dies with it and PostgreSQL releases every lock at
once: the rescue sees the job as dead within seconds, where heartbeats alone would need minutes
to tell a dead worker from one draining its jobs at shutdown (it sends no heartbeat then, but
keeps its locks).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import psycopg

from collage.constants import (
    DEAD_WORKER_S,
    LIVENESS_LOCK_SPACE,
    MAINTENANCE_QUEUE,
    QUEUE,
    STALLED_WORKER_S,
)
from collage.db.connect import connect_async

logger = logging.getLogger(__name__)

_KEYS = 2**31  # the lock's second key is an int4: job ids wrap, and two live jobs never clash


def lock_key(job_id: int) -> int:
    """The second key of a job's advisory lock (the first is LIVENESS_LOCK_SPACE)."""
    return job_id % _KEYS


class Liveness:
    """The advisory locks of the jobs this worker runs, on one connection it keeps open."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: psycopg.AsyncConnection | None = None
        self._held: set[int] = set()
        self._guard = asyncio.Lock()

    async def hold(self, job_id: int) -> None:
        """Take the job's lock; a database that does not answer leaves it to the heartbeat."""
        async with self._guard:
            self._held.add(job_id)
            with contextlib.suppress(psycopg.Error):
                conn = await self._connection()
                await _lock(conn, job_id)

    async def release(self, job_id: int) -> None:
        """Let go of a finished job's lock."""
        async with self._guard:
            self._held.discard(job_id)
            if self._conn is not None and not self._conn.closed:
                with contextlib.suppress(psycopg.Error):
                    await self._conn.execute(
                        "SELECT pg_advisory_unlock(%s, %s)", [LIVENESS_LOCK_SPACE, lock_key(job_id)]
                    )

    async def check(self) -> None:
        """Raise unless the lock connection answers; reconnect (and lock again) if it died."""
        async with self._guard:
            conn = await self._connection()
            await conn.execute("SELECT 1")

    async def close(self) -> None:
        """Close the connection: PostgreSQL releases whatever it still holds."""
        async with self._guard:
            if self._conn is not None:
                await self._conn.close()
                self._conn = None

    async def _connection(self) -> psycopg.AsyncConnection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = await connect_async(self._dsn)
            if self._held:
                logger.warning(
                    "liveness connection opened again; locking the running jobs",
                    extra={"action": "liveness", "jobs": sorted(self._held)},
                )
            for job_id in sorted(self._held):
                await _lock(self._conn, job_id)
        return self._conn


async def _lock(conn: psycopg.AsyncConnection, job_id: int) -> None:
    cur = await conn.execute(
        "SELECT pg_try_advisory_lock(%s, %s)", [LIVENESS_LOCK_SPACE, lock_key(job_id)]
    )
    row = await cur.fetchone()
    if not (row and row[0]):
        logger.warning("job lock held elsewhere", extra={"action": "liveness", "job_id": job_id})


@dataclass(frozen=True)
class DeadJob:
    """A job left 'doing' by a worker that is gone."""

    id: int
    task_name: str
    args: dict[str, Any]


async def dead_jobs(conn: psycopg.AsyncConnection) -> list[DeadJob]:
    """Running jobs whose worker is gone: lock released and heartbeats stopped, or long silent.

    A job whose lock is still held is dead only when its worker has sent no heartbeat for
    STALLED_WORKER_S: its host vanished with its sockets open. A worker draining at shutdown
    sends none but holds its locks, for less than that.
    """
    cur = await conn.execute(
        """
        SELECT j.id, j.task_name, j.args FROM procrastinate_jobs j
          LEFT JOIN procrastinate_workers w ON w.id = j.worker_id
         WHERE j.status = 'doing' AND j.queue_name = ANY(%(queues)s)
           AND coalesce(w.last_heartbeat, '-infinity') < now() - make_interval(
                 secs => CASE WHEN EXISTS (
                              SELECT 1 FROM pg_locks l
                               WHERE l.locktype = 'advisory' AND l.granted
                                 AND l.database = (SELECT oid FROM pg_database
                                                    WHERE datname = current_database())
                                 AND l.classid = %(space)s::oid AND l.objsubid = 2
                                 AND l.objid = (j.id %% %(keys)s)::oid)
                          THEN %(stalled)s ELSE %(dead)s END)
         ORDER BY j.id
        """,
        {
            "queues": [QUEUE, MAINTENANCE_QUEUE],
            "space": LIVENESS_LOCK_SPACE,
            "keys": _KEYS,
            "stalled": STALLED_WORKER_S,
            "dead": DEAD_WORKER_S,
        },
    )
    return [DeadJob(*row) for row in await cur.fetchall()]
