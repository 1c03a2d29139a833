"""The one way this package opens database connections, with one set of options.

Every connection may go through PgBouncer's transaction pool, where consecutive transactions
can land on different server connections: psycopg's automatic prepared statements would then
fail, so they are off everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import psycopg
from psycopg.rows import dict_row

# A database that does not answer within this is reported, not waited on: a job's own retry,
# the worker's restart and `collage health` all have shorter ways through an outage.
CONNECT_TIMEOUT_S = 5
OPTIONS: dict[str, Any] = {"prepare_threshold": None, "connect_timeout": CONNECT_TIMEOUT_S}

Row = dict[str, Any]


def connect(dsn: str) -> psycopg.Connection[tuple[Any, ...]]:
    """Open an autocommit connection (a statement is its own transaction unless grouped)."""
    return psycopg.connect(dsn, autocommit=True, **OPTIONS)


def connect_dicts(dsn: str) -> psycopg.Connection[Row]:
    """Open an autocommit connection whose rows come back as dicts (the CLI, the console)."""
    return psycopg.connect(dsn, autocommit=True, row_factory=dict_row, **OPTIONS)


async def connect_async(dsn: str) -> psycopg.AsyncConnection[tuple[Any, ...]]:
    """Open an autocommit async connection (LISTEN, liveness locks, the CLI's sweep)."""
    return await psycopg.AsyncConnection.connect(dsn, autocommit=True, **OPTIONS)


def pool_options(conninfo: Callable[[], Coroutine[Any, Any, str]]) -> dict[str, Any]:
    """Options for the worker's connection pool, whose connections the pool commits."""
    return {"conninfo": conninfo, "kwargs": dict(OPTIONS)}


def ping(conn: psycopg.Connection[Any]) -> None:
    """Raise unless the database answers."""
    conn.execute("SELECT 1")
