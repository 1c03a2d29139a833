"""SIGTERM: running builds finish within the grace period or are queued again."""

from __future__ import annotations

import signal
import time

import pytest

from collage.constants import DEAD_WORKER_S, RESCUE_EVERY_S
from dev import sandbox
from dev.photos import solid_jpeg
from dev.s3proxy import Fault, FaultyProxy, SlowGets
from tests.support.db import Db
from tests.support.pictures import GREEN
from tests.support.queue import build_jobs_in, doing_jobs
from tests.support.skus import add_products, statuses, wait_settled
from tests.support.workers import Rig

# --- 5. SIGTERM -----------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_lets_running_builds_finish_within_the_grace_period(rig: Rig, fdb: Db) -> None:
    urls = rig.upload({"term/a.jpg": solid_jpeg(30, 20, GREEN)})
    slow = SlowGets(delay_s=2.0)
    proxy = FaultyProxy(rig.s3_endpoint, slow)
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
    proxy = FaultyProxy(rig.s3_endpoint, slow)
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


@pytest.mark.slow
def test_a_draining_worker_is_never_rescued_from_under_itself(rig: Rig, fdb: Db) -> None:
    # SIGTERM while a build waits on S3 for longer than a dead worker goes unnoticed: the
    # draining worker sends no heartbeat, but holds its job's liveness lock, so the other
    # worker's rescue rounds (every 5 s) leave the job alone and it finishes where it started.
    urls = rig.upload({"term/drain.jpg": solid_jpeg(30, 20, GREEN)})
    hold_s = DEAD_WORKER_S + 3 * RESCUE_EVERY_S
    gets: list[str] = []

    def trickle_first(method: str, path: str) -> Fault | None:
        if method != "GET" or "/collages/" in path:
            return None
        gets.append(path)
        return Fault(trickle_s=hold_s) if len(gets) == 1 else None

    proxy = FaultyProxy(rig.s3_endpoint, trickle_first)
    try:
        draining = rig.spawn("--graceful-timeout", "60", s3_endpoint=proxy.endpoint)
        [pid] = add_products(fdb, [urls])
        sandbox.wait_until(lambda: doing_jobs(fdb) and gets, timeout=30, what="the build")
        rig.spawn(s3_endpoint=proxy.endpoint)  # the one that would rescue
        signalled = time.monotonic()
        draining.send(signal.SIGTERM)
        code = draining.wait(timeout=hold_s + 60)
        exit_s = time.monotonic() - signalled
    finally:
        proxy.close()
    assert code == 0, draining.tail()
    assert len(gets) == 1  # downloaded once, by the worker that drained
    assert statuses(fdb, [pid])[pid][:2] == ("collage_ready", None)
    jobs = fdb.rows(
        "SELECT status::text FROM procrastinate_jobs WHERE lock = %s", [f"product:{pid}"]
    )
    assert [r[0] for r in jobs] == ["succeeded"], jobs  # never failed by a rescue, never twice
    assert exit_s > DEAD_WORKER_S  # it really drained longer than a dead worker is given
    print(f"drain of {exit_s:.1f}s without heartbeats: not rescued, built once, exit 0")
