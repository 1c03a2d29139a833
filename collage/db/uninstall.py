"""Take the project out of a database, leaving the downloader's tables as they were before it.

The plan is read from the catalog (what exists now) and from the migrations (which indexes on
other tables are the project's): the triggers first, so that the downloader's next write no
longer reaches the queue, then the functions, views, indexes and tables, all in one transaction.
Procrastinate's objects go only if `collage migrate` installed them. The two columns the project
added to raw_products go only when asked: their values are the one record of upload generations.
"""

from __future__ import annotations

import re
from typing import Any

import psycopg
from psycopg import sql

from collage.db import migrate

_INDEX = re.compile(r"INDEX\s+(?:CONCURRENTLY\s+)?IF\s+NOT\s+EXISTS\s+(\w+)", re.IGNORECASE)
ADDED_COLUMNS = ("upload_generation", "uploaded_at")
OURS, PROCRASTINATE = "collage\\_%", "procrastinate\\_%"  # LIKE patterns of the two prefixes


def plan(conn: psycopg.Connection[Any], *, drop_columns: bool) -> list[sql.Composed]:
    """The statements that remove what exists of the project now, in the order they must run."""
    triggers = _names(
        conn,
        "SELECT tgname FROM pg_trigger WHERE tgrelid = to_regclass('raw_products')"
        " AND tgname LIKE %s ORDER BY tgname",
        [migrate.QUEUEING_TRIGGERS],
    )
    steps = [
        sql.SQL("DROP TRIGGER IF EXISTS {} ON raw_products").format(sql.Identifier(name))
        for name in triggers
    ]
    for kind in ("FUNCTION", "VIEW", "INDEX", "TABLE"):
        names = (
            [i for i in _project_indexes() if _exists(conn, i)]
            if kind == "INDEX"
            else _found(conn, kind, OURS)
        )
        steps += _drop(conn, kind, names)
    if _installed_procrastinate(conn):
        for kind in ("TABLE", "FUNCTION", "TYPE"):
            steps += _drop(conn, kind, _found(conn, kind, PROCRASTINATE), cascade=True)
    if drop_columns:
        present = [c for c in ADDED_COLUMNS if _has_column(conn, "raw_products", c)]
        if present:
            drops = sql.SQL(", ").join(
                sql.SQL("DROP COLUMN IF EXISTS {}").format(sql.Identifier(c)) for c in present
            )
            steps.append(sql.SQL("ALTER TABLE raw_products {}").format(drops))
    return steps


def run(conn: psycopg.Connection[Any], steps: list[sql.Composed]) -> None:
    """Run the plan in one transaction: all of it, or nothing."""
    with conn.transaction():
        conn.execute("SET LOCAL lock_timeout = '10s'")
        for step in steps:
            conn.execute(step)


def _project_indexes() -> list[str]:
    """Every index the project's migrations create (on its tables and on others')."""
    found: list[str] = []
    for migration in migrate.project_migrations():
        found += [name for name in _INDEX.findall(migration.sql()) if name not in found]
    return found


def _drop(
    conn: psycopg.Connection[Any], kind: str, names: list[str], *, cascade: bool = False
) -> list[sql.Composed]:
    statement = sql.SQL("DROP {} IF EXISTS {}{}")
    tail = sql.SQL(" CASCADE" if cascade else "")
    # A function is named by its signature, as regprocedure prints it (quoted where needed).
    return [
        statement.format(
            sql.SQL(kind), sql.SQL(n) if kind == "FUNCTION" else sql.Identifier(n), tail
        )
        for n in names
    ]


def _names(conn: psycopg.Connection[Any], query: str, params: list[object]) -> list[str]:
    return [str(row[0]) for row in conn.execute(query, params).fetchall()]


# What of the project's (or Procrastinate's) is in the schema, by kind; %s: a LIKE pattern.
_CATALOG = {
    "TABLE": "SELECT relname FROM pg_class WHERE relnamespace = current_schema()::regnamespace"
    " AND relkind = 'r' AND relname LIKE %s ORDER BY 1",
    "VIEW": "SELECT relname FROM pg_class WHERE relnamespace = current_schema()::regnamespace"
    " AND relkind = 'v' AND relname LIKE %s ORDER BY 1",
    # regprocedure prints a name only where the search_path finds it, quoted where need be.
    "FUNCTION": "SELECT oid::regprocedure::text FROM pg_proc"
    " WHERE pronamespace = current_schema()::regnamespace AND proname LIKE %s ORDER BY 1",
    # Enums and free-standing composite types: a table's row type goes with its table.
    "TYPE": "SELECT t.typname FROM pg_type t WHERE t.typnamespace = current_schema()::regnamespace"
    " AND t.typname LIKE %s AND t.typtype IN ('e', 'c') AND NOT EXISTS (SELECT 1 FROM pg_class c"
    " WHERE c.reltype = t.oid AND c.relkind <> 'c') ORDER BY 1",
}


def _found(conn: psycopg.Connection[Any], kind: str, like: str) -> list[str]:
    return _names(conn, _CATALOG[kind], [like])


def _exists(conn: psycopg.Connection[Any], name: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [name]).fetchone()
    return bool(row and row[0])


def _has_column(conn: psycopg.Connection[Any], table: str, column: str) -> bool:
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(%s)"
        " AND attname = %s AND NOT attisdropped)",
        [table, column],
    ).fetchone()
    return bool(row and row[0])


def _installed_procrastinate(conn: psycopg.Connection[Any]) -> bool:
    """True when the ledger says `collage migrate` installed Procrastinate's schema here."""
    if not _exists(conn, "collage_migrations"):
        return False
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM collage_migrations WHERE name LIKE %s)",
        [f"{migrate.PROCRASTINATE_PREFIX}schema-%"],
    ).fetchone()
    return bool(row and row[0])
