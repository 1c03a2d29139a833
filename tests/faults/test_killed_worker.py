"""A worker killed in the middle of a build: its SKU is rebuilt by another within seconds.

Nobody helps the rescue here: no heartbeat is aged by hand, no rescue is queued. The killed
worker's liveness locks vanish with its connection, the other workers notice at their next
rescue round, and the SKU is queued again and picked up by NOTIFY.
"""

from __future__ import annotations

import signal
import statistics
import time

import pytest

from collage.constants import MAX_WORKER_DEATHS
from dev import sandbox
from dev.photos import solid_jpeg
from dev.s3proxy import FaultyProxy, HoldOnce
from tests.support.cluster import Cluster
from tests.support.db import Db
from tests.support.pictures import BLUE, RED
from tests.support.queue import build_jobs_in, doing_jobs, overlapping_builds
from tests.support.skus import add_products, statuses, wait_settled
from tests.support.workers import Rig

RESCUE_BOUND_S = 30  # issue 9: rebuilt by a live worker within 30 s, production defaults


def _kill_mid_build(rig: Rig, fdb: Db, *, runs: int, **db_urls: str) -> list[float]:
    """Each round: the live worker takes a SKU, a fresh one starts, the first is SIGKILLed."""
    hold = HoldOnce()
    proxy = FaultyProxy(rig.s3_endpoint, hold)
    took = []
    try:
        victim = rig.spawn(s3_endpoint=proxy.endpoint, **db_urls)
        for run in range(runs):
            urls = rig.upload({f"kill/{run}.jpg": solid_jpeg(40, 30, RED)})
            [pid] = add_products(fdb, [urls], external_ids=[f"KILL-{run}"])
            sandbox.wait_until(
                lambda run=run: hold.held(f"kill/{run}.jpg") and doing_jobs(fdb),
                timeout=30,
                what="the build to download",
            )
            successor = rig.spawn(s3_endpoint=proxy.endpoint, **db_urls)
            victim.send(signal.SIGKILL)
            killed = time.monotonic()
            assert victim.wait(timeout=10) == -signal.SIGKILL
            wait_settled(fdb, [pid], timeout=90, what=f"SKU {run} to be built again")
            took.append(time.monotonic() - killed)
            assert statuses(fdb, [pid])[pid][:2] == ("collage_ready", None)
            victim = successor
    finally:
        hold.released.set()
        proxy.close()
    assert build_jobs_in(fdb, "todo", "doing") == []
    assert overlapping_builds(fdb) == []
    return took


@pytest.mark.slow
def test_a_killed_workers_sku_is_rebuilt_by_another_within_30_s(rig: Rig, fdb: Db) -> None:
    took = _kill_mid_build(rig, fdb, runs=5)
    print(
        f"SIGKILL mid-build, direct: rebuilt after p50 {statistics.median(took):.1f}s,"
        f" max {max(took):.1f}s ({', '.join(f'{t:.1f}' for t in took)})"
    )
    assert max(took) <= RESCUE_BOUND_S


@pytest.mark.slow
def test_the_same_through_pgbouncer_pools(
    rig: Rig, fdb: Db, cluster: Cluster, fault_dsn: str
) -> None:
    session = sandbox.start_pgbouncer(cluster.dsn, mode="session")
    transaction = sandbox.start_pgbouncer(cluster.dsn, mode="transaction")
    try:
        took = _kill_mid_build(
            rig,
            fdb,
            runs=3,
            db_url=transaction.for_dsn(fault_dsn),
            db_session_url=session.for_dsn(fault_dsn),
        )
    finally:
        for worker in rig.workers:  # before the pools they talk through go away
            worker.stop()
        session.stop()
        transaction.stop()
    print(
        f"SIGKILL mid-build, through PgBouncer: rebuilt after p50 {statistics.median(took):.1f}s,"
        f" max {max(took):.1f}s"
    )
    assert max(took) <= RESCUE_BOUND_S


@pytest.mark.slow
def test_a_sku_that_kills_every_worker_ends_in_error_and_the_others_flow(rig: Rig, fdb: Db) -> None:
    # Each worker reads S3 through its own proxy, so the proxy knows whom the poison photo is
    # killing; the test stands in for the OOM killer.
    poison = rig.upload({"poison/p.jpg": solid_jpeg(40, 30, RED)})
    good = rig.upload({"poison/ok.jpg": solid_jpeg(40, 30, BLUE)})
    proxies: list[FaultyProxy] = []
    deaths: list[float] = []

    def spawn() -> None:
        def rule(method: str, path: str) -> None:
            if method == "GET" and path.endswith("/poison/p.jpg"):
                deaths.append(time.monotonic())
                worker.send(signal.SIGKILL)
                time.sleep(5)  # the dead worker's request never gets its answer
            return None

        proxies.append(FaultyProxy(rig.s3_endpoint, rule))
        worker = rig.spawn(s3_endpoint=proxies[-1].endpoint)

    try:
        spawn()
        spawn()
        [bad] = add_products(fdb, [poison], external_ids=["POISON-1"])
        goods: list[int] = []
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            goods += add_products(fdb, [good], external_ids=[f"OK-{len(goods)}"])
            if statuses(fdb, [bad])[bad][0] == "error":
                break
            if sum(w.alive() for w in rig.workers) < 2:
                spawn()
            time.sleep(1)
        wait_settled(fdb, goods, timeout=60, what="the good SKUs")
    finally:
        for proxy in proxies:
            proxy.close()
    status, error, _ = statuses(fdb, [bad])[bad]
    built = [statuses(fdb, [g])[g][0] for g in goods]
    print(
        f"poison SKU: {status} after {len(deaths)} worker deaths: {error};"
        f" {len(goods)} others built meanwhile"
    )
    assert status == "error"
    assert len(deaths) == MAX_WORKER_DEATHS <= 5
    assert error == (
        f"the worker died {MAX_WORKER_DEATHS} times while building this SKU;"
        " last seen downloading 1 photo"
    )
    assert set(built) == {"collage_ready"}
