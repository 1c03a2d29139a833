"""Every `collage` command through click's runner, against the real database and S3."""

from __future__ import annotations

import json
import os
from pathlib import Path

import psycopg
import psycopg.sql
import pytest
from click.testing import CliRunner, Result

from collage.cli import main
from collage.settings import Settings
from dev import sandbox
from dev.photos import jpeg
from tests.support.skus import StartWorker, add_product, final_state, status_of, upload
from tests.support.workers import env_of


def run(settings: Settings | None, *args: str, input: str | None = None) -> Result:
    env = env_of(settings) if settings else {}
    return CliRunner().invoke(main, list(args), env=env, input=input, catch_exceptions=False)


def errored(db: psycopg.Connection, brand: str, message: str, *, hours_ago: int = 2) -> int:
    pid = add_product(db, ["s3://x/a.jpg"], brand=brand, status="error")
    db.execute(
        "UPDATE raw_products SET error_message = %s,"
        " updated_at = now() - %s * interval '1 hour' WHERE id = %s",
        [message, hours_ago, pid],
    )
    return pid


def test_every_command_has_help() -> None:
    for command in ["migrate", "worker", "make", "sweep", "requeue", "jobs", "show", "health"]:
        result = run(None, command, "--help")
        assert result.exit_code == 0, command
        assert "Usage: main " + command in result.output or "Usage:" in result.output


def test_a_missing_setting_is_one_line_and_exit_1(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STAGING_DB_URL", raising=False)
    result = run(None, "jobs")
    assert result.exit_code == 1
    assert result.output.strip() == "collage: STAGING_DB_URL is not set"


def test_commands_on_rows_need_only_the_database(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("S3_ENDPOINT", "S3_ACCESS_KEY", "S3_SECRET_KEY", "STAGING_DB_SESSION_URL"):
        monkeypatch.delenv(name, raising=False)
    env = {"STAGING_DB_URL": settings.db_url}
    for command in (["jobs"], ["migrate", "--status"], ["requeue", "--dry-run"]):
        result = CliRunner().invoke(main, command, env=env, catch_exceptions=False)
        assert result.exit_code == 0, (command, result.output)


def test_an_unreachable_database_is_one_line_not_a_traceback(settings: Settings) -> None:
    down = settings.replace(db_url="postgresql://postgres@127.0.0.1:1/none")
    result = run(down, "jobs")
    assert result.exit_code == 1
    assert result.output.startswith("collage: database unavailable:")
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_an_unmigrated_database_says_what_to_do(settings: Settings, empty_db: str) -> None:
    bare = settings.replace(db_url=empty_db, db_session_url=empty_db)
    for command in (["jobs"], ["show", "1"], ["requeue", "--dry-run"]):
        result = run(bare, *command)
        assert result.exit_code == 1, command
        assert result.output.startswith("collage: database not migrated (")
        assert result.output.rstrip().endswith("run `collage migrate`")
        assert "Traceback" not in result.output


def test_absurd_filter_values_are_usage_errors(settings: Settings) -> None:
    too_big = run(settings, "requeue", "--id", "99999999999999999999")
    assert too_big.exit_code == 2 and "--id" in too_big.output
    too_long = run(settings, "requeue", "--older-than", "999999999999d")
    assert too_long.exit_code == 2 and "is more than 3650 days" in too_long.output
    odd_digits = run(settings, "requeue", "--older-than", "²d")
    assert odd_digits.exit_code == 2 and "is not a duration" in odd_digits.output
    long_drain = run(settings, "worker", "--graceful-timeout", "600")
    assert long_drain.exit_code == 2 and "--graceful-timeout" in long_drain.output


def test_migrate_status_then_migrate(settings: Settings, empty_db: str) -> None:
    fresh = settings.replace(db_url=empty_db, db_session_url=empty_db)
    status = run(fresh, "migrate", "--status")
    assert status.exit_code == 0
    assert "pending: 001_products.sql" in status.output
    first = run(fresh, "migrate")
    assert first.exit_code == 0 and "applied 003_inspection_views.sql" in first.output
    second = run(fresh, "migrate")
    assert second.output.strip() == "already up to date"
    assert "up to date" in run(fresh, "migrate", "--status").output


def test_migrate_on_a_database_that_is_not_utf8_says_so_in_one_line(
    settings: Settings, admin_dsn: str
) -> None:
    name = f"collage_ascii_{os.getpid()}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(
            psycopg.sql.SQL("CREATE DATABASE {} ENCODING 'SQL_ASCII' TEMPLATE template0").format(
                psycopg.sql.Identifier(name)
            )
        )
    ascii_dsn = sandbox.with_dbname(admin_dsn, name)
    try:
        result = run(settings.replace(db_url=ascii_dsn, db_session_url=ascii_dsn), "migrate")
    finally:
        sandbox.drop_database(admin_dsn, ascii_dsn)
    assert result.exit_code == 1
    assert f"database {name}: it is encoded SQL_ASCII; collage needs UTF8" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_requeue_dry_run_changes_nothing(db: psycopg.Connection, settings: Settings) -> None:
    pid = errored(db, "zara", "original not found in bucket: a.jpg")
    result = run(settings, "requeue", "--brand", "zara", "--dry-run")
    assert result.exit_code == 0
    assert f"{pid}\tzara/" in result.output and "1 SKU(s) would be requeued" in result.output
    assert status_of(db, pid) == "error"


def test_requeue_filters_combine(db: psycopg.Connection, settings: Settings) -> None:
    match = errored(db, "zara", "photo 2 cannot be read: truncated")
    other_brand = errored(db, "hm", "photo 2 cannot be read: truncated")
    other_error = errored(db, "zara", "original not found")
    too_recent = errored(db, "zara", "photo 1 cannot be read", hours_ago=0)
    result = run(
        settings,
        "requeue",
        "--brand",
        "zara",
        "--error-like",
        "cannot be read",
        "--older-than",
        "1h",
    )
    assert result.exit_code == 0, result.output
    assert "requeued 1 SKU(s)" in result.output
    assert status_of(db, match) == "uploaded"
    assert {status_of(db, p) for p in (other_brand, other_error, too_recent)} == {"error"}
    job = db.execute(
        "SELECT count(*) FROM procrastinate_jobs WHERE lock = %s", [f"product:{match}"]
    )
    assert job.fetchone() == (1,)  # the trigger queued it


def test_error_like_is_a_literal_piece_of_the_message(
    db: psycopg.Connection, settings: Settings
) -> None:
    pasted = errored(db, "zara", "photo 1 (originals/a_b/100%.jpg) cannot be read: C:\\x")
    lookalike = errored(db, "zara", "photo 1 (originals/aXb/1000.jpg) cannot be read: C:x")

    def listed(output: str) -> set[int]:
        return {int(line.split("\t")[0]) for line in output.splitlines() if "\t" in line}

    for text in ("a_b/100%.jpg", "C:\\x", "A_B"):
        result = run(settings, "requeue", "--error-like", text, "--dry-run")
        assert result.exit_code == 0, result.output
        assert listed(result.output) == {pasted}, text
    pattern = run(settings, "requeue", "--error-pattern", "%a_b/100%", "--dry-run")
    assert listed(pattern.output) == {pasted, lookalike}


def test_requeue_by_id_and_limit(db: psycopg.Connection, settings: Settings) -> None:
    ids = [errored(db, "zara", "x") for _ in range(3)]
    assert "requeued 1 SKU(s)" in run(settings, "requeue", "--id", str(ids[2])).output
    assert status_of(db, ids[2]) == "uploaded"
    assert "requeued 1 SKU(s)" in run(settings, "requeue", "--limit", "1", "--brand", "zara").output
    assert [status_of(db, p) for p in ids] == ["uploaded", "error", "uploaded"]


def test_requeue_without_filters_asks_first(db: psycopg.Connection, settings: Settings) -> None:
    pid = errored(db, "zara", "x")
    declined = run(settings, "requeue", input="n\n")
    assert declined.exit_code == 1 and "Aborted" in declined.output
    assert status_of(db, pid) == "error"
    accepted = run(settings, "requeue", "--yes")
    assert "requeued 1 SKU(s)" in accepted.output
    assert status_of(db, pid) == "uploaded"


def test_requeue_bad_filter_and_nothing_to_do(db: psycopg.Connection, settings: Settings) -> None:
    bad = run(settings, "requeue", "--older-than", "yesterday")
    assert bad.exit_code == 2 and "not a duration like 45s" in bad.output
    assert run(settings, "requeue", "--brand", "nobody").output.strip() == "no errored SKU matches"


def test_jobs_and_show_after_real_jobs(
    db: psycopg.Connection, settings: Settings, s3, start_worker: StartWorker
) -> None:
    urls = upload(s3, settings, {"a.jpg": jpeg(40, 50)})
    start_worker(settings)
    good = add_product(db, urls, brand="zara", external_id="OK-1")
    bad = add_product(db, ["s3://elsewhere/a.jpg"], brand="zara", external_id="BAD-1")
    final_state(db, good)
    final_state(db, bad)

    report = json.loads(run(settings, "jobs", "--json").stdout)
    assert report["summary"]["waiting"] == 0
    assert report["summary"]["skus_error"] == 1
    assert report["summary"]["built_last_hour"] == 1
    # Each `collage worker` runs two Procrastinate workers: builds, and the periodic jobs.
    assert report["summary"]["workers_alive"] == 2
    assert [f["product_id"] for f in report["recent_failures"]] == [bad]
    text = run(settings, "jobs")
    assert text.exit_code == 0 and "recent failures: 1" in text.output

    shown = run(settings, "show", "zara/BAD-1")
    assert shown.exit_code == 0
    assert "image_status: error" in shown.output and "is in bucket 'elsewhere'" in shown.output
    assert "jobs: 1" in shown.output
    assert run(settings, "show", str(good)).output.count("collage_ready") == 1


def test_show_bad_references(settings: Settings, db: psycopg.Connection) -> None:
    missing = run(settings, "show", "999999")
    assert missing.exit_code == 1 and missing.output.strip() == "collage: no SKU 999999"
    nonsense = run(settings, "show", "nonsense")
    assert (
        nonsense.exit_code == 1 and "neither a product id nor BRAND/EXTERNAL_ID" in nonsense.output
    )


def test_health_needs_a_live_worker_here(
    settings: Settings, db: psycopg.Connection, start_worker: StartWorker
) -> None:
    without = run(settings, "health")
    assert without.exit_code == 1
    assert "FAIL worker here: no worker runs here" in without.output
    assert "ok   database:" in without.output and "ok   bucket:" in without.output
    fleet = run(settings, "health", "--fleet")
    assert "FAIL worker heartbeat (fleet): no worker has registered" in fleet.output
    worker = start_worker(settings)
    sandbox.wait_until(
        lambda: run(settings, "health").exit_code == 0, timeout=20, what="the worker's beat"
    )
    with_worker = run(settings, "health")
    assert with_worker.output.count("ok  ") == 4, with_worker.output
    assert f"ok   worker here: pid {os.getpid()}" in with_worker.output
    assert run(settings, "health", "--fleet").exit_code == 0
    worker.stop()
    assert "no worker runs here" in run(settings, "health").output  # its beat is gone


def test_health_reports_a_missing_bucket(settings: Settings, db: psycopg.Connection) -> None:
    result = run(settings.replace(s3_bucket="no-such-bucket"), "health")
    assert result.exit_code == 1 and "FAIL bucket:" in result.output


def test_sweep_command(db: psycopg.Connection, settings: Settings) -> None:
    db.execute("ALTER TABLE raw_products DISABLE TRIGGER USER")
    add_product(db, ["s3://b/a.jpg"])
    db.execute("ALTER TABLE raw_products ENABLE TRIGGER USER")
    result = run(settings, "sweep")
    assert result.exit_code == 0 and result.stdout.strip() == "queued 1 SKU(s)"
    assert db.execute("SELECT count(*) FROM scraper_logs").fetchone() == (0,)  # none finished
    db.execute("INSERT INTO collage_outcomes (product_id, outcome) VALUES (1, 'built')")
    logged = run(settings, "sweep")
    assert logged.stdout.splitlines() == [
        "queued 0 SKU(s)",
        "logged to scraper_logs: 1 SKU(s) taken, 1 built, 0 failed",
    ]
    assert db.execute("SELECT count(*) FROM scraper_logs").fetchone() == (1,)


def test_make_writes_a_collage_and_refuses_bad_files(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jpg", tmp_path / "b.png"
    a.write_bytes(jpeg(40, 60))
    b.write_bytes(b"not a png")
    out = tmp_path / "out.jpg"
    good = run(None, "make", str(a), str(a), "-o", str(out))
    assert good.exit_code == 0 and out.exists() and "from 2 photo(s)" in good.output
    bad = run(None, "make", str(a), str(b), "-o", str(tmp_path / "bad.jpg"))
    assert bad.exit_code == 1 and "b.png" in bad.output and "Traceback" not in bad.output
    assert not (tmp_path / "bad.jpg").exists()
    missing = run(None, "make", str(tmp_path / "none.jpg"), "-o", str(out))
    assert missing.exit_code == 2  # a usage error, from click
    assert "none.jpg" in missing.output
