"""A copy of the production staging database as a new user brings it: their tables, their rules.

raw_products and scraper_logs with columns, constraints, triggers and history of their own, a
CHECK that allows only the downloader's statuses, and 20,000 rows in every state, months of them
(errors another worker left included), all there before collage is migrated onto it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg

from dev import sandbox

STATUSES = ("pending", "downloading", "uploaded", "collage_ready", "error")
BRANDS = ("zara", "hm", "mango", "cos")
ROWS = 20_000
OLD_ERROR = "celery: photo download timed out"

SCHEMA = """
CREATE TABLE raw_products (
    id            bigserial PRIMARY KEY,
    external_id   varchar(100) NOT NULL,
    brand         varchar(50)  NOT NULL,
    title         text,
    price         numeric(10, 2),
    image_urls    jsonb,
    collage_url   text,
    image_status  varchar(20) NOT NULL DEFAULT 'pending'
        CONSTRAINT raw_products_image_status_check
        CHECK (image_status IN ('pending', 'downloading', 'uploaded', 'collage_ready', 'error')),
    error_message text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT raw_products_brand_external_id_key UNIQUE (brand, external_id)
);

CREATE TABLE raw_products_status_history (
    id         bigserial PRIMARY KEY,
    product_id bigint NOT NULL,
    old_status text,
    new_status text,
    changed_at timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION staging_touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;
CREATE TRIGGER raw_products_touch BEFORE UPDATE ON raw_products
    FOR EACH ROW EXECUTE FUNCTION staging_touch();

CREATE FUNCTION staging_history() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO raw_products_status_history (product_id, old_status, new_status)
    VALUES (NEW.id, OLD.image_status, NEW.image_status);
    RETURN NULL;
END;
$$;
CREATE TRIGGER raw_products_status_history AFTER UPDATE OF image_status ON raw_products
    FOR EACH ROW WHEN (OLD.image_status IS DISTINCT FROM NEW.image_status)
    EXECUTE FUNCTION staging_history();

CREATE TABLE scraper_logs (
    id               bigserial PRIMARY KEY,
    scraper_name     varchar(100) NOT NULL,
    status           varchar(20)  NOT NULL,
    records_fetched  integer NOT NULL DEFAULT 0,
    records_new      integer NOT NULL DEFAULT 0,
    records_updated  integer NOT NULL,
    records_errors   integer NOT NULL DEFAULT 0,
    error_details    jsonb,
    started_at       timestamptz NOT NULL,
    completed_at     timestamptz,
    duration_seconds double precision
);
"""

# Rows in every state, spread over 400 days; every fifth one an error the old worker left.
ROWS_SQL = """
INSERT INTO raw_products (external_id, brand, title, image_urls, image_status, error_message,
                          collage_url, updated_at)
SELECT 'stg-' || n, (%(brands)s::text[])[1 + n %% 4], 'product ' || n,
       jsonb_build_array('s3://elsewhere/originals/' || n || '.jpg'),
       (%(statuses)s::text[])[1 + n %% 5],
       CASE WHEN n %% 5 = 4 THEN %(old_error)s END,
       CASE WHEN n %% 5 = 3 THEN 'https://cdn.example/collages/' || n || '.jpg' END,
       now() - (n %% 400) * interval '1 day'
  FROM generate_series(1, %(rows)s) AS n
"""


def create(admin_dsn: str, *, rows: int = ROWS, schema: str = SCHEMA) -> str:
    """A new database holding the staging tables and their rows, collage not migrated yet."""
    dsn = sandbox.create_database(admin_dsn, prefix="collage_staging")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(schema)
        if rows:
            conn.execute(
                ROWS_SQL,
                {
                    "brands": list(BRANDS),
                    "statuses": list(STATUSES),
                    "old_error": OLD_ERROR,
                    "rows": rows,
                },
            )
    return dsn


def created(admin_dsn: str, **options: Any) -> Iterator[str]:
    """create() for a fixture: the database is dropped afterwards."""
    dsn = create(admin_dsn, **options)
    yield dsn
    sandbox.drop_database(admin_dsn, dsn)


# What the downloader's side of the schema is: every column, constraint, trigger and index of
# its two tables and of their history, as PostgreSQL prints them.
SHAPE = """
SELECT 'column', c.relname || '.' || a.attname,
       format_type(a.atttypid, a.atttypmod) || CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END
       || coalesce(' DEFAULT ' || pg_get_expr(d.adbin, d.adrelid), '')
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE c.relname = ANY(%(tables)s) AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT 'constraint', c.conname, pg_get_constraintdef(c.oid) FROM pg_constraint c
 WHERE c.conrelid = ANY(%(tables)s::regclass[])
UNION ALL
SELECT 'trigger', t.tgname, pg_get_triggerdef(t.oid) || ' ' || t.tgenabled::text FROM pg_trigger t
 WHERE t.tgrelid = ANY(%(tables)s::regclass[]) AND NOT t.tgisinternal
UNION ALL
SELECT 'index', indexname, indexdef FROM pg_indexes WHERE tablename = ANY(%(tables)s)
UNION ALL
SELECT 'function', p.proname, pg_get_functiondef(p.oid) FROM pg_proc p
 WHERE p.pronamespace = 'public'::regnamespace
UNION ALL
SELECT 'relation', c.relname, c.relkind::text FROM pg_class c
 WHERE c.relnamespace = 'public'::regnamespace
"""
TABLES = ["raw_products", "scraper_logs", "raw_products_status_history"]


def shape(dsn: str) -> set[tuple[str, str, str]]:
    """The catalog of the database's public schema, to compare before and after."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return {tuple(row) for row in conn.execute(SHAPE, {"tables": TABLES}).fetchall()}
