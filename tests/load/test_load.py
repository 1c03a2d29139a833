"""Load: several workers draining big batches, and one UPDATE of 10,000 rows."""

from __future__ import annotations

import io
import random
import time

import pytest
from PIL import Image
from psycopg.types.json import Jsonb

from dev import sandbox
from dev.photos import solid_jpeg
from tests.support.db import Db
from tests.support.pictures import BLUE, RED, mean_rgb
from tests.support.queue import build_jobs_in, overlapping_builds
from tests.support.skus import add_products, statuses, wait_settled
from tests.support.workers import Rig

# --- load -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_three_workers_drain_500_skus_with_reuploads_each_ending_with_its_latest_photos(
    rig: Rig, fdb: Db
) -> None:
    old = rig.upload({"load/old.jpg": solid_jpeg(24, 16, RED)})
    new = rig.upload(
        {"load/new1.jpg": solid_jpeg(16, 16, BLUE), "load/new2.jpg": solid_jpeg(8, 8, BLUE)}
    )
    workers = [rig.spawn("-c", "2") for _ in range(3)]
    names = [f"L{n:03d}" for n in range(500)]
    started = time.monotonic()
    ids = add_products(fdb, [old] * 500, external_ids=names)
    # Re-upload halfway: some of the chosen SKUs are built already, some building, some waiting.
    sandbox.wait_until(
        lambda: fdb.value("SELECT count(*) FROM collage_outcomes") >= 250,
        timeout=120,
        what="half the SKUs to be built",
    )
    rng = random.Random(6)
    again = sorted(rng.sample(range(500), 50))
    for index in again:  # as the scraper does: new photos, and 'uploaded' again
        fdb.rows(
            "UPDATE raw_products SET image_urls = %s, image_status = 'uploaded', updated_at = now()"
            " WHERE id = %s",
            [Jsonb(new), ids[index]],
        )
    reuploaded_at = time.monotonic() - started
    wait_settled(fdb, ids, timeout=180, what="500 SKUs to drain")
    drained_s = time.monotonic() - started
    for worker in workers:
        worker.sample_rss()
    per_worker = fdb.rows(
        "SELECT worker_id, count(*) FROM procrastinate_jobs WHERE task_name = 'collage.build'"
        " AND status = 'succeeded' GROUP BY worker_id ORDER BY worker_id"
    )
    outcomes = dict(fdb.rows("SELECT outcome, count(*) FROM collage_outcomes GROUP BY outcome"))
    # SKUs that ran more than once, and on more than one worker: what the overlap check covers.
    rerun, across = fdb.rows(
        "SELECT count(*), count(*) FILTER (WHERE workers > 1) FROM (SELECT lock,"
        " count(DISTINCT worker_id) AS workers FROM procrastinate_jobs"
        " WHERE task_name = 'collage.build' GROUP BY lock HAVING count(*) > 1) t"
    )[0]
    rates = [f"{n / drained_s:.1f}/s" for _, n in per_worker]
    print(
        f"load: 500 SKUs, 50 re-uploaded at {reuploaded_at:.1f}s, drained in {drained_s:.1f}s;"
        f" jobs per worker {[n for _, n in per_worker]} ({rates}); outcomes {outcomes};"
        f" {rerun} SKUs ran twice, {across} of them on two workers;"
        f" peak RSS {[w.peak_rss_kb // 1024 for w in workers]} MB"
    )
    state = statuses(fdb, ids)
    assert {s[:2] for s in state.values()} == {("collage_ready", None)}
    assert build_jobs_in(fdb, "todo", "doing") == []
    assert overlapping_builds(fdb) == []
    assert all(w.alive() for w in workers)
    wrong = []
    latest = set(again)
    for index, product_id in enumerate(ids):
        assert state[product_id][2] == f"{rig.public_url}/collages/faults/{names[index]}.jpg"
        body = rig.collage("faults", names[index])
        with Image.open(io.BytesIO(body)) as image:
            size = image.size
        colour = mean_rgb(body)
        expected = ((32, 16), BLUE) if index in latest else ((24, 16), RED)
        if (
            size != expected[0]
            or max(abs(a - b) for a, b in zip(colour, expected[1], strict=True)) > 25
        ):
            wrong.append((names[index], index in latest, size, colour))
    assert wrong == []


@pytest.mark.slow
def test_10000_skus_uploaded_in_one_statement_get_exactly_one_job_each(fdb: Db) -> None:
    fdb.rows(
        "INSERT INTO raw_products (external_id, brand, image_urls, image_status)"
        " SELECT 'bulk-' || g, 'bulk', '[\"s3://b/a.jpg\"]', 'pending'"
        " FROM generate_series(1, 10000) g"
    )
    started = time.perf_counter()
    fdb.rows("UPDATE raw_products SET image_status = 'uploaded'")
    first_s = time.perf_counter() - started
    started = time.perf_counter()
    # The scraper re-uploads them all while every job still waits: absorbed, not doubled.
    fdb.rows("UPDATE raw_products SET image_urls = '[\"s3://b/b.jpg\"]'")
    second_s = time.perf_counter() - started
    counts = fdb.rows(
        "SELECT count(*), count(DISTINCT lock), count(*) FILTER (WHERE status = 'todo')"
        " FROM procrastinate_jobs WHERE task_name = 'collage.build'"
    )
    assert counts == [(10_000, 10_000, 10_000)]
    orphans = fdb.value(
        "SELECT count(*) FROM raw_products p WHERE NOT EXISTS (SELECT 1 FROM procrastinate_jobs j"
        " WHERE j.lock = 'product:' || p.id)"
    )
    assert orphans == 0
    print(
        f"10,000-row UPDATE to 'uploaded': {first_s:.2f}s ({first_s / 10_000 * 1e6:.0f} µs/row);"
        f" re-upload of all 10,000 while queued: {second_s:.2f}s"
        f" ({second_s / 10_000 * 1e6:.0f} µs/row)"
    )
