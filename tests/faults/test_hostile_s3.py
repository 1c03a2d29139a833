"""A hostile S3: one that trickles bytes for ever, or refuses every request.

Neither may hold a worker slot past its deadline, hold up the periodic jobs, or burn the queue.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time

import pytest

from dev import sandbox
from dev.photos import jpeg
from dev.s3proxy import Fault, FaultyProxy
from tests.support.db import Db
from tests.support.queue import defer_rescue, doing_jobs, first_true
from tests.support.skus import add_products, statuses, wait_settled
from tests.support.workers import Rig, collage_command, worker_env

# Slower than any read timeout allows at once, yet no single read waits long: 50 pieces, 12 s
# apart, against botocore's 20 s read timeout.
TRICKLE = Fault(trickle_s=600)


def outcomes(fdb: Db, ids: list[int]) -> list[tuple]:
    return fdb.rows(
        "SELECT outcome, error_class, message FROM collage_outcomes"
        " WHERE product_id = ANY(%s) ORDER BY id",
        [ids],
    )


def job_status(fdb: Db, job_id: int) -> str:
    return str(fdb.value("SELECT status::text FROM procrastinate_jobs WHERE id = %s", [job_id]))


def health(rig: Rig, endpoint: str) -> str:
    """What `collage health` prints for this rig's worker, as an operator runs it."""
    done = subprocess.run(
        [*collage_command(), "health"],
        env=worker_env(rig.settings(s3_endpoint=endpoint)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.stdout + done.stderr


@pytest.mark.slow
def test_a_trickling_s3_holds_a_slot_no_longer_than_the_deadline_nor_holds_up_maintenance(
    rig: Rig, fdb: Db
) -> None:
    slow = rig.upload({"slow/a.jpg": jpeg(64, 48, seed=1)})
    good = rig.upload({"good/b.jpg": jpeg(64, 48, seed=2)})
    proxy = FaultyProxy(rig.s3_endpoint, lambda method, path: TRICKLE if "/slow/" in path else None)
    try:
        rig.spawn("-c", "2", s3_endpoint=proxy.endpoint, download_deadline_s=6)
        stuck = add_products(fdb, [slow, slow])
        sandbox.wait_until(lambda: len(doing_jobs(fdb)) == 2, timeout=30, what="both slots")
        rescue = defer_rescue(fdb)
        took = first_true(
            {
                "rescue": lambda: job_status(fdb, rescue) == "succeeded",
                "deadline": lambda: len(outcomes(fdb, stuck)) == 2,
            },
            timeout=30,
        )
        [built] = add_products(fdb, [good])
        wait_settled(fdb, [built], timeout=30, what="a good SKU after the trickling ones")
    finally:
        proxy.close()
    # The periodic job ran while both build slots were still downloading.
    assert took["rescue"] < took["deadline"], took
    ended = outcomes(fdb, stuck)
    assert [o[:2] for o in ended] == [("retry", "Transient")] * 2, ended
    assert all(o[2] == "downloading the photos took over 6 s" for o in ended), ended
    assert 5 <= took["deadline"] < 15, took
    assert statuses(fdb, [built])[built][0] == "collage_ready"
    print(
        f"both slots trickling: rescue ran after {took['rescue']:.2f}s, the builds ended"
        f" {took['deadline']:.2f}s after, as Transient retries"
    )


@pytest.mark.slow
def test_hand_overs_at_shutdown_count_as_attempts_up_to_the_cap(rig: Rig, fdb: Db) -> None:
    slow = rig.upload({"slow/c.jpg": jpeg(64, 48, seed=3)})
    proxy = FaultyProxy(rig.s3_endpoint, lambda method, path: TRICKLE if "/slow/" in path else None)

    def cut_short() -> None:
        worker = rig.spawn("--graceful-timeout", "0.5", s3_endpoint=proxy.endpoint)
        sandbox.wait_until(lambda: doing_jobs(fdb), timeout=30, what="the build to start")
        worker.send(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0, worker.tail()

    def waiting_attempt() -> int | None:
        found = fdb.rows(
            "SELECT (args ->> 'attempt')::int FROM procrastinate_jobs"
            " WHERE lock = %s AND status = 'todo'",
            [f"product:{pid}"],
        )
        return int(found[0][0]) if found else None

    try:
        [pid] = add_products(fdb, [slow])
        cut_short()
        assert waiting_attempt() == 1  # the hand-over spent an attempt
        fdb.rows(  # as if it had been cut short four times more
            "UPDATE procrastinate_jobs SET args = jsonb_set(args, '{attempt}', '5')"
            " WHERE lock = %s AND status = 'todo'",
            [f"product:{pid}"],
        )
        cut_short()
    finally:
        proxy.close()
    assert waiting_attempt() is None
    status, message = statuses(fdb, [pid])[pid][:2]
    assert (status, message) == (
        "error",
        "gave up after 6 attempts: the worker stopped while building this SKU",
    )
    print(f"a SKU cut short at every shutdown: {status} after 6 attempts: {message}")


@pytest.mark.slow
def test_s3_refusing_every_request_holds_builds_back_instead_of_failing_them(
    rig: Rig, fdb: Db
) -> None:
    urls = [rig.upload({f"ok/{n}.jpg": jpeg(64, 48, seed=n)}) for n in range(8)]
    refusing = threading.Event()
    refusing.set()

    def rule(method: str, path: str) -> Fault | None:
        return Fault(status=403, code="RequestTimeTooSkewed") if refusing.is_set() else None

    proxy = FaultyProxy(rig.s3_endpoint, rule)
    try:
        rig.spawn("-c", "2", s3_endpoint=proxy.endpoint)
        ids = add_products(fdb, urls)
        sandbox.wait_until(
            lambda: "builds held back" in health(rig, proxy.endpoint),
            timeout=30,
            what="`collage health` to say builds are held back",
        )
        said = health(rig, proxy.endpoint)
        time.sleep(3)  # a few more rounds in which every request is refused
        spent = outcomes(fdb, ids)
        waiting = {s[0] for s in statuses(fdb, ids).values()}
        refusing.clear()
        answered = time.monotonic()
        wait_settled(fdb, ids, timeout=60, what="every SKU once S3 answers")
        took = time.monotonic() - answered
    finally:
        proxy.close()
    assert "RequestTimeTooSkewed" in said, said
    assert 1 <= len(spent) <= 2 and {o[:2] for o in spent} == {("retry", "S3Refused")}, spent
    assert waiting == {"uploaded"}
    assert {s[:2] for s in statuses(fdb, ids).values()} == {("collage_ready", None)}
    assert took < 20, took
    print(
        f"S3 refusing all: {len(spent)} attempts spent, 0 failed; all 8 built {took:.1f}s"
        f" after S3 answered; health said: {said.strip().splitlines()[-1]}"
    )


@pytest.mark.slow
def test_one_refused_object_holds_nothing_else_back(rig: Rig, fdb: Db) -> None:
    locked = rig.upload({"locked/x.jpg": jpeg(64, 48, seed=9)})
    others = [rig.upload({f"open/{n}.jpg": jpeg(64, 48, seed=n)}) for n in range(4)]

    def rule(method: str, path: str) -> Fault | None:
        return Fault(status=403, code="AccessDenied") if "/locked/" in path else None

    proxy = FaultyProxy(rig.s3_endpoint, rule)
    try:
        worker = rig.spawn("-c", "2", s3_endpoint=proxy.endpoint)
        [refused] = add_products(fdb, [locked])
        sandbox.wait_until(lambda: outcomes(fdb, [refused]), timeout=30, what="the refusal")
        built = add_products(fdb, others)
        wait_settled(fdb, built, timeout=30, what="the other SKUs")
    finally:
        proxy.close()
    assert outcomes(fdb, [refused])[0][:2] == ("retry", "S3Refused")
    assert {s[:2] for s in statuses(fdb, built).values()} == {("collage_ready", None)}
    assert not worker.logged("S3 refuses every request; builds are held back until it answers")
