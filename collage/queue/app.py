"""The Procrastinate app: queries through the transaction pool, LISTEN through the session pool.

Nothing connects or reads the environment at import: `app` (for `procrastinate --app=...`)
resolves its settings on its first connection; `collage worker` and the tests point it at
their own settings with `bind`.
"""

from __future__ import annotations

import contextlib
import logging
import time
import weakref
from collections.abc import AsyncGenerator, Callable
from typing import Any

import procrastinate
import psycopg
import psycopg_pool

from collage.backoff import Backoff
from collage.constants import (
    GRACEFUL_TIMEOUT_S,
    HEARTBEAT_EVERY_S,
    MAINTENANCE_QUEUE,
    QUEUE,
    STALLED_WORKER_S,
)
from collage.db import connect_async, pool_options
from collage.errors import one_line
from collage.settings import Settings, from_environment

logger = logging.getLogger(__name__)

# A job held back by its SKU's lock starts at the next poll, not on a notification.
POLLING_INTERVAL_S = 1.0
LISTEN_BACKOFF = Backoff(first_s=0.1, max_s=5.0)  # through an outage, for as long as it lasts
# A pooled connection used this recently is not checked again as it is checked out.
PROVEN_FOR_S = 1.0


class SplitConnector(procrastinate.PsycopgConnector):
    """A PsycopgConnector whose LISTEN connection uses its own (session-mode) URL.

    Procrastinate opens LISTEN from its pool's settings, which in production point at a
    transaction-mode PgBouncer where notifications never arrive. This overrides that one
    private hook, and keeps retrying the connection through an outage so that LISTEN comes
    back instead of dying silently. tests/integration/queue/test_build.py runs a worker through real
    PgBouncer pools with polling off; tests/faults/ restarts them under it.
    """

    def __init__(self, *, listen_conninfo: Callable[[], str], **pool_kwargs: Any) -> None:
        super().__init__(**pool_kwargs)
        self._listen_conninfo = listen_conninfo

    async def _create_pool(self, pool_args: dict[str, Any]) -> psycopg_pool.AsyncConnectionPool:
        """Procrastinate's pool, with autocommit and checks only where they can find something.

        Autocommit: a single statement (Procrastinate's fetch and finish, reading a SKU) is its
        own transaction, without a BEGIN and a COMMIT around it; what must be atomic says so
        (`conn.transaction()`). A connection checked out again moments after its last use has
        just proven itself (a broken one is discarded as it comes back): only one idle for a
        while is checked, and a failure then is a database step's retry (resources.retry_db).
        """
        kwargs = {**pool_args.get("kwargs", {}), "autocommit": True}
        return psycopg_pool.AsyncConnectionPool(
            **{**pool_args, "kwargs": kwargs}, open=False, check=_check_if_idle()
        )

    @contextlib.asynccontextmanager
    async def _get_standalone_connection(self) -> AsyncGenerator[psycopg.AsyncConnection]:
        def on_retry(exc: BaseException, delay: float) -> None:
            logger.warning(
                "listen connection failed; retrying",
                extra={"action": "listen", "error": one_line(exc), "retry_in_s": delay},
            )

        connection = await LISTEN_BACKOFF.call(
            lambda: connect_async(self._listen_conninfo()),
            on=psycopg.OperationalError,
            on_retry=on_retry,
        )
        async with connection:
            logger.info("listening for new jobs", extra={"action": "listen"})
            yield connection


def _check_if_idle(idle_s: float = PROVEN_FOR_S) -> Callable[[Any], Any]:
    """A pool check that asks the server only about connections idle for `idle_s` or more."""
    last_out: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()

    async def check(conn: psycopg.AsyncConnection[Any]) -> None:
        now = time.monotonic()
        recently = now - last_out.get(conn, -idle_s) < idle_s
        last_out[conn] = now
        if not recently:
            await psycopg_pool.AsyncConnectionPool.check_connection(conn)

    return check


def make_connector(settings_source: Callable[[], Settings], *, pool_max: int = 8) -> SplitConnector:
    """Build the connector; `settings_source` is called when the first connection is made."""

    async def conninfo() -> str:
        return settings_source().db_url

    return SplitConnector(
        listen_conninfo=lambda: settings_source().db_session_url,
        **pool_options(conninfo),
        min_size=1,
        max_size=pool_max,
        # Fail a query after 10 s without a connection rather than the default 30 s: a job's own
        # retry and the worker's restart are faster ways through an outage.
        timeout=10,
        # Drop a connection that PgBouncer or PostgreSQL has closed instead of failing a job on it.
        reconnect_timeout=60,
    )


def pool_of(app: procrastinate.App) -> psycopg_pool.AsyncConnectionPool:
    """The open app's pool of transaction-mode connections (the app's SQL, Procrastinate's)."""
    connector = app.connector
    assert isinstance(connector, procrastinate.PsycopgConnector), connector
    return connector.pool


def bind(settings: Settings) -> contextlib.AbstractContextManager[procrastinate.App]:
    """Point `app` at `settings` for the duration of a block (`collage worker`, tests, demo)."""
    return app.replace_connector(
        make_connector(lambda: settings, pool_max=settings.worker_concurrency + 5)
    )


# For `procrastinate --app=collage.queue.app.app ...` too; nothing connects until it is opened.
app = procrastinate.App(
    connector=make_connector(from_environment),
    import_paths=["collage.queue.build", "collage.queue.periodic"],
    worker_defaults={
        "queues": [QUEUE, MAINTENANCE_QUEUE],
        "fetch_job_polling_interval": POLLING_INTERVAL_S,
        "shutdown_graceful_timeout": GRACEFUL_TIMEOUT_S,
        "stalled_worker_timeout": STALLED_WORKER_S,
        "update_heartbeat_interval": HEARTBEAT_EVERY_S,
    },
)
