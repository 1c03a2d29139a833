"""SKUs as the downloader makes them (photos in S3, rows in raw_products), and their fate."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Sequence

import psycopg
from psycopg.types.json import Jsonb

from collage.settings import Settings
from dev import sandbox
from tests.conftest import WorkerThread
from tests.support.db import Queryable, rows, value

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


def add_products(
    db: Queryable,
    image_urls: list[object],
    *,
    brands: list[str] | None = None,
    external_ids: list[str] | None = None,
    status: str = "uploaded",
) -> list[int]:
    """Insert SKUs in one statement (one transaction); return their ids in order."""
    count = len(image_urls)
    ids = external_ids or [f"sku-{uuid.uuid4().hex[:10]}" for _ in range(count)]
    found = rows(
        db,
        "INSERT INTO raw_products (external_id, brand, image_urls, image_status)"
        " SELECT e, b, u, %s"
        " FROM unnest(%s::text[], %s::text[], %s::jsonb[]) AS t(e, b, u) RETURNING id, external_id",
        [
            status,
            ids,
            brands or ["faults"] * count,
            [
                urls if urls is None or isinstance(urls, Jsonb) else Jsonb(urls)
                for urls in image_urls
            ],
        ],
    )
    by_external = {external_id: product_id for product_id, external_id in found}
    return [by_external[e] for e in ids]


def status_of(db: Queryable, product_id: int) -> str:
    """The SKU's image_status now."""
    return str(value(db, "SELECT image_status FROM raw_products WHERE id = %s", [product_id]))


def statuses(db: Queryable, ids: Sequence[int]) -> dict[int, tuple]:
    """Each SKU's (image_status, error_message, collage_url)."""
    found = rows(
        db,
        "SELECT id, image_status, error_message, collage_url FROM raw_products WHERE id = ANY(%s)",
        [list(ids)],
    )
    return {row[0]: row[1:] for row in found}


def unsettled(db: Queryable, ids: Sequence[int]) -> int:
    """How many of these SKUs are still 'uploaded' or have a build job waiting or running."""
    return int(
        value(
            db,
            "SELECT count(*) FROM raw_products p WHERE p.id = ANY(%(ids)s) AND ("
            " p.image_status = 'uploaded' OR EXISTS (SELECT 1 FROM procrastinate_jobs j"
            " WHERE j.lock = 'product:' || p.id AND j.status IN ('todo', 'doing')))",
            {"ids": list(ids)},
        )
    )


def describe_unsettled(db: Queryable, ids: Sequence[int]) -> str:
    """The SKUs not settled yet, each with its status and its jobs: what a timeout should say."""
    found = rows(
        db,
        "SELECT p.id, p.image_status, coalesce(json_agg(json_build_object('job', j.id,"
        " 'status', j.status, 'worker', j.worker_id, 'args', j.args) ORDER BY j.id)"
        " FILTER (WHERE j.id IS NOT NULL), '[]') FROM raw_products p"
        " LEFT JOIN procrastinate_jobs j ON j.lock = 'product:' || p.id"
        " WHERE p.id = ANY(%(ids)s) GROUP BY p.id ORDER BY p.id",
        {"ids": list(ids)},
    )
    lines = [
        f"  SKU {pid} '{status}', jobs {jobs}"
        for pid, status, jobs in found
        if status == "uploaded" or any(j["status"] in ("todo", "doing") for j in jobs)
    ]
    return "\n".join(["unsettled:", *lines]) if lines else "every SKU settled"


def wait_settled(
    db: Queryable, ids: int | Sequence[int], *, timeout: float = 30, what: str = ""
) -> float:
    """Wait until every SKU has left 'uploaded' with no job waiting or running; return how long.

    A timeout lists each SKU still unsettled, with its jobs.
    """
    ids = [ids] if isinstance(ids, int) else list(ids)
    return sandbox.wait_until(
        lambda: unsettled(db, ids) == 0,
        timeout=timeout,
        what=what or f"{len(ids)} SKU(s) to settle",
        explain=lambda: describe_unsettled(db, ids),
    )


def final_state(db: Queryable, product_id: int, *, timeout: float = 30) -> tuple:
    """Wait until the SKU has settled; return its (image_status, collage_url, error_message)."""
    wait_settled(db, product_id, timeout=timeout)
    return tuple(
        rows(
            db,
            "SELECT image_status, collage_url, error_message FROM raw_products WHERE id = %s",
            [product_id],
        )[0]
    )
