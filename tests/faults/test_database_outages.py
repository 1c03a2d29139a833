"""Database outages and killed queries under running builds: no SKU is lost."""

from __future__ import annotations

import shutil
import statistics
import time

import psycopg
import pytest

from collage.constants import RESCUE_TASK
from dev import sandbox
from dev.photos import solid_jpeg
from dev.s3proxy import FaultyProxy, SlowGets
from tests.conftest import missing_service
from tests.support.cluster import Cluster
from tests.support.db import Db
from tests.support.pictures import BLUE, RED
from tests.support.queue import (
    LISTEN_PICKUP_S,
    build_jobs_in,
    doing_jobs,
    first_true,
    listen_pids,
    overlapping_builds,
    pickup_delay_s,
)
from tests.support.skus import add_products, describe_unsettled, statuses, unsettled, wait_settled
from tests.support.workers import Rig, WorkerProcess

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
        # Started again whatever happens: the other tests share this cluster.
        try:
            sandbox.wait_until(
                lambda: any(
                    r.get("retry_in_s", 0) >= 3.2
                    for r in worker.logged("listen connection failed; retrying")
                ),
                timeout=60,
                what="the worker to notice the outage",
            )
        finally:
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
    proxy = FaultyProxy(rig.s3_endpoint, slow)
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
                # Every LISTEN of the worker's (its builds' and its periodic jobs') on a new
                # connection.
                "listen": lambda: len(listen_pids(fdb) - listening_before) >= len(listening_before),
                "settled": lambda: unsettled(fdb, ids) == 0,
            },
            timeout=45,
            explain=lambda: describe_unsettled(fdb, ids),
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

    A table lock held by the test parks the build's first read (builds.start) or its final
    write (builds.newer_owner) inside PostgreSQL; then every worker connection is terminated,
    as a failover or a PgBouncer restart would, exactly in that window.
    """
    urls = rig.upload({"kill/q.jpg": solid_jpeg(30, 20, RED)})
    [pid] = add_products(fdb, [urls], external_ids=["INFLIGHT-1"], status="pending")
    slow = SlowGets(delay_s=30)
    if moment == "first-read":
        slow.released.set()
    proxy = FaultyProxy(rig.s3_endpoint, slow)
    locker = psycopg.connect(fault_dsn)
    try:
        # One slot more than the default: a sweep and an hourly retry due while the table is
        # locked wait on it too, and the build still gets a slot.
        rig.spawn("-c", "3", s3_endpoint=proxy.endpoint)
        # The periodic jobs a worker queues at start (the sweep reads raw_products) run first.
        # Procrastinate defers them in the order they are declared, the every-minute rescue
        # after the sweep and the retry: once the rescue is deferred, the others are too.
        sandbox.wait_until(
            lambda: (
                fdb.value(
                    "SELECT count(*) FROM procrastinate_periodic_defers WHERE task_name = %s",
                    [RESCUE_TASK],
                )
                and not fdb.value(
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
            # Its generation and brand given: collage_enqueue would otherwise read the locked row.
            fdb.rows("SELECT collage_enqueue(%s, 0, NULL, 0, 'faults')", [pid])
        else:
            # The table is locked while the build downloads: its final write waits.
            fdb.rows("UPDATE raw_products SET image_status = 'uploaded' WHERE id = %s", [pid])
            sandbox.wait_until(lambda: slow.gets() >= 1, timeout=20, what="the build to download")
            locker.execute("LOCK TABLE raw_products IN ACCESS EXCLUSIVE MODE")
            slow.released.set()
        locker_pid = locker.info.backend_pid
        # The first read is builds.start; the final write starts by looking for other rows
        # naming the same collage (builds.newer_owner).
        statement = "%WITH p AS (%" if moment == "first-read" else "%WHERE brand = %"
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
        took = wait_settled(fdb, [pid], timeout=30, what=f"the SKU after its {moment} was killed")
    finally:
        slow.released.set()
        proxy.close()
        locker.close()
    jobs = fdb.rows(
        "SELECT id, task_name, status::text FROM procrastinate_jobs ORDER BY id",
    )
    assert statuses(fdb, [pid])[pid][:2] == ("collage_ready", None)
    print(f"{moment} killed ({killed} connections): SKU built {took:.2f}s later; jobs {jobs}")
