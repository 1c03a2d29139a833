"""What a database must have before `collage migrate` writes anything to it, said in one line.

The downloader's tables exist already in staging and production, with columns, constraints and
owners of their own: the project needs some of their columns, of compatible types, and a role
that may add its triggers, indexes and columns. Everything missing is found before the first
write, so a refused migration leaves the database exactly as it was.
"""

from __future__ import annotations

from typing import Any

import psycopg

# The columns the project reads and writes, and the kinds of type each may have.
_TEXT = frozenset({"text", "varchar", "bpchar"})
_INTEGER = frozenset({"int2", "int4", "int8"})
_TIME = frozenset({"timestamptz", "timestamp"})
_NUMBER = frozenset({"int2", "int4", "int8", "numeric", "float4", "float8"})
NEEDED: dict[str, dict[str, frozenset[str]]] = {
    "raw_products": {
        "id": _INTEGER,
        "brand": _TEXT,
        "external_id": _TEXT,
        "image_urls": frozenset({"jsonb"}),
        "collage_url": _TEXT,
        "image_status": _TEXT,
        "error_message": _TEXT,
        "updated_at": _TIME,
    },
    "scraper_logs": {
        "scraper_name": _TEXT,
        "status": _TEXT,
        "records_fetched": _INTEGER,
        "records_new": _INTEGER,
        "records_errors": _INTEGER,
        "started_at": _TIME,
        "completed_at": _TIME,
        "duration_seconds": _NUMBER,
    },
}
# Tables the migrations add indexes, triggers or columns to: the role must own them.
ALTERED = ("raw_products", "scraper_logs", "procrastinate_jobs")


class NotReady(Exception):
    """The database cannot take the migrations as it is; the message names everything missing."""


def check(conn: psycopg.Connection[Any]) -> None:
    """Raise NotReady naming every problem, or return having written nothing."""
    found = [*_encoding(conn), *_schema_rights(conn), *_columns(conn), *_ownership(conn)]
    if found:
        raise NotReady(f"cannot migrate database {conn.info.dbname}: {'; '.join(found)}")


def _encoding(conn: psycopg.Connection[Any]) -> list[str]:
    # Reported by the server at connection time: no query, whose text could not be decoded.
    encoding, name = conn.info.parameter_status("server_encoding"), conn.info.dbname
    if encoding == "UTF8":
        return []
    return [
        f"it is encoded {encoding}; collage needs UTF8"
        f" (CREATE DATABASE {name} ENCODING 'UTF8' TEMPLATE template0)"
    ]


_RIGHTS = """
SELECT current_user, current_schema(),
       current_schema() IS NOT NULL AND has_schema_privilege(current_schema(), 'CREATE')
"""
_COLUMNS = """
SELECT c.relname, a.attname, t.typname
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_type t ON t.oid = a.atttypid
 WHERE c.oid = ANY(ARRAY[to_regclass('raw_products'), to_regclass('scraper_logs')])
   AND a.attnum > 0 AND NOT a.attisdropped
"""


def _schema_rights(conn: psycopg.Connection[Any]) -> list[str]:
    row = conn.execute(_RIGHTS).fetchone()
    assert row is not None
    user, schema, may_create = row
    if schema is None:
        return [f"no schema of role {user}'s search_path exists"]
    if may_create:
        return []
    # PostgreSQL 15 no longer lets every role create in public.
    return [
        f"role {user} may not create tables in schema {schema}"
        f" (GRANT CREATE ON SCHEMA {schema} TO {user}, or migrate as its owner)"
    ]


def _columns(conn: psycopg.Connection[Any]) -> list[str]:
    have: dict[str, dict[str, str]] = {}
    for table, column, kind in conn.execute(_COLUMNS).fetchall():
        have.setdefault(table, {})[column] = kind
    problems = []
    for table, needed in NEEDED.items():
        if table not in have:
            continue  # created by the first migration
        missing = [
            f"{c} ({'/'.join(sorted(k))})" for c, k in needed.items() if c not in have[table]
        ]
        wrong = [
            f"{c} is {have[table][c]}, not {'/'.join(sorted(k))}"
            for c, k in needed.items()
            if c in have[table] and have[table][c] not in k
        ]
        if missing:
            problems.append(f"{table} lacks {', '.join(missing)}")
        if wrong:
            problems.append(f"{table}.{'; '.join(wrong)}")
    return problems


def _ownership(conn: psycopg.Connection[Any]) -> list[str]:
    rows = conn.execute(
        "SELECT c.relname, pg_get_userbyid(c.relowner), current_user"
        " FROM pg_class c WHERE c.oid = ANY(%s::regclass[])"
        " AND NOT pg_has_role(current_user, c.relowner, 'USAGE')",
        [[f"{t}" for t in ALTERED if _exists(conn, t)]],
    ).fetchall()
    return [
        f"role {user} does not own {table} (owner {owner}): it cannot add the project's"
        f" triggers, indexes and columns; migrate as {owner}, or GRANT {owner} TO {user}"
        for table, owner, user in rows
    ]


def _exists(conn: psycopg.Connection[Any], table: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [table]).fetchone()
    return bool(row and row[0])
