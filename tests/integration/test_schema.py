"""schema.sql says what the migrations add up to: the two give the same catalog."""

from __future__ import annotations

from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import psycopg
import pytest

from dev import sandbox

SCHEMA = Path(__file__).parents[2] / "schema.sql"

# Every object in the public schema, by kind and name, with its definition as PostgreSQL prints it.
CATALOG = """
SELECT 'column', c.relname || '.' || lpad(a.attnum::text, 3, '0') || ' ' || a.attname,
       format_type(a.atttypid, a.atttypmod) || CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END
       || coalesce(' DEFAULT ' || pg_get_expr(d.adbin, d.adrelid), '')
  FROM pg_attribute a
  JOIN pg_class c ON c.oid = a.attrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE n.nspname = 'public' AND c.relkind IN ('r', 'v') AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT 'constraint', c.conrelid::regclass || '.' || c.conname, pg_get_constraintdef(c.oid)
  FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname = 'public'
UNION ALL
SELECT 'index', indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'
UNION ALL
SELECT 'view', viewname, definition FROM pg_views WHERE schemaname = 'public'
UNION ALL
SELECT 'function', p.oid::regprocedure::text, pg_get_functiondef(p.oid)
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public'
UNION ALL
SELECT 'trigger', t.tgrelid::regclass || '.' || t.tgname, pg_get_triggerdef(t.oid)
  FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'public' AND NOT t.tgisinternal
"""


def catalog(dsn: str) -> dict[tuple[str, str], str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(CATALOG).fetchall()
    # The migration runner's ledger is not part of the schema it describes.
    return {
        (kind, name): definition
        for kind, name, definition in rows
        if "collage_migrations" not in name
    }


@pytest.fixture
def from_schema_file(admin_dsn: str) -> Iterator[str]:
    """A database made from Procrastinate's schema.sql, then this project's schema.sql."""
    dsn = sandbox.create_database(admin_dsn, prefix="collage_schema")
    procrastinate = (resources.files("procrastinate.sql") / "schema.sql").read_text("utf-8")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(procrastinate)
        conn.execute(SCHEMA.read_text("utf-8"))
    yield dsn
    sandbox.drop_database(admin_dsn, dsn)


def test_schema_sql_is_what_the_migrations_add_up_to(db_dsn: str, from_schema_file: str) -> None:
    migrated, described = catalog(db_dsn), catalog(from_schema_file)
    assert any(kind == "trigger" for kind, _ in migrated)  # the query sees the project's objects
    only_migrated = sorted(set(migrated) - set(described))
    only_described = sorted(set(described) - set(migrated))
    assert (only_migrated, only_described) == ([], []), "objects in one and not the other"
    differ = {
        key: (migrated[key], described[key]) for key in migrated if migrated[key] != described[key]
    }
    assert differ == {}, "schema.sql defines these differently from the migrations"
