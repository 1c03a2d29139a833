"""Operators' controls against the real database and worker: pause, resume, cancel, fair shares."""

from __future__ import annotations

import json

import psycopg

from collage.settings import Settings
from dev import sandbox
from dev.photos import jpeg
from tests.integration.cli.test_cli import run
from tests.support.queue import job_states, witness_pass
from tests.support.skus import StartWorker, add_product, final_state, status_of, upload


def built_count(db: psycopg.Connection) -> int:
    row = db.execute("SELECT count(*) FROM collage_outcomes WHERE outcome = 'built'").fetchone()
    return int(row[0]) if row else 0


def test_a_pause_holds_new_uploads_across_a_worker_restart_and_resume_builds_them(
    db: psycopg.Connection, settings: Settings, s3, start_worker: StartWorker
) -> None:
    urls = upload(s3, settings, {"p.jpg": jpeg(40, 50)})
    paused = run(settings, "pause", "--all", "--reason", "S3 maintenance")
    assert paused.exit_code == 0 and "paused every brand: 0 waiting build(s)" in paused.output
    worker = start_worker(settings)
    ids = [add_product(db, urls, brand=b, external_id=f"P-{b}") for b in ("zara", "hm")]
    witness_pass(db)  # the worker went past both: not due while paused
    assert job_states(db, ids) == {"todo"}
    assert built_count(db) == 0
    jobs = run(settings, "jobs")
    assert "paused 2" in jobs.output and "PAUSED every brand" in jobs.output, jobs.output
    assert "S3 maintenance" in jobs.output
    summary = json.loads(run(settings, "jobs", "--json").stdout)["summary"]
    assert (summary["paused"], summary["waiting"], summary["paused_scopes"]) == (2, 0, ["*"])
    worker.stop()
    start_worker(settings)  # the pause lives in the database, not in a worker
    witness_pass(db)
    assert job_states(db, ids) == {"todo"} and built_count(db) == 0
    resumed = run(settings, "resume", "--all")
    assert "resumed every brand: 2 build(s) due again" in resumed.output
    for pid in ids:
        assert final_state(db, pid)[0] == "collage_ready"


def test_pausing_one_brand_lets_the_others_through(
    db: psycopg.Connection, settings: Settings, s3, start_worker: StartWorker
) -> None:
    urls = upload(s3, settings, {"b.jpg": jpeg(40, 50)})
    run(settings, "pause", "--brand", "zara")
    start_worker(settings)
    held = add_product(db, urls, brand="zara", external_id="Z-1")
    passes = add_product(db, urls, brand="hm", external_id="H-1")
    assert final_state(db, passes)[0] == "collage_ready"
    assert status_of(db, held) == "uploaded"
    # Resuming every brand does not end a brand's own pause, and says there was none.
    resumed = run(settings, "resume", "--all")
    assert resumed.exit_code == 1
    assert "no pause of every brand (paused now: brand 'zara')" in resumed.output
    witness_pass(db)
    assert job_states(db, [held]) == {"todo"}
    assert "resumed brand 'zara': 1 build(s)" in run(settings, "resume", "--brand", "zara").output
    assert final_state(db, held)[0] == "collage_ready"


def test_pause_and_resume_name_a_brand_exactly_or_every_brand_only_when_asked(
    db: psycopg.Connection, settings: Settings
) -> None:
    for args, why in [
        ((), "name a brand, or say every brand"),
        (("--brand", ""), "a brand cannot be empty"),
        (("--brand", "  "), "a brand cannot be empty"),
        (("--brand", "*"), "'*' is not a brand"),
        (("--brand", "zara", "--all"), "not both"),
        (("--brand", "za\x1b]2;owned\x07ra"), "control characters"),
    ]:
        refused = run(settings, "pause", *args)
        assert refused.exit_code == 2 and why in refused.output, (args, refused.output)
    assert db.execute("SELECT count(*) FROM collage_pauses").fetchone() == (0,)
    # A brand with a trailing space is its own brand, paused and resumed as spelled.
    assert "paused brand 'zara '" in run(settings, "pause", "--brand", "zara ").output
    missed = run(settings, "resume", "--brand", "zara")
    assert missed.exit_code == 1 and "no pause of brand 'zara'" in missed.output
    assert "resumed brand 'zara '" in run(settings, "resume", "--brand", "zara ").output
    assert db.execute("SELECT count(*) FROM collage_pauses").fetchone() == (0,)


def test_cancel_takes_waiting_builds_out_and_requeue_brings_them_back(
    db: psycopg.Connection, settings: Settings, s3, start_worker: StartWorker
) -> None:
    urls = upload(s3, settings, {"c.jpg": jpeg(40, 50)})
    ids = [add_product(db, urls, brand="zara", external_id=f"C-{n}") for n in range(3)]
    other = add_product(db, urls, brand="hm", external_id="C-hm")
    dry = run(settings, "cancel", "--brand", "zara", "--dry-run")
    assert "3 build(s) would be cancelled" in dry.output
    assert {status_of(db, p) for p in ids} == {"uploaded"}
    declined = run(settings, "cancel", "--brand", "zara", input="n\n")
    assert declined.exit_code == 1 and {status_of(db, p) for p in ids} == {"uploaded"}
    done = run(settings, "cancel", "--brand", "zara", "--yes")
    assert "cancelled 3 build(s)" in done.output, done.output
    # The rows keep the downloader's status; the cancellation is the project's own record.
    assert {status_of(db, p) for p in ids} == {"uploaded"}
    who = db.execute(
        "SELECT cancelled_by FROM collage_cancellations WHERE product_id = %s", [ids[0]]
    ).fetchone()
    assert who and who[0]
    assert job_states(db, ids) == {"cancelled"}
    start_worker(settings)  # its first sweep leaves cancelled SKUs alone
    assert final_state(db, other)[0] == "collage_ready"
    witness_pass(db)
    assert job_states(db, ids) == {"cancelled"}
    back = run(settings, "requeue", "--cancelled", "--brand", "zara")
    assert "requeued 3 SKU(s)" in back.output
    for pid in ids:
        assert final_state(db, pid)[0] == "collage_ready"


def test_a_new_brand_is_served_next_to_the_head_of_a_bulk_backlog(
    db: psycopg.Connection, settings: Settings, s3, start_worker: StartWorker
) -> None:
    urls = upload(s3, settings, {"f.jpg": jpeg(20, 20)})
    db.execute(
        "INSERT INTO raw_products (external_id, brand, image_urls, image_status)"
        " SELECT 'bulk-' || n, 'bulk', %s, 'pending' FROM generate_series(1, 300) n",
        [json.dumps(urls)],
    )
    db.execute("UPDATE raw_products SET image_status = 'uploaded' WHERE brand = 'bulk'")
    start_worker(settings.replace(worker_concurrency=1))
    sandbox.wait_until(lambda: built_count(db) >= 20, timeout=60, what="the bulk brand to start")
    newcomer = add_product(db, urls, brand="small", external_id="NEW-1")
    before = built_count(db)
    final_state(db, newcomer, timeout=60)
    # How many bulk builds finished between the newcomer's upload and its own build.
    row = db.execute(
        "SELECT count(*) FROM collage_outcomes o"
        " WHERE o.outcome = 'built' AND o.product_id <> %(new)s AND o.id < ("
        "   SELECT min(id) FROM collage_outcomes WHERE product_id = %(new)s)",
        {"new": newcomer},
    ).fetchone()
    assert row
    overtaken_by = int(row[0]) - before
    print(f"\nnew brand behind a 300-SKU backlog: started after {overtaken_by} more bulk builds")
    assert overtaken_by <= 10
    waiting = db.execute(
        "SELECT count(*) FROM procrastinate_jobs"
        " WHERE status = 'todo' AND args ->> 'brand' = 'bulk'"
    ).fetchone()
    assert waiting and waiting[0] > 100  # the bulk backlog was still there
