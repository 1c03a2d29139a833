"""The worker image, run as production runs it, against the tests' PostgreSQL, PgBouncer and S3.

Each container uses the image's own entrypoint and command on the host's network (so it
reaches the services the other tests use on 127.0.0.1), as uid 10001, with a read-only root,
a tmpfs for the scratch folder, no capabilities and no-new-privileges.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator

import psycopg
import pytest
from PIL import Image

from collage.db import migrate
from collage.settings import Settings
from dev import sandbox
from dev.photos import solid_jpeg
from dev.s3proxy import SlowGets
from tests.conftest import FaultyS3
from tests.containers import engine
from tests.containers.conftest import Figure
from tests.support.db import Db
from tests.support.pictures import BLUE, RED
from tests.support.queue import build_jobs_in, doing_jobs, listen_pids, pickup_delay_s
from tests.support.skus import statuses, wait_settled
from tests.support.workers import env_of

pytestmark = pytest.mark.slow


def worker_env(settings: Settings, **changes: str) -> dict[str, str]:
    """The settings as the container reads them, logging JSON (the tests read its log).

    TEMP_DIR is the image's own (the tmpfs): the test's scratch folder is on the host.
    """
    return {**env_of(settings), "LOG_FORMAT": "json", "TEMP_DIR": engine.SCRATCH, **changes}


def start_worker(
    image: str, env: dict[str, str], containers: list[engine.Container], dsn: str
) -> engine.Container:
    """Start the worker container and wait until it is registered and listening."""
    db = Db(dsn)
    before = {row[0] for row in db.rows("SELECT id FROM procrastinate_workers")}
    container = engine.run_detached(image, env=env)
    containers.append(container)

    def ready() -> bool:
        if not container.running():
            raise AssertionError(f"the worker exited:\n{container.logs()[-3000:]}")
        # A new row, whatever else the new worker prunes (it drops dead workers' rows).
        workers = {row[0] for row in db.rows("SELECT id FROM procrastinate_workers")}
        return bool(workers - before) and container.logged("listening for new jobs")

    try:
        engine.wait_for(ready, timeout=60, what=f"{container.name} to start")
    finally:
        db.close()
    return container


def add_sku(db: Db, urls: list[str], external_id: str) -> int:
    return int(
        db.value(
            "INSERT INTO raw_products (external_id, brand, image_urls, image_status)"
            " VALUES (%s, 'docker', %s, 'uploaded') RETURNING id",
            [external_id, psycopg.types.json.Jsonb(urls)],
        )
    )


def red_then_blue(s3, bucket: str, folder: str) -> list[str]:
    """Two photos: red 40x30 (scaled up to 80x60) then blue 20x60, so the collage is 100x60."""
    photos = {
        f"originals/{folder}/red.jpg": solid_jpeg(40, 30, RED),
        f"originals/{folder}/blue.jpg": solid_jpeg(20, 60, BLUE),
    }
    for key, data in photos.items():
        s3.put_object(Bucket=bucket, Key=key, Body=data)
    return [f"s3://{bucket}/{key}" for key in photos]


def assert_red_then_blue(jpeg: bytes) -> None:
    with Image.open(io.BytesIO(jpeg)) as image:
        assert image.size == (100, 60)
        rgb = image.convert("RGB")
        for (x, y), expected in {(40, 30): RED, (90, 30): BLUE}.items():
            got = rgb.getpixel((x, y))
            assert max(abs(a - b) for a, b in zip(got, expected, strict=True)) < 16, (x, got)


@pytest.fixture
def db(settings: Settings) -> Iterator[Db]:
    made = Db(settings.db_url)
    yield made
    made.close()


@pytest.fixture
def empty(empty_db: str) -> Iterator[Db]:
    made = Db(empty_db)
    yield made
    made.close()


@pytest.fixture(params=["direct", "pgbouncer"])
def route(request: pytest.FixtureRequest, empty_db: str) -> tuple[str, str]:
    """(STAGING_DB_URL, STAGING_DB_SESSION_URL): PostgreSQL itself, or both PgBouncer pools."""
    if request.param == "direct":
        return empty_db, empty_db
    transaction = request.getfixturevalue("transaction_bouncer")
    session = request.getfixturevalue("session_bouncer")
    return transaction.for_dsn(empty_db), session.for_dsn(empty_db)


def test_the_image_migrates_then_builds_a_collage_and_reports_healthy(
    route: tuple[str, str],
    empty_db: str,
    empty: Db,
    settings: Settings,
    s3,
    worker_image: str,
    containers: list[engine.Container],
    figure: Figure,
) -> None:
    db_url, session_url = route
    settings = settings.replace(db_url=db_url, db_session_url=session_url)
    env = worker_env(settings)
    migrated = engine.run_once(worker_image, "migrate", env=env)
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    assert migrate.status(empty_db).pending == []
    again = engine.run_once(worker_image, "migrate", env=env)
    assert again.returncode == 0 and "already up to date" in again.stdout, again.stderr

    worker = start_worker(worker_image, env, containers, empty_db)
    db = empty
    urls = red_then_blue(s3, settings.s3_bucket, "image")
    product_id = add_sku(db, urls, "IMG-1")
    wait_settled(db, [product_id], timeout=60, what="the container to build the collage")
    status, error, url = statuses(db, [product_id])[product_id]
    assert (status, error) == ("collage_ready", None)
    assert url == f"{settings.s3_public_url}/collages/docker/IMG-1.jpg"
    body = s3.get_object(Bucket=settings.s3_bucket, Key="collages/docker/IMG-1.jpg")
    assert body["ContentType"] == "image/jpeg"
    assert_red_then_blue(body["Body"].read())
    pickup_s = pickup_delay_s(db, product_id)  # a figure: a loaded machine may take longer
    # What wakes the worker: a LISTEN held open (through the session pool on that route).
    assert listen_pids(db), "no LISTEN connection from the container"

    healthy_s = worker.wait_healthy(timeout=120)
    assert worker.exec("collage", "health").returncode == 0
    figure(
        f"container ({route_name(db_url, empty_db)}): migrate and a build ok,"
        f" pickup {pickup_s * 1000:.0f} ms, healthy {healthy_s:.0f}s after start"
        " (the first check runs at the 30 s interval)"
    )
    stopped = time.monotonic()
    engine.docker("stop", worker.name, timeout=120)
    assert worker.state()["ExitCode"] == 0, worker.logs()[-3000:]
    assert time.monotonic() - stopped < 15  # idle: nothing to drain


def route_name(db_url: str, direct: str) -> str:
    return "direct" if db_url == direct else "through both PgBouncer pools"


def test_the_container_runs_unprivileged_on_a_read_only_root(
    settings: Settings, worker_image: str, containers: list[engine.Container]
) -> None:
    worker = start_worker(worker_image, worker_env(settings), containers, settings.db_url)
    config = worker.inspect()
    assert config["Config"]["User"] == "collage"
    assert config["HostConfig"]["ReadonlyRootfs"] is True
    assert "no-new-privileges" in config["HostConfig"]["SecurityOpt"]
    probe = worker.exec(
        "sh",
        "-c",
        "id -u; grep -E '^(NoNewPrivs|CapEff)' /proc/1/status;"
        f" touch {engine.SCRATCH}/ok && echo scratch-writable;"
        " touch /opt/collage/x 2>/dev/null || echo root-read-only",
    )
    lines = probe.stdout.split()
    assert lines[0] == "10001", probe.stdout + probe.stderr
    assert "NoNewPrivs:" in lines and lines[lines.index("NoNewPrivs:") + 1] == "1"
    assert lines[lines.index("CapEff:") + 1] == "0000000000000000"
    assert "scratch-writable" in lines and "root-read-only" in lines


def test_docker_stop_lets_a_running_build_finish_and_exits_0(
    settings: Settings,
    db: Db,
    s3,
    faulty_s3: FaultyS3,
    worker_image: str,
    containers: list[engine.Container],
    figure: Figure,
) -> None:
    slow = SlowGets(delay_s=5)  # each photo download takes 5 s: the build is running at the stop
    proxy = faulty_s3(slow)
    env = worker_env(settings, S3_ENDPOINT=proxy.endpoint)
    worker = start_worker(worker_image, env, containers, settings.db_url)
    urls = red_then_blue(s3, settings.s3_bucket, "drain")
    product_id = add_sku(db, urls, "DRAIN-1")
    sandbox.wait_until(
        lambda: doing_jobs(db) and slow.gets() >= 1, timeout=30, what="the build to download"
    )
    stopped = time.monotonic()
    # No -t: the container was started with --stop-timeout 110, as the README says to.
    engine.docker("stop", worker.name, timeout=120)
    drain_s = time.monotonic() - stopped
    state = worker.state()
    assert state["ExitCode"] == 0 and not state["OOMKilled"], worker.logs()[-3000:]
    assert statuses(db, [product_id])[product_id][:2] == ("collage_ready", None)
    assert build_jobs_in(db, "todo", "doing") == []
    assert [
        r[0]
        for r in db.rows(
            "SELECT status::text FROM procrastinate_jobs WHERE task_name = 'collage.build'"
        )
    ] == ["succeeded"]
    assert_red_then_blue(
        s3.get_object(Bucket=settings.s3_bucket, Key="collages/docker/DRAIN-1.jpg")["Body"].read()
    )
    assert drain_s < 60
    figure(f"docker stop during a build: drained, exit 0 after {drain_s:.1f}s (downloads 5 s each)")


def test_a_killed_container_leaves_its_sku_to_the_next_container(
    settings: Settings,
    db: Db,
    s3,
    faulty_s3: FaultyS3,
    worker_image: str,
    containers: list[engine.Container],
    figure: Figure,
) -> None:
    slow = SlowGets(delay_s=120)  # the first container's download never ends on its own
    proxy = faulty_s3(slow)
    first = start_worker(
        worker_image, worker_env(settings, S3_ENDPOINT=proxy.endpoint), containers, settings.db_url
    )
    urls = red_then_blue(s3, settings.s3_bucket, "kill")
    product_id = add_sku(db, urls, "KILL-1")
    sandbox.wait_until(
        lambda: doing_jobs(db) and slow.gets() >= 1, timeout=30, what="the build to download"
    )
    [(dead_job, _, _)] = doing_jobs(db)
    engine.docker("kill", "--signal", "KILL", first.name)
    engine.wait_for(lambda: not first.running(), timeout=30, what="the container to die")
    killed = time.monotonic()
    assert first.state()["ExitCode"] == 137
    assert build_jobs_in(db, "doing") == [(dead_job, f"product:{product_id}", "doing")]
    slow.released.set()
    # Unaided: the dead container's liveness locks went with its connection, and the second
    # container's rescue round takes the job back (issue 9's bound: 30 s).
    start_worker(worker_image, worker_env(settings), containers, settings.db_url)
    wait_settled(db, [product_id], timeout=60, what="the second container to rebuild the SKU")
    rescued_s = time.monotonic() - killed
    assert statuses(db, [product_id])[product_id][:2] == ("collage_ready", None)
    jobs = dict(
        db.rows(
            "SELECT id, status::text FROM procrastinate_jobs WHERE lock = %s",
            [f"product:{product_id}"],
        )
    )
    assert jobs.pop(dead_job) == "failed"
    assert list(jobs.values()) == ["succeeded"]
    assert_red_then_blue(
        s3.get_object(Bucket=settings.s3_bucket, Key="collages/docker/KILL-1.jpg")["Body"].read()
    )
    figure(
        f"SIGKILL of a container mid-build: rebuilt by a second container {rescued_s:.1f}s"
        " after the kill, unaided"
    )
    assert rescued_s <= 30
