"""Commands over SKUs and their jobs: what the queue holds, one SKU's story, requeueing."""

from __future__ import annotations

import json
import sys
from datetime import timedelta

import click

from collage import inspection
from collage.cli.common import (
    Duration,
    Fail,
    age,
    cell,
    database_errors,
    json_value,
    load_settings,
    table,
)


@click.command("requeue")
@click.option("--brand", help="Only this brand.")
@click.option(
    "--id",
    "ids",
    type=click.IntRange(1, 2**63 - 1),
    multiple=True,
    help="Only this product id (repeatable).",
)
@click.option("--error-like", help="Only errors containing this text, literally (any case).")
@click.option(
    "--error-pattern", help="Only errors matching this SQL LIKE pattern (% and _), any case."
)
@click.option("--older-than", type=Duration(), help="Only SKUs that failed longer ago (2h, 7d).")
@click.option("--limit", type=click.IntRange(1), help="At most this many SKUs.")
@click.option("--dry-run", is_flag=True, help="List what would be requeued; change nothing.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@database_errors
def requeue_command(
    brand: str | None,
    ids: tuple[int, ...],
    error_like: str | None,
    error_pattern: str | None,
    older_than: timedelta | None,
    limit: int | None,
    dry_run: bool,
    yes: bool,
) -> None:
    """Put errored SKUs back in the queue (they become 'uploaded'; the trigger queues them)."""
    where = inspection.RequeueFilter(
        brand=brand,
        ids=ids,
        error_like=error_like,
        error_pattern=error_pattern,
        older_than=older_than,
        limit=limit,
    )
    settings = load_settings()
    with inspection.connect(settings.db_url) as conn:
        rows = inspection.errored(conn, where)
        if not rows:
            click.echo("no errored SKU matches")
            return
        if dry_run:
            for row in rows:
                click.echo(
                    f"{row['product_id']}\t{row['brand']}/{row['external_id']}\t"
                    f"{row['error_message']}"
                )
            click.echo(f"{len(rows)} SKU(s) would be requeued")
            return
        if where.is_empty and not yes:
            click.confirm(f"No filter given: requeue all {len(rows)} errored SKU(s)?", abort=True)
        done = 0
        ids_to_requeue = [row["product_id"] for row in rows]
        with click.progressbar(
            length=len(ids_to_requeue), label="requeueing", file=sys.stderr
        ) as bar:
            for count in inspection.requeue(conn, ids_to_requeue):
                done += count
                bar.update(count)
    click.echo(f"requeued {done} SKU(s)")


@click.command("jobs")
@click.option("--json", "as_json", is_flag=True, help="One JSON document, for scripts.")
@click.option("--failures", type=click.IntRange(0), default=10, show_default=True)
@database_errors
def jobs_command(as_json: bool, failures: int) -> None:
    """Show the queue at a glance: counts, oldest waiting, running, failures, stalled."""
    settings = load_settings()
    with inspection.connect(settings.db_url) as conn:
        report = {
            "summary": inspection.summary(conn),
            "running": inspection.running(conn),
            "recent_failures": inspection.recent_failures(conn, limit=failures),
            "stalled": inspection.stalled(conn),
        }
    if as_json:
        click.echo(json.dumps(report, default=json_value, indent=2))
        return
    s = report["summary"]
    click.echo(
        f"waiting {s['waiting']}  retry later {s['retry_later']}  running {s['running']}"
        f"  stalled {s['stalled']}  workers alive {s['workers_alive']}"
    )
    click.echo(f"oldest waiting: {age(s['oldest_waiting_for'])}")
    click.echo(
        f"SKUs uploaded {s['skus_uploaded']}  error {s['skus_error']}  last hour: built"
        f" {s['built_last_hour']}, errors {s['errors_last_hour']}"
    )
    table("running", report["running"], ["product_id", "brand", "external_id", "running_for"])
    table("stalled", report["stalled"], ["job_id", "product_id", "worker_id", "last_heartbeat"])
    table(
        "recent failures",
        report["recent_failures"],
        ["finished_at", "product_id", "brand", "external_id", "outcome", "message"],
    )


@click.command("show")
@click.argument("ref", metavar="ID|BRAND/EXTERNAL_ID")
@database_errors
def show_command(ref: str) -> None:
    """Show one SKU: its row, its latest job and every job it had."""
    settings = load_settings()
    with inspection.connect(settings.db_url) as conn:
        try:
            row = inspection.find_product(conn, ref)
        except ValueError as exc:
            raise Fail(str(exc)) from None
        if row is None:
            raise Fail(f"no SKU {ref}")
        jobs = inspection.history(conn, row["product_id"])
    for key, value in row.items():
        click.echo(f"{key:>14}: {cell(value)}")
    table(
        "jobs",
        jobs,
        [
            "job_id",
            "status",
            "attempt",
            "queued_at",
            "started_at",
            "finished_at",
            "outcome",
            "message",
        ],
    )
