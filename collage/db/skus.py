"""SQL that finds SKUs and what became of them: by id or name, photos, outcomes, collages."""

from __future__ import annotations

import psycopg

from collage.db.connect import Row
from collage.text import shown


def find_product(conn: psycopg.Connection[Row], ref: str) -> Row | None:
    """Find a SKU by id or by BRAND/EXTERNAL_ID."""
    params: list[object]
    if ref.isascii() and ref.isdigit() and len(ref) < 19:
        query, params = "SELECT * FROM collage_sku_jobs WHERE product_id = %s", [int(ref)]
    elif "/" in ref:
        brand, external_id = ref.split("/", 1)
        query = "SELECT * FROM collage_sku_jobs WHERE brand = %s AND external_id = %s"
        params = [brand, external_id]
    else:
        raise ValueError(f"'{shown(ref)}' is neither a product id nor BRAND/EXTERNAL_ID")
    return conn.execute(query, params).fetchone()


_SEARCH_COLUMNS = "SELECT id AS product_id, brand, external_id, image_status, updated_at"
_SEARCH = {
    "id": f"{_SEARCH_COLUMNS} FROM raw_products WHERE id = %(id)s LIMIT %(limit)s",
    "brand": f"{_SEARCH_COLUMNS} FROM raw_products WHERE brand = %(brand)s"
    " AND external_id = %(ext)s ORDER BY id LIMIT %(limit)s",
    "external_id": f"{_SEARCH_COLUMNS} FROM raw_products WHERE external_id = %(ext)s"
    " ORDER BY id LIMIT %(limit)s",
}


def search_products(conn: psycopg.Connection[Row], text: str, *, limit: int = 50) -> list[Row]:
    """Find SKUs by id, BRAND/EXTERNAL_ID, or an external_id alone (any brand), exactly."""
    text = text.strip()
    params: dict[str, object]
    if text.isascii() and text.isdigit():
        kind, params = "id", {"id": int(text) if len(text) < 19 else -1}
    elif "/" in text:
        brand, external_id = text.split("/", 1)
        kind, params = "brand", {"brand": brand.strip(), "ext": external_id.strip()}
    else:
        kind, params = "external_id", {"ext": text}
    return conn.execute(_SEARCH[kind], {**params, "limit": limit}).fetchall()


def product(conn: psycopg.Connection[Row], product_id: int) -> Row | None:
    """One SKU as the console shows it: its row, its latest job and its last error."""
    return conn.execute(
        "SELECT v.*, p.image_urls, p.upload_generation, p.uploaded_at"
        " FROM collage_sku_jobs v JOIN raw_products p ON p.id = v.product_id"
        " WHERE v.product_id = %s",
        [product_id],
    ).fetchone()


def photos_of(conn: psycopg.Connection[Row], product_id: int) -> Row | None:
    """What a SKU's previews are read from: its photo URLs, its collage and its version."""
    return conn.execute(
        "SELECT id AS product_id, brand, external_id, image_urls, image_status, collage_url,"
        " upload_generation, updated_at FROM raw_products WHERE id = %s",
        [product_id],
    ).fetchone()


def outcomes_of(conn: psycopg.Connection[Row], product_id: int, *, limit: int = 50) -> list[Row]:
    """A SKU's finished attempts, newest first."""
    return conn.execute(
        "SELECT id, job_id, outcome, error_class, message, photos, bytes_out, duration_s,"
        " finished_at FROM collage_outcomes WHERE product_id = %s"
        " ORDER BY finished_at DESC, id DESC LIMIT %s",
        [product_id, limit],
    ).fetchall()


def latest_collages(
    conn: psycopg.Connection[Row], *, limit: int = 12, before: int | None = None
) -> list[Row]:
    """The SKUs built most recently and still 'collage_ready', newest first.

    Read from the latest 'built' outcomes (the ledger's primary key, newest first), not from
    raw_products: no index orders a million SKUs by when they were built. `before` pages on.
    """
    return conn.execute(
        """
        WITH built AS (
            SELECT o.product_id, max(o.id) AS outcome_id
              FROM (SELECT product_id, id FROM collage_outcomes
                     WHERE outcome = 'built' AND (%(before)s::bigint IS NULL OR id < %(before)s)
                     ORDER BY id DESC LIMIT %(scan)s) o
             GROUP BY o.product_id
        )
        SELECT b.outcome_id, p.id AS product_id, p.brand, p.external_id, p.collage_url,
               p.upload_generation, p.updated_at, o.photos, o.bytes_out, o.finished_at
          FROM built b
          JOIN raw_products p ON p.id = b.product_id AND p.image_status = 'collage_ready'
          JOIN collage_outcomes o ON o.id = b.outcome_id
         ORDER BY b.outcome_id DESC
         LIMIT %(limit)s
        """,
        {"limit": limit, "scan": limit * 4, "before": before},
    ).fetchall()
