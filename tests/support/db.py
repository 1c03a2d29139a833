"""The tests' own connection to a database that may go away, and queries on either kind."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import psycopg

Params = Sequence[Any] | Mapping[str, Any] | None


class Db:
    """The test's own autocommit connection; it reconnects after an outage on its next use."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._conn: psycopg.Connection | None = None

    def rows(self, query: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> list:
        """Run one statement and return its rows (reconnecting once if the server went away)."""
        for attempt in (1, 2):
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=3)
            try:
                cur = self._conn.execute(query, params)
                return cur.fetchall() if cur.description else []
            except (psycopg.OperationalError, psycopg.InterfaceError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def value(self, query: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> Any:
        """Run one statement and return the first column of its first row."""
        return self.rows(query, params)[0][0]

    @property
    def pid(self) -> int:
        return int(self.value("SELECT pg_backend_pid()"))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


Queryable = psycopg.Connection[Any] | Db


def rows(db: Queryable, query: str, params: Params = None) -> list[Any]:
    """Run one statement on a plain connection or a Db; return its rows."""
    if isinstance(db, Db):
        return db.rows(query, params)
    cur = db.execute(query, params)
    return cur.fetchall() if cur.description else []


def value(db: Queryable, query: str, params: Params = None) -> Any:
    """The first column of the first row."""
    return rows(db, query, params)[0][0]
