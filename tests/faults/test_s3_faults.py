"""S3 that fails, stalls or loses an object: transient errors retry, missing ones do not."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import botocore.config
import psycopg
import pytest
from psycopg.types.json import Jsonb

from collage.backoff import Backoff
from collage.errors import Transient
from collage.queue import settle
from collage.settings import Settings
from collage.storage import bucket as storage
from dev import sandbox
from dev.photos import jpeg
from dev.s3proxy import Fault, FaultyProxy, SlowGets, StallingS3
from tests.support.skus import upload

# --- 4. S3 faults ---------------------------------------------------------------------------


def _short_timeout_bucket(endpoint: str, name: str, *, read_timeout: float) -> storage.Bucket:
    client = sandbox.s3_client(
        endpoint,
        config=botocore.config.Config(
            s3={"addressing_style": "path"},
            connect_timeout=1,
            read_timeout=read_timeout,
            retries={"mode": "standard", "max_attempts": 2},
        ),
    )
    return storage.Bucket(client=client, name=name, endpoint=endpoint, public_url=endpoint)


@pytest.mark.slow
def test_an_s3_response_that_never_starts_is_a_transient_error_bounded_by_the_read_timeout(
    s3, s3_endpoint: str, s3_bucket: str
) -> None:
    s3.put_object(Bucket=s3_bucket, Key="originals/a.jpg", Body=b"x")
    slow = SlowGets(delay_s=30)
    proxy = FaultyProxy(s3_endpoint, slow)
    bucket = _short_timeout_bucket(proxy.endpoint, s3_bucket, read_timeout=0.5)
    started = time.monotonic()
    try:
        with pytest.raises(
            Transient, match=r"S3 unavailable while getting originals/a\.jpg: Read timeout"
        ):
            bucket.get("originals/a.jpg")
        took = time.monotonic() - started
    finally:
        slow.released.set()
        proxy.close()
        bucket.client.close()
    # Observed with botocore here: max_attempts=2 makes 3 requests on read timeouts (one more
    # than documented), so production's max_attempts=3, read_timeout=30 waits about 4 x 30 s.
    assert 2 <= slow.gets() <= 3
    assert took < 3 * 0.5 + 3  # the timeouts plus botocore's short backoff between them
    print(f"stall before headers: Transient after {took:.2f}s and {slow.gets()} GETs")


def test_an_s3_body_that_stalls_halfway_is_a_transient_error_not_a_hang() -> None:
    server = StallingS3()
    bucket = _short_timeout_bucket(server.endpoint, "stalled", read_timeout=0.5)
    started = time.monotonic()
    try:
        with pytest.raises(Transient, match=r"S3 unavailable while getting a\.jpg"):
            bucket.get("a.jpg")
        took = time.monotonic() - started
    finally:
        server.close()
        bucket.client.close()
    assert took < 5
    print(f"stall mid-body: Transient after {took:.2f}s")


@pytest.mark.slow
def test_5xx_and_stalled_s3_requests_are_retried_and_the_sku_is_built(
    db: psycopg.Connection,
    settings: Settings,
    s3,
    start_worker: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    urls = upload(s3, settings, {"a.jpg": jpeg(60, 80, seed=1), "b.jpg": jpeg(40, 80, seed=2)})
    release = threading.Event()
    seen: dict[str, int] = {}
    stalled: list[int] = []

    def first_attempt() -> bool:
        with psycopg.connect(settings.db_url, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM collage_outcomes").fetchone()
            return row == (0,)

    def rule(method: str, path: str) -> Fault | None:
        name = f"{method} {path.rsplit('/', 1)[-1]}"
        seen[name] = seen.get(name, 0) + 1
        if name == "GET a.jpg" and seen[name] == 1:
            return Fault(status=503)
        if name == "GET b.jpg" and first_attempt():  # every try of botocore's stalls
            stalled.append(seen[name])
            release.wait(5)
        if method == "PUT" and seen[name] == 1:
            return Fault(status=500)
        return None

    # The worker's client, with its timeouts cut from 5 s/30 s to 1 s/0.5 s to keep this fast.
    real_config = storage.Config
    monkeypatch.setattr(
        storage,
        "Config",
        lambda **kw: real_config(**{**kw, "connect_timeout": 1, "read_timeout": 0.5}),
    )
    monkeypatch.setattr(settle, "JOB_BACKOFF", Backoff(first_s=0.2, max_s=240.0))
    proxy = FaultyProxy(settings.s3_endpoint, rule)
    try:
        start_worker(settings.replace(s3_endpoint=proxy.endpoint))
        row = db.execute(
            "INSERT INTO raw_products (external_id, brand, image_urls, image_status)"
            " VALUES ('S3-1', 'zara', %s, 'uploaded') RETURNING id",
            [Jsonb(urls)],
        ).fetchone()
        assert row
        started = time.monotonic()
        sandbox.wait_until(
            lambda: db.execute(
                "SELECT image_status <> 'uploaded' FROM raw_products WHERE id = %s", [row[0]]
            ).fetchone()[0],
            timeout=40,
            what="the SKU to be built through the faults",
        )
        took = time.monotonic() - started
    finally:
        release.set()
        proxy.close()
    outcomes = db.execute(
        "SELECT outcome, error_class, message FROM collage_outcomes ORDER BY id"
    ).fetchall()
    assert [o[:2] for o in outcomes] == [("retry", "Transient"), ("built", None)], outcomes
    assert "b.jpg" in outcomes[0][2] and "timeout" in outcomes[0][2].lower()
    assert db.execute("SELECT image_status FROM raw_products").fetchone() == ("collage_ready",)
    assert seen["GET b.jpg"] == len(stalled) + 1 and seen["GET a.jpg"] >= 2
    print(f"503, {len(stalled)} stalls, PUT 500: built after {took:.2f}s, requests {seen}")


def test_a_missing_original_is_a_permanent_error_at_the_first_attempt(
    db: psycopg.Connection, settings: Settings, s3, start_worker: Callable[..., Any]
) -> None:
    (present,) = upload(s3, settings, {"a.jpg": jpeg(30, 40)})
    calls: list[str] = []

    def rule(method: str, path: str) -> None:
        calls.append(f"{method} {path.rsplit('/', 1)[-1]}")

    proxy = FaultyProxy(settings.s3_endpoint, rule)
    try:
        start_worker(settings.replace(s3_endpoint=proxy.endpoint))
        urls = [present, f"s3://{settings.s3_bucket}/originals/gone.jpg"]
        product = db.execute(
            "INSERT INTO raw_products (external_id, brand, image_urls, image_status)"
            " VALUES ('GONE-1', 'zara', %s, 'uploaded') RETURNING id",
            [Jsonb(urls)],
        ).fetchone()
        assert product
        sandbox.wait_until(
            lambda: (
                db.execute(
                    "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"
                    " AND task_name = 'collage.build'"
                ).fetchone()
                == (0,)
                and db.execute("SELECT count(*) FROM collage_outcomes").fetchone() == (1,)
            ),
            timeout=30,
            what="the SKU to fail",
        )
    finally:
        proxy.close()
    row = db.execute("SELECT image_status, error_message FROM raw_products").fetchone()
    assert row == (
        "error",
        f"original not found in bucket {settings.s3_bucket}: originals/gone.jpg",
    )
    outcomes = db.execute("SELECT outcome, error_class FROM collage_outcomes").fetchall()
    assert outcomes == [("error", "OriginalMissing")]
    assert calls.count("GET gone.jpg") == 1  # neither botocore nor the job asked twice
    jobs = db.execute("SELECT count(*) FROM procrastinate_jobs WHERE task_name = 'collage.build'")
    assert jobs.fetchone() == (1,)
