"""Faults, bad input and load, done for real: killed workers, database outages, stalled S3.

The worker runs as `collage worker` subprocesses against a PostgreSQL cluster of this module's
own (initdb'd as the `postgres` user on a free port), so tests may restart or break it.
Everything stays on loopback; every wait polls with a deadline.
"""

from __future__ import annotations

import functools
import io
import random
import shutil
import signal
import statistics
import string
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import botocore.config
import hypothesis
import psycopg
import pytest
from hypothesis import strategies as st
from PIL import Image
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import Jsonb

from collage import migrate, sandbox, storage, tasks
from collage.errors import CollageError, Transient, UnsafeKey
from collage.settings import Settings
from tests.conftest import missing_service
from tests.faults import (
    S3_KEY,
    Cluster,
    Db,
    SlowGets,
    StallingS3,
    WorkerProcess,
    build_jobs_in,
    defer_rescue,
    first_true,
    listen_pids,
    mean_rgb,
    overlapping_builds,
    pg_bindir,
    pickup_delay_s,
    png_header_only,
    s3_client,
    solid_jpeg,
    throwaway_cluster,
    unsettled,
    wait_settled,
    worker_env,
)
from tests.photos import jpeg

RED, BLUE, GREEN = (220, 30, 30), (30, 30, 220), (30, 200, 30)
# Procrastinate polls every POLLING_INTERVAL_S (1 s); a pickup this fast came from LISTEN.
LISTEN_PICKUP_S = 0.2


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A PostgreSQL cluster these tests may restart; shared by the module, deleted after."""
    bindir = pg_bindir()
    if bindir is None:
        missing_service("PostgreSQL's initdb and pg_ctl (apt-get install postgresql-15)")
    assert bindir is not None
    with throwaway_cluster(bindir) as made:
        yield made


@pytest.fixture(scope="module")
def cluster_template(cluster: Cluster) -> str:
    """A migrated database in the throwaway cluster, cloned by every test."""
    dsn = sandbox.create_database(cluster.dsn, prefix="collage_tpl")
    migrate.apply(dsn)
    return str(conninfo_to_dict(dsn)["dbname"])


@pytest.fixture
def fault_dsn(cluster: Cluster, cluster_template: str) -> Iterator[str]:
    dsn = sandbox.create_database(cluster.dsn, template=cluster_template, prefix="collage_fault")
    yield dsn
    sandbox.drop_database(cluster.dsn, dsn)


@pytest.fixture
def fdb(fault_dsn: str) -> Iterator[Db]:
    db = Db(fault_dsn)
    yield db
    db.close()


@dataclass
class Rig:
    """One test's database, bucket and worker processes (all stopped at teardown)."""

    dsn: str
    s3_endpoint: str
    bucket: str
    folder: Path
    workers: list[WorkerProcess] = field(default_factory=list)

    @functools.cached_property
    def s3(self) -> Any:
        return s3_client(self.s3_endpoint)

    @property
    def public_url(self) -> str:
        return f"{self.s3_endpoint}/{self.bucket}"

    def upload(self, photos: dict[str, bytes]) -> list[str]:
        client = self.s3
        for key, data in photos.items():
            client.put_object(Bucket=self.bucket, Key=key, Body=data)
        return [f"s3://{self.bucket}/{key}" for key in photos]

    def spawn(
        self,
        *args: str,
        s3_endpoint: str | None = None,
        db_url: str | None = None,
        db_session_url: str | None = None,
        ready_timeout: float = 30,
    ) -> WorkerProcess:
        """Start `collage worker ARGS` and wait until it is registered and listening."""
        env = worker_env(
            db_url=db_url or self.dsn,
            db_session_url=db_session_url or db_url or self.dsn,
            s3_endpoint=s3_endpoint or self.s3_endpoint,
            s3_key=S3_KEY,
            bucket=self.bucket,
            public_url=self.public_url,
            temp_dir=self.folder / "scratch",
        )
        number = len(self.workers) + 1
        worker = WorkerProcess(env, self.folder / f"worker-{number}.log", args)
        self.workers.append(worker)
        alive = sum(1 for w in self.workers if w.alive())
        with psycopg.connect(self.dsn, autocommit=True) as conn:

            def ready() -> bool:
                if not worker.alive():
                    raise AssertionError(f"worker {number} exited:\n{worker.tail()}")
                registered = conn.execute("SELECT count(*) FROM procrastinate_workers")
                return bool(worker.logged("listening for new jobs")) and (
                    registered.fetchone()[0] >= alive  # type: ignore[index]
                )

            sandbox.wait_until(ready, timeout=ready_timeout, what=f"worker {number} to start")
        return worker

    def collage(self, brand: str, external_id: str) -> bytes:
        key = f"collages/{brand}/{external_id}.jpg"
        return bytes(self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def keys(self) -> set[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        return {obj["Key"] for page in pages for obj in page.get("Contents", [])}


@pytest.fixture
def rig(fault_dsn: str, s3_endpoint: str, s3_bucket: str, tmp_path: Path) -> Iterator[Rig]:
    made = Rig(fault_dsn, s3_endpoint, s3_bucket, tmp_path)
    yield made
    for number, worker in enumerate(made.workers, start=1):
        code = worker.stop()
        # Shown by pytest when the test failed: what each worker said last.
        print(f"--- worker {number} (exit {code}) ---\n{worker.tail(30)}")


def add_products(
    db: Db,
    image_urls: list[object],
    *,
    brands: list[str] | None = None,
    external_ids: list[str] | None = None,
    status: str = "uploaded",
) -> list[int]:
    """Insert SKUs in one statement (one transaction); return their ids in order."""
    count = len(image_urls)
    ids = external_ids or [f"sku-{uuid.uuid4().hex[:10]}" for _ in range(count)]
    rows = db.rows(
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
    by_external = {external_id: product_id for product_id, external_id in rows}
    return [by_external[e] for e in ids]


def doing_jobs(db: Db) -> list[tuple]:
    return db.rows(
        "SELECT id, lock, worker_id FROM procrastinate_jobs"
        " WHERE task_name = 'collage.build' AND status = 'doing' ORDER BY id"
    )


def statuses(db: Db, ids: list[int]) -> dict[int, tuple]:
    rows = db.rows(
        "SELECT id, image_status, error_message, collage_url FROM raw_products WHERE id = ANY(%s)",
        [ids],
    )
    return {row[0]: row[1:] for row in rows}


# --- 1. SIGKILL in the middle of a build ----------------------------------------------------


@pytest.mark.slow
def test_a_worker_killed_mid_build_leaves_its_sku_to_the_next_worker(rig: Rig, fdb: Db) -> None:
    urls = rig.upload(
        {"kill/a.jpg": solid_jpeg(40, 30, RED), "kill/b.jpg": solid_jpeg(20, 30, RED)}
    )
    slow = SlowGets(delay_s=120)  # the first worker's download never ends on its own
    proxy = sandbox.FaultyProxy(rig.s3_endpoint, slow)
    try:
        first = rig.spawn(s3_endpoint=proxy.endpoint)
        [pid] = add_products(fdb, [urls], external_ids=["KILL-1"])
        sandbox.wait_until(
            lambda: doing_jobs(fdb) and slow.gets() >= 1, timeout=30, what="the build to download"
        )
        [(dead_job, _, dead_worker)] = doing_jobs(fdb)
        first.send(signal.SIGKILL)
        assert first.wait(timeout=10) == -signal.SIGKILL
        killed = time.monotonic()
        assert build_jobs_in(fdb, "doing") == [(dead_job, f"product:{pid}", "doing")]
        slow.released.set()
        # Production waits STALLED_WORKER_S (120 s) for the heartbeat to age, then up to a minute
        # for the rescue's cron tick: about three minutes. This test ages the dead worker's
        # heartbeat by hand (it is dead: SIGKILL was reaped above) and queues the rescue now,
        # so what is measured is everything after the rescue decides the worker is gone.
        fdb.rows(
            "UPDATE procrastinate_workers SET last_heartbeat = now() - interval '10 minutes'"
            " WHERE id = %s",
            [dead_worker],
        )
        rig.spawn(s3_endpoint=proxy.endpoint)
        defer_rescue(fdb)
        wait_settled(fdb, [pid], timeout=60, what="the killed worker's SKU to be built again")
        recovered_s = time.monotonic() - killed
    finally:
        slow.released.set()
        proxy.close()
    assert statuses(fdb, [pid])[pid][:2] == ("collage_ready", None)
    jobs = dict(
        fdb.rows(
            "SELECT id, status::text FROM procrastinate_jobs WHERE lock = %s", [f"product:{pid}"]
        )
    )
    assert jobs.pop(dead_job) == "failed"  # the rescue failed it, freeing the SKU's lock
    assert list(jobs.values()) == ["succeeded"]
    assert build_jobs_in(fdb, "todo", "doing") == []
    assert overlapping_builds(fdb) == []
    with Image.open(io.BytesIO(rig.collage("faults", "KILL-1"))) as image:
        assert image.size == (60, 30)
    print(f"SIGKILL: killed -> rebuilt in {recovered_s:.2f}s (rescue queued by hand)")
    assert recovered_s < 60


# --- 2 and 3. database outages --------------------------------------------------------------


def _break_database(
    outage: str, *, cluster: Cluster, db: Db, bouncers: list, worker: WorkerProcess
) -> None:
    if outage == "postgres-restart":
        cluster.restart()
    elif outage == "postgres-down-seconds":
        cluster.shut_down()
        # Down for about 3 s (until the LISTEN reconnection has backed off to 3.2 s), longer
        # than a build's 1.5 s download: the running builds try to write while it is down.
        sandbox.wait_until(
            lambda: any(
                r.get("retry_in_s", 0) >= 3.2
                for r in worker.logged("listen connection failed; retrying")
            ),
            timeout=30,
            what="the worker to notice the outage",
        )
        cluster.start()
    elif outage == "terminate-backends":
        killed = db.value(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        assert killed >= 2, "expected the worker's pool and LISTEN connections"
    else:
        for bouncer in bouncers:
            bouncer.restart()


@pytest.mark.slow
@pytest.mark.parametrize(
    "outage",
    ["postgres-restart", "postgres-down-seconds", "terminate-backends", "pgbouncer-restart"],
)
def test_the_worker_recovers_by_itself_from_a_database_outage(
    outage: str, rig: Rig, fdb: Db, cluster: Cluster
) -> None:
    bouncers: list[sandbox.PgBouncer] = []
    db_url = session_url = rig.dsn
    if outage == "pgbouncer-restart":
        if sandbox.pgbouncer_binary() is None:
            missing_service("pgbouncer (apt-get install pgbouncer)")
        bouncers = [
            sandbox.start_pgbouncer(cluster.dsn, mode="transaction"),
            sandbox.start_pgbouncer(cluster.dsn, mode="session"),
        ]
        db_url, session_url = bouncers[0].for_dsn(rig.dsn), bouncers[1].for_dsn(rig.dsn)
    urls = rig.upload({"out/a.jpg": solid_jpeg(30, 20, BLUE), "out/b.jpg": solid_jpeg(30, 20, RED)})
    slow = SlowGets(delay_s=1.5)  # each build takes ~1.5 s: the outage lands mid-build
    proxy = sandbox.FaultyProxy(rig.s3_endpoint, slow)
    worker = None
    try:
        worker = rig.spawn(
            "-c", "2", s3_endpoint=proxy.endpoint, db_url=db_url, db_session_url=session_url
        )
        ids = add_products(fdb, [urls] * 4)
        sandbox.wait_until(
            lambda: len(doing_jobs(fdb)) == 2, timeout=30, what="two builds to be running"
        )
        interrupted = [lock for _, lock, _ in doing_jobs(fdb)]
        listening_before = listen_pids(fdb)
        assert listening_before, "the worker should be listening before the outage"
        broken_at = time.monotonic()
        _break_database(outage, cluster=cluster, db=fdb, bouncers=bouncers, worker=worker)
        outage_s = time.monotonic() - broken_at
        # Both clocks start when the outage is over: LISTEN on a new connection, and every SKU
        # (the two interrupted builds and the two waiting) finished.
        took = first_true(
            {
                "listen": lambda: bool(listen_pids(fdb) - listening_before),
                "settled": lambda: unsettled(fdb, ids) == 0,
            },
            timeout=45,
        )
        slow.released.set()
        delays = []
        for _ in range(5):
            [pid] = add_products(fdb, [urls])
            wait_settled(fdb, [pid], timeout=20, what="an upload made after the outage")
            delays.append(pickup_delay_s(fdb, pid))
            ids.append(pid)
        worker.sample_rss()
        alive = worker.alive()
    finally:
        slow.released.set()
        proxy.close()
        if worker is not None:
            worker.stop()  # before the bouncers go: a worker without a database is slow to stop
        for bouncer in bouncers:
            bouncer.stop()
            shutil.rmtree(bouncer.folder, ignore_errors=True)
    restarts = worker.logged("worker stopped unexpectedly; restarting")
    print(
        f"{outage}: outage {outage_s:.2f}s; interrupted {interrupted}; after it: LISTEN back in"
        f" {took['listen']:.2f}s, all 4 SKUs done in {took['settled']:.2f}s; supervisor"
        f" restarts {len(restarts)}; pickups {[round(d, 3) for d in delays]}"
        f" (median {statistics.median(delays) * 1000:.0f} ms); peak RSS"
        f" {worker.peak_rss_kb // 1024} MB"
    )
    assert alive, f"the worker exited ({worker.process.returncode}):\n{worker.tail()}"
    assert {s[0] for s in statuses(fdb, ids).values()} == {"collage_ready"}
    assert build_jobs_in(fdb, "todo", "doing") == []
    assert overlapping_builds(fdb) == []
    # Polling (1 s) gives a uniform 0-1 s delay: 4 of 5 under 0.2 s by polling is a 0.7 % fluke.
    fast = [d for d in delays if d < LISTEN_PICKUP_S]
    assert len(fast) >= 4, f"pickups {delays}: median {statistics.median(delays):.3f}s"


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["first-read", "final-write"])
def test_a_query_killed_in_flight_does_not_lose_the_sku(
    moment: str, rig: Rig, fdb: Db, fault_dsn: str
) -> None:
    """Kill the worker's connections while a build's own query is running (deterministic).

    A table lock held by the test parks the build's first read (products.fetch) or its final
    write (products.mark_ready) inside PostgreSQL; then every worker connection is terminated,
    as a failover or a PgBouncer restart would, exactly in that window.
    """
    urls = rig.upload({"kill/q.jpg": solid_jpeg(30, 20, RED)})
    [pid] = add_products(fdb, [urls], external_ids=["INFLIGHT-1"], status="pending")
    slow = SlowGets(delay_s=30)
    if moment == "first-read":
        slow.released.set()
    proxy = sandbox.FaultyProxy(rig.s3_endpoint, slow)
    locker = psycopg.connect(fault_dsn)
    try:
        rig.spawn(s3_endpoint=proxy.endpoint)
        # The periodic jobs a worker queues at start (the sweep reads raw_products) run first.
        sandbox.wait_until(
            lambda: (
                not fdb.value(
                    "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"
                )
            ),
            timeout=20,
            what="the start-up periodic jobs to finish",
        )
        if moment == "first-read":
            # Its job is queued while the table is locked: the build's first read waits.
            fdb.rows("ALTER TABLE raw_products DISABLE TRIGGER USER")
            fdb.rows("UPDATE raw_products SET image_status = 'uploaded' WHERE id = %s", [pid])
            fdb.rows("ALTER TABLE raw_products ENABLE TRIGGER USER")
            locker.execute("LOCK TABLE raw_products IN ACCESS EXCLUSIVE MODE")
            fdb.rows("SELECT collage_enqueue(%s)", [pid])
        else:
            # The table is locked while the build downloads: its final write waits.
            fdb.rows("UPDATE raw_products SET image_status = 'uploaded' WHERE id = %s", [pid])
            sandbox.wait_until(lambda: slow.gets() >= 1, timeout=20, what="the build to download")
            locker.execute("LOCK TABLE raw_products IN ACCESS EXCLUSIVE MODE")
            slow.released.set()
        locker_pid = locker.info.backend_pid
        statement = "SELECT id, external_id%" if moment == "first-read" else "UPDATE raw_products%"
        sandbox.wait_until(
            lambda: fdb.value(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND query LIKE %s",
                [statement],
            ),
            timeout=20,
            what=f"the build's {moment} to wait on the lock",
        )
        killed = fdb.value(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid NOT IN (pg_backend_pid(), %s)",
            [locker_pid],
        )
        locker.rollback()
        started = time.monotonic()
        try:
            wait_settled(fdb, [pid], timeout=30, what=f"the SKU after its {moment} was killed")
        except TimeoutError as exc:
            jobs = fdb.rows(
                "SELECT id, status::text, attempts FROM procrastinate_jobs WHERE lock = %s",
                [f"product:{pid}"],
            )
            state = statuses(fdb, [pid])[pid]
            raise AssertionError(f"{exc}: SKU {state}, its jobs {jobs}") from None
        took = time.monotonic() - started
    finally:
        slow.released.set()
        proxy.close()
        locker.close()
    jobs = fdb.rows(
        "SELECT id, task_name, status::text FROM procrastinate_jobs ORDER BY id",
    )
    assert statuses(fdb, [pid])[pid][:2] == ("collage_ready", None)
    print(f"{moment} killed ({killed} connections): SKU built {took:.2f}s later; jobs {jobs}")


# --- 4. S3 faults ---------------------------------------------------------------------------


def _short_timeout_bucket(endpoint: str, name: str, *, read_timeout: float) -> storage.Bucket:
    client = s3_client(
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
    s3.put_object(Bucket=s3_bucket, Key="a.jpg", Body=b"x")
    slow = SlowGets(delay_s=30)
    proxy = sandbox.FaultyProxy(s3_endpoint, slow)
    bucket = _short_timeout_bucket(proxy.endpoint, s3_bucket, read_timeout=0.5)
    started = time.monotonic()
    try:
        with pytest.raises(Transient, match=r"S3 unavailable while getting a\.jpg: Read timeout"):
            bucket.get("a.jpg")
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
    for key, data in {"a.jpg": jpeg(60, 80, seed=1), "b.jpg": jpeg(40, 80, seed=2)}.items():
        s3.put_object(Bucket=settings.s3_bucket, Key=key, Body=data)
    urls = [f"s3://{settings.s3_bucket}/{k}" for k in ("a.jpg", "b.jpg")]
    release = threading.Event()
    seen: dict[str, int] = {}
    stalled: list[int] = []

    def first_attempt() -> bool:
        with psycopg.connect(settings.db_url, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM collage_outcomes").fetchone()
            return row == (0,)

    def rule(method: str, path: str) -> sandbox.Fault | None:
        name = f"{method} {path.rsplit('/', 1)[-1]}"
        seen[name] = seen.get(name, 0) + 1
        if name == "GET a.jpg" and seen[name] == 1:
            return sandbox.Fault(status=503)
        if name == "GET b.jpg" and first_attempt():  # every try of botocore's stalls
            stalled.append(seen[name])
            release.wait(5)
        if method == "PUT" and seen[name] == 1:
            return sandbox.Fault(status=500)
        return None

    # The worker's client, with its timeouts cut from 5 s/30 s to 1 s/0.5 s to keep this fast.
    real_config = storage.Config
    monkeypatch.setattr(
        storage,
        "Config",
        lambda **kw: real_config(**{**kw, "connect_timeout": 1, "read_timeout": 0.5}),
    )
    monkeypatch.setattr(tasks, "BACKOFF_BASE_S", 0.2)
    proxy = sandbox.FaultyProxy(settings.s3_endpoint, rule)
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
    s3.put_object(Bucket=settings.s3_bucket, Key="a.jpg", Body=jpeg(30, 40))
    calls: list[str] = []

    def rule(method: str, path: str) -> None:
        calls.append(f"{method} {path.rsplit('/', 1)[-1]}")

    proxy = sandbox.FaultyProxy(settings.s3_endpoint, rule)
    try:
        start_worker(settings.replace(s3_endpoint=proxy.endpoint))
        urls = [f"s3://{settings.s3_bucket}/a.jpg", f"s3://{settings.s3_bucket}/gone.jpg"]
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
    assert row == ("error", f"original not found in bucket {settings.s3_bucket}: gone.jpg")
    outcomes = db.execute("SELECT outcome, error_class FROM collage_outcomes").fetchall()
    assert outcomes == [("error", "OriginalMissing")]
    assert calls.count("GET gone.jpg") == 1  # neither botocore nor the job asked twice
    jobs = db.execute("SELECT count(*) FROM procrastinate_jobs WHERE task_name = 'collage.build'")
    assert jobs.fetchone() == (1,)


# --- 5. SIGTERM -----------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_lets_running_builds_finish_within_the_grace_period(rig: Rig, fdb: Db) -> None:
    urls = rig.upload({"term/a.jpg": solid_jpeg(30, 20, GREEN)})
    slow = SlowGets(delay_s=2.0)
    proxy = sandbox.FaultyProxy(rig.s3_endpoint, slow)
    try:
        worker = rig.spawn("-c", "2", "--graceful-timeout", "30", s3_endpoint=proxy.endpoint)
        ids = add_products(fdb, [urls, urls])
        sandbox.wait_until(lambda: len(doing_jobs(fdb)) == 2, timeout=30, what="two builds")
        signalled = time.monotonic()
        worker.send(signal.SIGTERM)
        code = worker.wait(timeout=45)
        exit_s = time.monotonic() - signalled
    finally:
        slow.released.set()
        proxy.close()
    assert code == 0, worker.tail()
    assert {s[:2] for s in statuses(fdb, ids).values()} == {("collage_ready", None)}
    jobs = fdb.rows("SELECT status::text FROM procrastinate_jobs WHERE task_name = 'collage.build'")
    assert sorted(r[0] for r in jobs) == ["succeeded", "succeeded"]  # finished, not queued again
    assert exit_s < 30
    print(f"SIGTERM, grace 30 s: both builds finished, exit 0 after {exit_s:.2f}s")


@pytest.mark.slow
def test_sigterm_with_a_short_grace_period_queues_the_interrupted_sku_again(
    rig: Rig, fdb: Db
) -> None:
    urls = rig.upload({"term/b.jpg": solid_jpeg(30, 20, GREEN)})
    slow = SlowGets(delay_s=4.0)  # longer than the grace period
    proxy = sandbox.FaultyProxy(rig.s3_endpoint, slow)
    try:
        worker = rig.spawn("--graceful-timeout", "0.5", s3_endpoint=proxy.endpoint)
        [pid] = add_products(fdb, [urls])
        sandbox.wait_until(
            lambda: doing_jobs(fdb) and slow.gets() >= 1, timeout=30, what="the build"
        )
        signalled = time.monotonic()
        worker.send(signal.SIGTERM)
        code = worker.wait(timeout=45)
        exit_s = time.monotonic() - signalled
        jobs = fdb.rows(
            "SELECT status::text FROM procrastinate_jobs WHERE lock = %s ORDER BY id",
            [f"product:{pid}"],
        )
        assert [r[0] for r in jobs] == ["aborted", "todo"], worker.tail()
        assert statuses(fdb, [pid])[pid][0] == "uploaded"
        slow.released.set()
        rig.spawn(s3_endpoint=proxy.endpoint)
        wait_settled(fdb, [pid], timeout=30, what="the next worker to build the interrupted SKU")
    finally:
        slow.released.set()
        proxy.close()
    assert code == 0, worker.tail()
    assert statuses(fdb, [pid])[pid][:2] == ("collage_ready", None)
    assert build_jobs_in(fdb, "todo", "doing") == []
    print(f"SIGTERM, grace 0.5 s: requeued, exit 0 after {exit_s:.2f}s (stalled GET: 4 s)")


# --- bad input through S3 -------------------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    name: str
    urls: object
    expected: str
    brand: str = "faults"
    external_id: str = ""


def _bad_inputs(bucket: str, endpoint: str) -> tuple[dict[str, bytes], list[Bad]]:
    good = jpeg(40, 50, seed=7)
    photo = solid_jpeg(30, 40, RED)
    truncated = jpeg(300, 300, seed=3)
    corrupt_header = bytearray(jpeg(60, 60, seed=4))
    corrupt_header[2:40] = b"\x00" * 38
    photos = {
        "bad/ok.jpg": photo,
        "bad/empty.jpg": b"",
        "bad/truncated.jpg": truncated[: len(truncated) // 2],
        "bad/html.jpg": b"<html><body>502 Bad Gateway</body></html>",
        "bad/text.jpg": b"this is not a photo\n",
        "bad/corrupt-header.jpg": bytes(corrupt_header),
        "bad/bomb.png": png_header_only(20_000, 20_000),
        "bad/tall.jpg": solid_jpeg(10, 4000, RED),
        "bad/wide.jpg": solid_jpeg(4000, 100, RED),
        "bad/thin.jpg": solid_jpeg(1, 20_000, RED),
        "bad/block.jpg": solid_jpeg(650, 1000, RED),
        "bad/good.jpg": good,
    }

    def s3u(key: str) -> str:
        return f"s3://{bucket}/{key}"

    ok = s3u("bad/ok.jpg")
    cases = [
        Bad("zero bytes", [ok, s3u("bad/empty.jpg")], "photo 2 (bad/empty.jpg) is not a"),
        Bad("truncated", [s3u("bad/truncated.jpg")], "bad/truncated.jpg) cannot be"),
        Bad("html page", [ok, s3u("bad/html.jpg")], "bad/html.jpg) is not a"),
        Bad("text file", [s3u("bad/text.jpg")], "bad/text.jpg) is not a"),
        Bad("corrupt header", [s3u("bad/corrupt-header.jpg")], "bad/corrupt-header.jpg)"),
        Bad("decompression bomb", [s3u("bad/bomb.png")], "400,000,000 pixels"),
        Bad(
            "too wide for JPEG",
            [s3u("bad/tall.jpg"), s3u("bad/wide.jpg")],
            "px wide (2 photos scaled to 4,000 px high); JPEG allows at most 65,500 px",
        ),
        Bad(
            "over the canvas budget",
            [s3u("bad/thin.jpg"), s3u("bad/block.jpg")],
            "the collage would be 13,001 x 20,000 px",
        ),
        Bad("empty list", [], "image_urls is empty"),
        Bad("JSON null", "json-null", "image_urls is empty"),
        Bad("SQL NULL", None, "image_urls is empty"),
        Bad("an object", {"front": ok}, "not a list"),
        Bad("a string", ok, "not a list"),
        Bad("numbers", [1, 2], "image_urls holds 1, not a URL"),
        Bad("nested list", [[ok]], "not a URL"),
        Bad("null entry", [ok, None], "image_urls holds None, not a URL"),
        Bad("a thousand photos", [ok] * 1000, "image_urls has 1000 photos; at most 40 fit"),
        Bad("another host", ["https://evil.example.com/x.jpg"], "https://evil.example.com/x.jpg"),
        Bad("another bucket", ["s3://someone-else/x.jpg"], "is in bucket 'someone-else'"),
        Bad("another bucket, path style", [f"{endpoint}/someone-else/x.jpg"], "not in bucket"),
        Bad("dot-dot", [f"s3://{bucket}/bad/../secret.jpg"], "does not name a plain object key"),
        Bad("encoded dot-dot", [f"s3://{bucket}/bad/%2e%2e/x.jpg"], "plain object key"),
        Bad("file URL", ["file:///etc/passwd"], "is not an s3:// or http(s):// URL"),
        Bad("unsafe brand", [ok], "brand '../etc' cannot be used", brand="../etc"),
        Bad("brand with slash", [ok], "brand 'a/b' cannot be used", brand="a/b"),
        Bad("empty brand", [ok], "brand is empty", brand=""),
        Bad("dot-dot id", [ok], "external_id '..' cannot be used", external_id=".."),
        Bad("id with slash", [ok], "external_id 'x/../../y' cannot", external_id="x/../../y"),
        Bad("id with newline", [ok], "external_id 'a\\nb' cannot", external_id="a\nb"),
    ]
    return photos, cases


@pytest.mark.slow
def test_bad_input_ends_in_error_with_a_clear_message_and_spares_the_rest_of_the_batch(
    rig: Rig, fdb: Db
) -> None:
    photos, cases = _bad_inputs(rig.bucket, rig.s3_endpoint)
    rig.upload(photos)
    good_urls = [f"s3://{rig.bucket}/bad/good.jpg", f"s3://{rig.bucket}/bad/ok.jpg"]
    rig.spawn("-c", "2")
    goods = [f"GOOD-{n}" for n in range(5)]
    bads = [case.external_id or f"BAD-{n}" for n, case in enumerate(cases)]
    # Bad and good SKUs interleaved in one transaction, as one scraper batch.
    urls: list[object] = []
    for case in cases:
        urls.append(
            None if case.urls is None else Jsonb(None) if case.urls == "json-null" else case.urls
        )
    ids = add_products(
        fdb,
        [*urls, *([good_urls] * len(goods))],
        brands=[*(c.brand for c in cases), *(["faults"] * len(goods))],
        external_ids=[*bads, *goods],
    )
    wait_settled(fdb, ids, timeout=60, what="the batch of bad and good SKUs")
    state = statuses(fdb, ids)
    problems = []
    for case, product_id in zip(cases, ids, strict=False):
        status, message, url = state[product_id]
        if status != "error" or url is not None or case.expected not in (message or ""):
            problems.append(f"{case.name}: {status} {message!r}")
        elif "\n" in message or "Traceback" in message or len(message) > 600:
            problems.append(f"{case.name}: message unfit for an operator: {message!r}")
    assert problems == []
    for product_id in ids[len(cases) :]:
        assert state[product_id][:2] == ("collage_ready", None)
    # Each bad SKU failed once, at once: permanent, never retried.
    attempts = fdb.rows(
        "SELECT product_id, array_agg(outcome ORDER BY id) FROM collage_outcomes"
        " WHERE product_id = ANY(%s) GROUP BY product_id",
        [ids[: len(cases)]],
    )
    assert {tuple(a[1]) for a in attempts} == {("error",)} and len(attempts) == len(cases)
    # Nothing written anywhere but the good SKUs' collages.
    written = rig.keys() - set(photos)
    assert written == {f"collages/faults/{g}.jpg" for g in goods}
    scratch = rig.folder / "scratch"
    assert not scratch.exists() or not any(scratch.rglob("*"))
    for name, message in sorted((c.name, state[i][1]) for c, i in zip(cases, ids, strict=False)):
        print(f"{name:>28}: {message}")


_URL_TEXT = st.text(
    alphabet=st.sampled_from(string.ascii_letters + string.digits + "/.%-_:?#@\\ \n\x00~+"),
    max_size=40,
)


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(
    url=st.one_of(
        _URL_TEXT,
        _URL_TEXT.map(lambda s: f"s3://pics/{s}"),
        _URL_TEXT.map(lambda s: f"http://127.0.0.1:9000/pics/{s}"),
        _URL_TEXT.map(lambda s: f"https://cdn.example.com/p/{s}"),
        st.none(),
        st.integers(),
        st.lists(st.text(max_size=3), max_size=2),
    )
)
def test_any_image_url_maps_to_a_plain_key_in_the_bucket_or_is_refused(url: object) -> None:
    try:
        key = storage.key_for_url(
            url,
            bucket="pics",
            endpoint="http://127.0.0.1:9000",
            public_url="https://cdn.example.com/p",
        )
    except CollageError:
        return  # a Permanent error with a message; anything else would be a bug
    segments = key.split("/")
    assert key and all(s not in {"", ".", ".."} for s in segments)
    assert not any(c in key for c in "\\\x00\n")


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(
    key=st.lists(
        st.text(
            alphabet=string.ascii_letters + string.digits + "-_ .()+", min_size=1, max_size=12
        ).filter(lambda s: s.strip(".") != ""),
        min_size=1,
        max_size=4,
    ).map("/".join)
)
def test_a_plain_key_survives_every_url_form(key: str) -> None:
    kwargs = {
        "bucket": "pics",
        "endpoint": "http://127.0.0.1:9000",
        "public_url": "https://cdn.example.com/p",
    }
    for url in (
        f"s3://pics/{quote(key)}",
        f"http://127.0.0.1:9000/pics/{quote(key)}",
        f"https://cdn.example.com/p/{quote(key)}",
        f"http://pics.127.0.0.1:9000/{quote(key)}",
    ):
        assert storage.key_for_url(url, **kwargs) == key


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(brand=st.text(max_size=12), external_id=st.text(max_size=12))
def test_a_collage_key_stays_under_collages_or_is_refused(brand: str, external_id: str) -> None:
    try:
        key = storage.collage_key(brand, external_id)
    except UnsafeKey:
        return
    assert key == f"collages/{brand}/{external_id}.jpg"
    assert len(key.split("/")) == 3 and ".." not in key.split("/")[1:]


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
