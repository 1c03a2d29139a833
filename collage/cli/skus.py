"""Commands that read the queue: what it holds, and one SKU's story."""

from __future__ import annotations

import json
from typing import Any

import click

from collage import db
from collage.cli.common import (
    Fail,
    age,
    cell,
    database_errors,
    json_value,
    load_database,
    table,
)
from collage.db import controls, failures, jobs, skus


@click.command("jobs")
@click.option("--json", "as_json", is_flag=True, help="One JSON document, for scripts.")
@click.option("--failures", "failure_count", type=click.IntRange(0), default=10, show_default=True)
@database_errors
def jobs_command(as_json: bool, failure_count: int) -> None:
    """Show the queue at a glance: counts, oldest waiting, running, failures, stalled."""
    database = load_database()
    with db.connect_dicts(database.url) as conn:
        report: dict[str, Any] = {
            "summary": jobs.summary(conn),
            "running": jobs.running(conn),
            "recent_failures": failures.recent_failures(conn, limit=failure_count),
            "stalled": jobs.stalled(conn),
            "pauses": controls.pauses(conn),
        }
    if as_json:
        click.echo(json.dumps(report, default=json_value, indent=2))
        return
    s = report["summary"]
    click.echo(
        f"waiting {s['waiting']}  retry later {s['retry_later']}  paused {s['paused']}"
        f"  running {s['running']}  stalled {s['stalled']}  workers alive {s['workers_alive']}"
    )
    for pause in report["pauses"]:
        click.echo(
            f"PAUSED {controls.scope_name(pause['scope'])} since {cell(pause['paused_at'])}"
            f" by {cell(pause['paused_by'])}"
            f" ({pause['held']} held back)"
            + (f": {cell(pause['reason'])}" if pause["reason"] else "")
        )
    click.echo(f"oldest waiting: {age(s['oldest_waiting_for'])}")
    if s["skus_unqueued"]:
        click.echo(
            f"NOT QUEUED {s['skus_unqueued']} SKU(s) 'uploaded' with no job: a worker's start"
            " or `collage sweep` queues them"
        )
    click.echo(
        f"SKUs uploaded {s['skus_uploaded']}  error {s['skus_error']}"
        f"  cancelled {s['skus_cancelled']}  last hour: built"
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
    database = load_database()
    with db.connect_dicts(database.url) as conn:
        try:
            row = skus.find_product(conn, ref)
        except ValueError as exc:
            raise Fail(str(exc)) from None
        if row is None:
            raise Fail(f"no SKU {cell(ref)}")
        history = jobs.history(conn, row["product_id"])
    for key, value in row.items():
        click.echo(f"{key:>14}: {cell(value)}")
    table(
        "jobs",
        history,
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
