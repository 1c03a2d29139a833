"""Downloads that stop: at the byte cap whatever the headers say, and all at the first failure."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from collage.errors import OriginalMissing, TooLarge, Transient
from collage.settings import Settings
from collage.storage import Bucket, downloads
from dev import sandbox
from dev.s3proxy import TrickleS3


@pytest.fixture
def trickle() -> Iterator[TrickleS3]:
    server = TrickleS3(missing="gone.jpg")
    yield server
    server.close()


def bucket_on(server: TrickleS3, tmp_path: Path) -> Bucket:
    settings = Settings(
        db_url="postgresql://unused@127.0.0.1:9/x",
        db_session_url="postgresql://unused@127.0.0.1:9/x",
        s3_endpoint=server.endpoint,
        s3_access_key=sandbox.S3_KEY,
        s3_secret_key=sandbox.S3_KEY,
        s3_bucket="lying",
        temp_dir=tmp_path,
    )
    return Bucket.from_settings(settings)


async def download(bucket: Bucket, keys: list[str], *, max_bytes: int) -> list[bytes]:
    """Download as a worker does; a thread still reading is left behind, as the worker does."""
    executor = ThreadPoolExecutor()
    try:
        return await downloads.download_all(bucket, keys, executor=executor, max_bytes=max_bytes)
    finally:
        executor.shutdown(wait=False, cancel_futures=True)


def test_a_body_without_content_length_is_cut_at_the_cap(
    trickle: TrickleS3, tmp_path: Path
) -> None:
    bucket = bucket_on(trickle, tmp_path)
    started = time.monotonic()
    with pytest.raises(TooLarge, match=r"originals/a\.jpg is larger than the limit of 1,000 bytes"):
        bucket.get("originals/a.jpg", max_bytes=1000)
    took = time.monotonic() - started
    (sent,) = trickle.sent
    sandbox.wait_until(lambda: sent.closed_at is not None, timeout=5, what="the client to hang up")
    # One chunk read (1 MiB) plus what the sockets buffer: far short of the 8 MiB on offer.
    assert sent.bytes < trickle.total / 2, sent
    print(f"no Content-Length, cap 1,000 B: refused after {took:.2f}s, {sent.bytes:,} B sent")


def test_the_first_failed_download_stops_the_others_at_their_next_chunk(
    trickle: TrickleS3, tmp_path: Path
) -> None:
    trickle.total = 512 * 1024 * 1024  # the others would trickle for minutes
    bucket = bucket_on(trickle, tmp_path)
    keys = ["originals/a.jpg", "originals/b.jpg", "originals/c.jpg", "originals/gone.jpg"]
    started = time.monotonic()
    with pytest.raises(OriginalMissing, match=r"originals/gone\.jpg"):
        asyncio.run(download(bucket, keys, max_bytes=10**12))
    failed_after = time.monotonic() - started
    assert 1 <= len(trickle.sent) <= 3  # the others may not all have started by then
    sandbox.wait_until(
        lambda: all(s.closed_at is not None for s in trickle.sent),
        timeout=10,
        what="the other downloads to stop",
    )
    stopped_after = max(s.closed_at or 0 for s in trickle.sent) - started
    assert failed_after < 5 and stopped_after < 10
    print(
        f"first failure after {failed_after:.2f}s; the {len(trickle.sent)} others stopped"
        f" {stopped_after:.2f}s in, having sent {sum(s.bytes for s in trickle.sent):,} B"
    )


def test_the_sku_budget_is_shared_by_its_downloads(trickle: TrickleS3, tmp_path: Path) -> None:
    bucket = bucket_on(trickle, tmp_path)
    keys = [f"originals/{n}.jpg" for n in range(3)]
    with pytest.raises(TooLarge, match="the photos add up to over 10,000,000 bytes"):
        asyncio.run(download(bucket, keys, max_bytes=10_000_000))


def test_a_body_trickled_a_byte_at_a_time_is_cut_at_the_deadline(tmp_path: Path) -> None:
    # One byte every 0.3 s never trips botocore's read timeout: only the deadline ends it.
    server = TrickleS3(chunk=1, every_s=0.3, total=10**6)
    bucket = bucket_on(server, tmp_path)
    started = time.monotonic()
    try:
        with pytest.raises(Transient, match=r"downloading the photos took over 2 s"):
            asyncio.run(
                downloads.download_all(
                    bucket, ["a.jpg", "b.jpg"], executor=ThreadPoolExecutor(), deadline_s=2
                )
            )
        took = time.monotonic() - started
        sandbox.wait_until(
            lambda: all(sent.closed_at for sent in server.sent), timeout=5, what="hang-ups"
        )
    finally:
        server.close()
    assert 2.0 <= took < 4.0
    assert len(server.sent) == 2 and all(sent.bytes < 20 for sent in server.sent)
    print(f"trickled bodies: Transient after {took:.2f}s, {[s.bytes for s in server.sent]} bytes")


def test_one_object_on_its_own_has_a_deadline_too(tmp_path: Path) -> None:
    server = TrickleS3(chunk=1, every_s=0.3, total=10**6)
    try:
        started = time.monotonic()
        with pytest.raises(Transient, match=r"took over 1 s"):
            bucket_on(server, tmp_path).get("preview.jpg", deadline_s=1)
        took = time.monotonic() - started
    finally:
        server.close()
    assert 1.0 <= took < 3.0
