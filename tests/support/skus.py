"""SKUs as the downloader makes them: photos in the bucket, a row in raw_products; and waiting."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import psycopg

from collage.settings import Settings
from dev import sandbox
from tests.conftest import WorkerThread

StartWorker = Callable[..., WorkerThread]


def add_product(
    db: psycopg.Connection,
    urls: object,
    *,
    brand: str = "zara",
    external_id: str | None = None,
    status: str = "uploaded",
) -> int:
    row = db.execute(
        "INSERT INTO raw_products (external_id, brand, image_urls, image_status)"
        " VALUES (%s, %s, %s, %s) RETURNING id",
        [external_id or f"sku-{time.monotonic_ns()}", brand, json.dumps(urls), status],
    ).fetchone()
    assert row
    return int(row[0])


ORIGINALS = "originals/"  # where the downloader puts photos, and the worker may read them


def upload(s3, settings: Settings, photos: dict[str, bytes]) -> list[str]:
    """Put photos under originals/ as the downloader does; return their s3:// URLs."""
    keys = [key if key.startswith(ORIGINALS) else ORIGINALS + key for key in photos]
    for key, data in zip(keys, photos.values(), strict=True):
        s3.put_object(Bucket=settings.s3_bucket, Key=key, Body=data)
    return [f"s3://{settings.s3_bucket}/{key}" for key in keys]


def wait_settled(db: psycopg.Connection, product_id: int, timeout: float = 30) -> tuple:
    """Wait until the SKU has left 'uploaded' and no job for it waits or runs."""

    def settled() -> bool:
        row = db.execute(
            "SELECT p.image_status <> 'uploaded' AND NOT EXISTS (SELECT 1 FROM procrastinate_jobs"
            " WHERE lock = %s AND status IN ('todo', 'doing')) FROM raw_products p WHERE id = %s",
            [f"product:{product_id}", product_id],
        ).fetchone()
        return bool(row and row[0])

    sandbox.wait_until(settled, timeout=timeout, what=f"product {product_id} to settle")
    row = db.execute(
        "SELECT image_status, collage_url, error_message FROM raw_products WHERE id = %s",
        [product_id],
    ).fetchone()
    assert row
    return row


def env_of(settings: Settings) -> dict[str, str]:
    return {
        "STAGING_DB_URL": settings.db_url,
        "STAGING_DB_SESSION_URL": settings.db_session_url,
        "S3_ENDPOINT": settings.s3_endpoint,
        "S3_ACCESS_KEY": settings.s3_access_key,
        "S3_SECRET_KEY": settings.s3_secret_key,
        "S3_BUCKET": settings.s3_bucket,
        "S3_PUBLIC_URL": settings.s3_public_url,
        "TEMP_DIR": str(settings.temp_dir),
        "LOG_FORMAT": "text",
    }
