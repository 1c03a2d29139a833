"""A worker killed in the middle of a build leaves its SKU to the next worker."""

from __future__ import annotations

import io
import signal
import time

import pytest
from PIL import Image

from dev import sandbox
from dev.photos import solid_jpeg
from tests.support.processes import (
    RED,
    Db,
    Rig,
    add_products,
    build_jobs_in,
    defer_rescue,
    doing_jobs,
    overlapping_builds,
    statuses,
    wait_settled,
)
from tests.support.s3proxy import FaultyProxy, SlowGets

# --- 1. SIGKILL in the middle of a build ----------------------------------------------------


@pytest.mark.slow
def test_a_worker_killed_mid_build_leaves_its_sku_to_the_next_worker(rig: Rig, fdb: Db) -> None:
    urls = rig.upload(
        {"kill/a.jpg": solid_jpeg(40, 30, RED), "kill/b.jpg": solid_jpeg(20, 30, RED)}
    )
    slow = SlowGets(delay_s=120)  # the first worker's download never ends on its own
    proxy = FaultyProxy(rig.s3_endpoint, slow)
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
