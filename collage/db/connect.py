"""The one way this package opens database connections, with one set of options.

Every connection may go through PgBouncer's transaction pool, where consecutive transactions
can land on different server connections: psycopg's automatic prepared statements would then
fail, so they are off everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import psycopg

# A database that does not answer within this is reported, not waited on: a job's own retry,
# the worker's restart and `collage health` all have shorter ways through an outage.
CONNECT_TIMEOUT_S = 5
OPTIONS: dict[str, Any] = {"prepare_threshold": None, "connect_timeout": CONNECT_TIMEOUT_S}


def connect(dsn: str) -> psycopg.Connection:
    """Open an autocommit connection (a statement is its own transaction unless grouped)."""
    return psycopg.connect(dsn, autocommit=True, **OPTIONS)


async def connect_async(dsn: str) -> psycopg.AsyncConnection:
    """Open an autocommit async connection (LISTEN, the CLI's async commands)."""
    return await psycopg.AsyncConnection.connect(dsn, autocommit=True, **OPTIONS)


def pool_options(conninfo: Callable[[], Coroutine[Any, Any, str]]) -> dict[str, Any]:
    """Options for the worker's connection pool, whose connections the pool commits."""
    return {"conninfo": conninfo, "kwargs": dict(OPTIONS)}
