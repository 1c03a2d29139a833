"""SQL of one build on raw_products: start it, claim the SKU, publish the collage or fail it.

Every function takes an open async connection and leaves the transaction to its caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection, AsyncCursor

from collage.db.products import MESSAGE_CHARS, Product

# A SKU's collage key is collages/{brand}/{external_id}.jpg: two rows with the same pair would
# write the same object. The newer upload owns it; the other row is marked 'error' naming it.
KEY_TAKEN = (
    "{key} now belongs to SKU {owner}, which has the same brand and external_id and a newer upload"
)


async def start(
    conn: AsyncConnection, product_id: int, *, generation: int | None
) -> Product | None:
    """Read one SKU as it is now and, when it is to be built, note the build's first step.

    One round trip: the step ('downloading N photos') is in the database before anything that
    could kill the worker, for the rescue to name (db.progress).
    """
    cur = await conn.execute(
        """
        WITH p AS (
            SELECT id, external_id, brand, image_urls, image_status, upload_generation,
                   uploaded_at, collage_paused(brand) AS paused
              FROM raw_products WHERE id = %(id)s
        ), photos AS (
            SELECT p.*, CASE WHEN jsonb_typeof(image_urls) = 'array'
                             THEN jsonb_array_length(image_urls) END AS n FROM p
        ), noted AS (
            INSERT INTO collage_progress AS g (product_id, generation, step)
            SELECT id, upload_generation,
                   CASE WHEN n IS NULL THEN 'reading its photos'
                        ELSE 'downloading ' || n || CASE WHEN n = 1 THEN ' photo' ELSE ' photos' END
                   END
              FROM photos
             WHERE image_status = 'uploaded' AND NOT paused
               AND (%(generation)s::bigint IS NULL OR upload_generation = %(generation)s)
            ON CONFLICT (product_id) DO UPDATE
               SET deaths = CASE WHEN g.generation = EXCLUDED.generation THEN g.deaths ELSE 0 END,
                   generation = EXCLUDED.generation, step = EXCLUDED.step, updated_at = now()
        )
        SELECT id, external_id, brand, image_urls, image_status, upload_generation, uploaded_at,
               paused FROM p
        """,
        {"id": product_id, "generation": generation},
    )
    row = await cur.fetchone()
    return Product(*row) if row else None


@dataclass(frozen=True)
class Published:
    """What publishing a built collage ended in: the outcome recorded, and who else it touched."""

    outcome: str  # built | error (the key is taken) | superseded
    message: str | None  # the error_message written, for 'error'
    displaced: list[int]  # older rows naming the same key, now 'error'


async def publish(
    conn: AsyncConnection,
    product: Product,
    *,
    collage_url: str,
    key: str,
    owner: int | None,
    job_id: int | None,
    photos: int,
    bytes_out: int,
    duration_s: float,
    quality: int,
) -> AsyncCursor[Any]:
    """Claim the SKU and record its collage, or why not, and the attempt, in one statement.

    What claim, newer_owner, mark_ready, mark_error, outcomes.record and progress.forget do one
    by one, in one round trip. `owner` is the newer owner found before the upload (none was
    uploaded then); the check is made again here, after the row is locked. The result is read
    with `published`, so that a pipeline can send the COMMIT first.
    """
    cur = await conn.execute(
        """
        WITH claimed AS (
            SELECT id FROM raw_products
             WHERE id = %(id)s AND image_status = 'uploaded' AND upload_generation = %(generation)s
               FOR UPDATE
        ), newer AS (
            SELECT o.id FROM raw_products o
             WHERE o.brand = %(brand)s AND o.external_id = %(external_id)s AND o.id <> %(id)s
               AND o.image_status IN ('uploaded', 'collage_ready')
               AND (coalesce(o.uploaded_at, '-infinity'), o.id)
                   > (coalesce(%(uploaded_at)s::timestamptz, '-infinity'), %(id)s)
               AND EXISTS (SELECT 1 FROM claimed)
             ORDER BY o.uploaded_at DESC NULLS LAST, o.id DESC LIMIT 1
        ), decided AS (
            SELECT c.id, coalesce(%(owner)s::bigint, (SELECT id FROM newer)) AS owner
              FROM claimed c
        ), ready AS (
            UPDATE raw_products p SET collage_url = %(url)s, image_status = 'collage_ready',
                   error_message = NULL, updated_at = now()
              FROM decided d WHERE p.id = d.id AND d.owner IS NULL
            RETURNING p.id
        ), taken AS (
            UPDATE raw_products p SET image_status = 'error', updated_at = now(),
                   error_message = left(%(taken_head)s || d.owner || %(taken_tail)s, %(chars)s)
              FROM decided d WHERE p.id = d.id AND d.owner IS NOT NULL
            RETURNING p.error_message
        ), rounds AS (
            DELETE FROM collage_retry_rounds WHERE product_id IN (SELECT id FROM ready)
        ), displaced AS (
            UPDATE raw_products SET image_status = 'error', error_message = %(displaced)s,
                   updated_at = now()
             WHERE brand = %(brand)s AND external_id = %(external_id)s AND id <> %(id)s
               AND image_status IN ('uploaded', 'collage_ready')
               AND (coalesce(uploaded_at, '-infinity'), id)
                   < (coalesce(%(uploaded_at)s::timestamptz, '-infinity'), %(id)s)
               AND EXISTS (SELECT 1 FROM ready)
            RETURNING id
        ), recorded AS (
            INSERT INTO collage_outcomes (product_id, job_id, outcome, error_class, message,
                                          photos, bytes_out, duration_s, quality)
            SELECT %(id)s, %(job_id)s, o.outcome,
                   CASE WHEN o.outcome = 'error' THEN 'KeyTaken' END,
                   (SELECT error_message FROM taken),
                   CASE WHEN o.outcome <> 'error' THEN %(photos)s END,
                   CASE WHEN o.outcome <> 'error' THEN %(bytes_out)s END,
                   %(duration_s)s,
                   CASE WHEN o.outcome <> 'error' THEN %(quality)s END
              FROM (SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM decided) THEN 'superseded'
                                WHEN EXISTS (SELECT 1 FROM taken) THEN 'error'
                                ELSE 'built' END AS outcome) o
            RETURNING outcome, message
        ), forgot AS (
            DELETE FROM collage_progress WHERE product_id = %(id)s
        )
        SELECT outcome, message, ARRAY(SELECT id FROM displaced ORDER BY id) FROM recorded
        """,
        {
            **_identity(product),
            "generation": product.generation,
            "url": collage_url,
            "owner": owner,
            # The message with the owner's id between: a key may hold any text, "{owner}" too.
            "taken_head": KEY_TAKEN.split("{owner}")[0].format(key=key),
            "taken_tail": KEY_TAKEN.split("{owner}")[1],
            "displaced": KEY_TAKEN.format(key=key, owner=product.id)[:MESSAGE_CHARS],
            "chars": MESSAGE_CHARS,
            "job_id": job_id,
            "photos": photos,
            "bytes_out": bytes_out,
            "duration_s": duration_s,
            "quality": quality,
        },
    )
    return cur


async def published(cur: AsyncCursor[Any]) -> Published:
    """Read what `publish` did, once its statement has run (in a pipeline: after the COMMIT)."""
    row = await cur.fetchone()
    assert row is not None
    return Published(outcome=row[0], message=row[1], displaced=list(row[2]))


async def claim(conn: AsyncConnection, product: Product) -> bool:
    """Lock the SKU's row; True while it is still the upload this build read.

    The lock comes before the check, so a re-upload that commits while this waits for the row
    is seen: its new generation makes this build's result stale.
    """
    cur = await conn.execute(
        "SELECT image_status = 'uploaded' AND upload_generation = %s"
        " FROM raw_products WHERE id = %s FOR UPDATE",
        [product.generation, product.id],
    )
    row = await cur.fetchone()
    return bool(row and row[0])


async def lock_collage_key(conn: AsyncConnection, key: str) -> None:
    """Take turns, until this transaction ends, with any build that writes the same key.

    A transaction-level advisory lock: safe through PgBouncer's transaction pool.
    """
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [key])


async def newer_owner(conn: AsyncConnection, product: Product) -> int | None:
    """Another row naming the same collage whose upload is newer than this one's, if any."""
    cur = await conn.execute(
        """
        SELECT id FROM raw_products
         WHERE brand = %(brand)s AND external_id = %(external_id)s AND id <> %(id)s
           AND image_status IN ('uploaded', 'collage_ready')
           AND (coalesce(uploaded_at, '-infinity'), id)
               > (coalesce(%(uploaded_at)s::timestamptz, '-infinity'), %(id)s)
         ORDER BY uploaded_at DESC NULLS LAST, id DESC LIMIT 1
        """,
        _identity(product),
    )
    row = await cur.fetchone()
    return int(row[0]) if row else None


async def mark_error(conn: AsyncConnection, product: Product, *, message: str) -> None:
    """Mark a claimed SKU broken with one line an operator can act on."""
    await conn.execute(
        "UPDATE raw_products SET image_status = 'error', error_message = %s, updated_at = now()"
        " WHERE id = %s",
        [message[:MESSAGE_CHARS], product.id],
    )


def _identity(product: Product) -> dict[str, Any]:
    return {
        "id": product.id,
        "brand": product.brand,
        "external_id": product.external_id,
        "uploaded_at": product.uploaded_at,
    }
