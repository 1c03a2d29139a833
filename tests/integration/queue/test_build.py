"""The build job and the periodic tasks, run by a real worker against PostgreSQL and S3."""

from __future__ import annotations

import io
import json
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from PIL import Image

from collage.backoff import Backoff
from collage.cli import main
from collage.queue import settle
from collage.settings import Settings
from collage.storage import downloads
from dev import sandbox
from dev.photos import jpeg, noisy_jpeg, solid_jpeg
from dev.s3proxy import Fault, SlowGets
from tests.conftest import FaultyS3
from tests.support.pictures import BLUE, RED, mean_rgb
from tests.support.skus import StartWorker, add_product, final_state, upload


def test_an_uploaded_sku_becomes_the_same_collage_as_collage_make(
    db: psycopg.Connection, settings: Settings, s3, start_worker: StartWorker, tmp_path: Path
) -> None:
    photos = {
        "originals/zara/1/front.jpg": jpeg(300, 400, seed=1),
        "originals/zara/1/back.jpg": jpeg(200, 300, seed=2),
        "originals/zara/1/side.jpg": jpeg(250, 400, seed=3),
    }
    urls = upload(s3, settings, photos)
    start_worker(settings)
    pid = add_product(db, urls, external_id="AB-1")
    status, url, error = final_state(db, pid)
    assert (status, error) == ("collage_ready", None)
    assert url == f"{settings.s3_public_url}/collages/zara/AB-1.jpg"
    obj = s3.get_object(Bucket=settings.s3_bucket, Key="collages/zara/AB-1.jpg")
    assert obj["ContentType"] == "image/jpeg"
    built = obj["Body"].read()

    files = []
    for key, data in photos.items():
        path = tmp_path / key.replace("/", "_")
        path.write_bytes(data)
        files.append(str(path))
    out = tmp_path / "made.jpg"
    result = CliRunner().invoke(main, ["make", *files, "-o", str(out)])
    assert result.exit_code == 0, result.output
    with Image.open(out) as made, Image.open(io.BytesIO(built)) as from_worker:
        assert from_worker.size == made.size == (300 + round(200 * 400 / 300) + 250, 400)
        assert from_worker.tobytes() == made.tobytes()
    outcome = db.execute("SELECT outcome, photos FROM collage_outcomes").fetchall()
    assert outcome == [("built", 3)]


@pytest.mark.parametrize(
    ("urls", "brand", "expected"),
    [
        ([], "zara", "image_urls is empty"),
        (None, "zara", "image_urls is empty"),
        ({"front": "x"}, "zara", "image_urls is a JSON object, not a list"),
        ([1, 2], "zara", "image_urls holds 1, not a URL"),
        ("s3://one/string.jpg", "zara", "image_urls is a JSON string, not a list"),
        (
            ["s3://{bucket}/originals/missing.jpg"],
            "zara",
            "original not found in bucket {bucket}: originals/missing.jpg",
        ),
        (["https://evil.example.com/x.jpg"], "zara", "https://evil.example.com/x.jpg is not on"),
        (
            ["s3://{bucket}/originals/ok.jpg"],
            "../etc",
            "brand '../etc' cannot be used in an object key",
        ),
        (
            ["s3://{bucket}/originals/ok.jpg"] * 41,
            "zara",
            "image_urls has 41 photos; at most 40 fit",
        ),
        (
            ["s3://{bucket}/originals/ok.jpg", "s3://{bucket}/originals/html.jpg"],
            "zara",
            "html.jpg",
        ),
    ],
)
def test_a_broken_sku_ends_in_error_with_a_message_an_operator_can_act_on(
    db: psycopg.Connection,
    settings: Settings,
    s3,
    start_worker: StartWorker,
    urls: object,
    brand: str,
    expected: str,
) -> None:
    upload(s3, settings, {"ok.jpg": jpeg(50, 60), "html.jpg": b"<html>502 Bad Gateway</html>"})
    text = json.dumps(urls).replace("{bucket}", settings.s3_bucket)
    start_worker(settings)
    pid = add_product(db, json.loads(text), brand=brand)
    status, url, error = final_state(db, pid)
    assert status == "error"
    assert url is None
    assert expected.replace("{bucket}", settings.s3_bucket) in error
    assert "\n" not in error and "Traceback" not in error
    listed = s3.list_objects_v2(Bucket=settings.s3_bucket, Prefix="collages/")
    assert listed.get("KeyCount", 0) == 0


def test_transient_s3_failures_are_retried_until_the_sku_succeeds(
    db: psycopg.Connection,
    settings: Settings,
    s3,
    start_worker: StartWorker,
    faulty_s3: FaultyS3,
    monkeypatch,
) -> None:
    urls = upload(s3, settings, {"a.jpg": jpeg(60, 80), "b.jpg": jpeg(60, 80, seed=4)})
    failures = {"left": 8}  # more than boto3's own 3 tries: the job itself must retry

    def rule(method: str, path: str) -> Fault | None:
        if method == "GET" and path.endswith("b.jpg") and failures["left"] > 0:
            failures["left"] -= 1
            return Fault(status=503)
        return None

    proxy = faulty_s3(rule)
    monkeypatch.setattr(settle, "JOB_BACKOFF", Backoff(first_s=0.2, max_s=240.0))
    start_worker(settings.replace(s3_endpoint=proxy.endpoint))
    pid = add_product(db, urls)
    status, _, error = final_state(db, pid, timeout=60)
    assert (status, error) == ("collage_ready", None)
    outcomes = [r[0] for r in db.execute("SELECT outcome FROM collage_outcomes ORDER BY id")]
    assert outcomes[-1] == "built" and "retry" in outcomes
    assert sum(1 for *_, code in proxy.seen if code == 503) == 8


def test_a_sku_that_keeps_failing_transiently_gives_up_with_the_cause(
    db: psycopg.Connection,
    settings: Settings,
    s3,
    start_worker: StartWorker,
    faulty_s3: FaultyS3,
    monkeypatch,
) -> None:
    urls = upload(s3, settings, {"a.jpg": jpeg(60, 80)})
    proxy = faulty_s3(lambda method, path: Fault(status=500) if method == "GET" else None)
    monkeypatch.setattr(settle, "JOB_BACKOFF", Backoff(first_s=0.05, max_s=240.0))
    monkeypatch.setattr(settle, "MAX_ATTEMPTS", 3)
    try:
        start_worker(settings.replace(s3_endpoint=proxy.endpoint))
        pid = add_product(db, urls)
        status, _, error = final_state(db, pid, timeout=60)
    finally:
        proxy.close()
    assert status == "error"
    assert error.startswith("gave up after 3 attempts: S3 answered 500")
    stuck = db.execute("SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')")
    assert stuck.fetchone() == (0,)


def _wait_running(db: psycopg.Connection, product_id: int) -> None:
    sandbox.wait_until(
        lambda: db.execute(
            "SELECT count(*) FROM procrastinate_jobs WHERE lock = %s AND status = 'doing'",
            [f"product:{product_id}"],
        ).fetchone()[0],
        timeout=20,
        what="the build to start",
    )


def test_a_reupload_during_a_build_wins_over_the_stale_result(
    db: psycopg.Connection, settings: Settings, s3, start_worker: StartWorker, faulty_s3: FaultyS3
) -> None:
    old = upload(s3, settings, {"old.jpg": jpeg(100, 100, seed=1)})
    new = upload(s3, settings, {"new1.jpg": jpeg(100, 100, seed=2), "new2.jpg": jpeg(50, 100)})
    held = SlowGets(delay_s=0.5)
    proxy = faulty_s3(held)
    start_worker(settings.replace(s3_endpoint=proxy.endpoint))
    pid = add_product(db, old, external_id="RE-1")
    _wait_running(db, pid)
    # Downloading already: the build has read its generation (earlier, it would just skip).
    sandbox.wait_until(lambda: held.gets() >= 1, timeout=20, what="the first build's download")
    db.execute("UPDATE raw_products SET image_urls = %s WHERE id = %s", [json.dumps(new), pid])
    status, _, _ = final_state(db, pid, timeout=60)
    assert status == "collage_ready"
    body = s3.get_object(Bucket=settings.s3_bucket, Key="collages/zara/RE-1.jpg")["Body"].read()
    assert Image.open(io.BytesIO(body)).size == (150, 100)  # the two new photos, not the old one
    outcomes = [r[0] for r in db.execute("SELECT outcome FROM collage_outcomes ORDER BY id")]
    assert outcomes == ["superseded", "built"]


def test_a_redownload_to_the_same_keys_during_a_build_is_built_again(
    db: psycopg.Connection, settings: Settings, s3, start_worker: StartWorker, faulty_s3: FaultyS3
) -> None:
    # The downloader stores originals under fixed keys: new photos, the very same image_urls.
    urls = upload(s3, settings, {"same.jpg": solid_jpeg(40, 40, RED)})
    held = SlowGets(delay_s=30)
    proxy = faulty_s3(held)
    start_worker(settings.replace(s3_endpoint=proxy.endpoint))
    pid = add_product(db, urls, external_id="SAME-1")
    sandbox.wait_until(lambda: held.gets() >= 1, timeout=20, what="the first build's download")
    upload(s3, settings, {"same.jpg": solid_jpeg(40, 40, BLUE)})
    db.execute("UPDATE raw_products SET image_status = 'uploaded' WHERE id = %s", [pid])
    held.released.set()
    status, _, _ = final_state(db, pid, timeout=60)
    assert status == "collage_ready"
    body = s3.get_object(Bucket=settings.s3_bucket, Key="collages/zara/SAME-1.jpg")["Body"].read()
    assert mean_rgb(body)[2] > 150  # blue: the second download, not the first
    outcomes = [r[0] for r in db.execute("SELECT outcome FROM collage_outcomes ORDER BY id")]
    assert outcomes == ["superseded", "built"]


def test_two_rows_naming_one_collage_the_newer_upload_owns_it(
    db: psycopg.Connection, settings: Settings, s3, start_worker: StartWorker
) -> None:
    red = upload(s3, settings, {"dup/red.jpg": solid_jpeg(40, 40, RED)})
    blue = upload(s3, settings, {"dup/blue.jpg": solid_jpeg(40, 40, BLUE)})
    start_worker(settings)
    key = "collages/zara/DUP-1.jpg"

    def colour() -> str:
        r, _, b = mean_rgb(s3.get_object(Bucket=settings.s3_bucket, Key=key)["Body"].read())
        return "red" if r > b else "blue"

    first = add_product(db, red, external_id="DUP-1")
    assert final_state(db, first)[0] == "collage_ready" and colour() == "red"
    second = add_product(db, blue, external_id="DUP-1")
    assert final_state(db, second)[0] == "collage_ready" and colour() == "blue"
    status, _, error = db.execute(
        "SELECT image_status, collage_url, error_message FROM raw_products WHERE id = %s", [first]
    ).fetchone()
    assert status == "error"
    assert error == (
        f"{key} now belongs to SKU {second}, which has the same brand and external_id"
        " and a newer upload"
    )
    # Uploading the first row again makes it the newer one.
    db.execute("UPDATE raw_products SET image_status = 'uploaded' WHERE id = %s", [first])
    assert final_state(db, first)[0] == "collage_ready" and colour() == "red"
    assert final_state(db, second)[0] == "error"


def test_a_failed_build_with_a_waiting_job_never_strands_a_job_in_doing(
    db: psycopg.Connection,
    settings: Settings,
    s3,
    start_worker: StartWorker,
    faulty_s3: FaultyS3,
    monkeypatch,
) -> None:
    # Procrastinate issues #1446/#1543: a retry colliding with a waiting job's queueing lock.
    urls = upload(s3, settings, {"a.jpg": jpeg(60, 80)})
    calls = {"n": 0}

    def rule(method: str, path: str) -> Fault | None:
        if method != "GET":
            return None
        calls["n"] += 1
        return Fault(status=503, delay_s=0.5) if calls["n"] <= 4 else None

    proxy = faulty_s3(rule)
    monkeypatch.setattr(settle, "JOB_BACKOFF", Backoff(first_s=0.1, max_s=240.0))
    start_worker(settings.replace(s3_endpoint=proxy.endpoint))
    pid = add_product(db, urls)
    _wait_running(db, pid)
    db.execute("UPDATE raw_products SET image_status = 'pending' WHERE id = %s", [pid])
    db.execute("UPDATE raw_products SET image_status = 'uploaded' WHERE id = %s", [pid])
    waiting = db.execute(
        "SELECT count(*) FROM procrastinate_jobs WHERE lock = %s AND status = 'todo'",
        [f"product:{pid}"],
    ).fetchone()
    assert waiting == (1,)  # the second job waits while the first one is failing
    status, _, _ = final_state(db, pid, timeout=60)
    assert status == "collage_ready"
    statuses = db.execute(
        "SELECT status::text FROM procrastinate_jobs WHERE lock = %s", [f"product:{pid}"]
    )
    assert "doing" not in {r[0] for r in statuses}


def test_listen_through_pgbouncer_starts_jobs_without_waiting_for_a_poll(
    db: psycopg.Connection,
    settings: Settings,
    s3,
    start_worker: StartWorker,
    session_bouncer: sandbox.PgBouncer,
    transaction_bouncer: sandbox.PgBouncer,
) -> None:
    urls = upload(s3, settings, {"a.jpg": jpeg(60, 80)})
    through_bouncers = settings.replace(
        db_url=transaction_bouncer.for_dsn(settings.db_url),
        db_session_url=session_bouncer.for_dsn(settings.db_url),
    )
    # With polling every 10 minutes, only a notification can start the second job in time.
    start_worker(through_bouncers, worker_options={"fetch_job_polling_interval": 600})
    sandbox.wait_until(
        lambda: db.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND query LIKE 'LISTEN%%'"
        ).fetchone()[0],
        timeout=20,
        what="the worker's LISTEN connection",
    )
    first = add_product(db, urls)
    assert final_state(db, first, timeout=20)[0] == "collage_ready"
    second = add_product(db, urls)
    assert final_state(db, second, timeout=20)[0] == "collage_ready"
    assert "DuplicatePreparedStatement" not in transaction_bouncer.log()


def test_photos_too_big_in_total_are_refused_whatever_the_row_says(
    db: psycopg.Connection, settings: Settings, s3, start_worker: StartWorker, monkeypatch
) -> None:
    urls = upload(s3, settings, {"a.jpg": jpeg(60, 80), "b.jpg": jpeg(60, 80, seed=9)})
    monkeypatch.setattr(downloads, "MAX_SKU_BYTES", len(jpeg(60, 80)) + 10)
    start_worker(settings)
    pid = add_product(db, urls)
    status, _, error = final_state(db, pid)
    assert status == "error"
    assert error == f"the photos add up to over {downloads.MAX_SKU_BYTES:,} bytes"


def test_a_size_limit_lowers_the_quality_and_the_outcome_records_it(
    db: psycopg.Connection, settings: Settings, s3, start_worker: StartWorker
) -> None:
    photos = {f"originals/zara/9/{n}.jpg": noisy_jpeg(600, 900, seed=n) for n in range(3)}
    urls = upload(s3, settings, photos)
    start_worker(settings.replace(collage_max_bytes=250_000, collage_min_quality=40))
    pid = add_product(db, urls, external_id="FIT-1")
    assert final_state(db, pid)[0] == "collage_ready"
    body = s3.get_object(Bucket=settings.s3_bucket, Key="collages/zara/FIT-1.jpg")["Body"].read()
    quality, size = db.execute(
        "SELECT quality, bytes_out FROM collage_outcomes WHERE product_id = %s", [pid]
    ).fetchone()
    assert 40 <= quality < 95
    assert size == len(body) <= 250_000


def test_a_collage_that_cannot_fit_at_the_floor_is_an_error_naming_its_size(
    db: psycopg.Connection, settings: Settings, s3, start_worker: StartWorker
) -> None:
    urls = upload(s3, settings, {"originals/zara/10/a.jpg": noisy_jpeg(600, 900)})
    start_worker(settings.replace(collage_max_bytes=2_000, collage_min_quality=90))
    pid = add_product(db, urls, external_id="FIT-2")
    status, _, error = final_state(db, pid)
    assert status == "error"
    assert error.startswith("the collage (600 x 900 px) is ")
    assert error.endswith(
        " bytes even at JPEG quality 90, the lowest allowed; at most 2,000 bytes are allowed"
    )
