"""The `collage` command: thin click commands over the library modules."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import sys
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import click
import psycopg

from collage import health, inspection, logs, migrate
from collage.app import STALLED_WORKER_S
from collage.errors import CollageError, ConfigError, one_line
from collage.settings import Settings, redact

F = TypeVar("F", bound=Callable[..., Any])
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_DURATION_S = 10 * 365 * 86400
# Heartbeats stop while a worker drains: past STALLED_WORKER_S the rescue would take its jobs.
MAX_GRACEFUL_S = STALLED_WORKER_S - 30
logger = logging.getLogger(__name__)


class Fail(click.ClickException):
    """One line on stderr and exit code 1: what went wrong, never a traceback."""

    def show(self, file: Any = None) -> None:
        click.secho(f"collage: {self.format_message()}", err=True, fg="red")


def load_settings() -> Settings:
    """Read the environment once per command, turning a bad value into one clear line."""
    try:
        return Settings.from_env(os.environ)
    except ConfigError as exc:
        raise Fail(str(exc)) from None


def database_errors(func: F) -> F:
    """Turn a database that cannot be reached, or is not migrated, into one line."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except psycopg.OperationalError as exc:
            raise Fail(f"database unavailable: {one_line(exc)}") from None
        except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedFunction) as exc:
            raise Fail(f"database not migrated ({one_line(exc)}): run `collage migrate`") from None
        except psycopg.Error as exc:
            raise Fail(f"database error: {one_line(exc)}") from None

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--log-format",
    type=click.Choice(["auto", "json", "text"]),
    default="auto",
    envvar="LOG_FORMAT",
    show_default=True,
    help="auto: text in a terminal, JSON otherwise.",
)
@click.option("-v", "--verbose", is_flag=True, help="Log at DEBUG level.")
def main(log_format: str, verbose: bool) -> None:
    """Build one JPEG collage per product SKU from its photos, on a Postgres job queue."""
    logs.configure(log_format, level=logging.DEBUG if verbose else logging.INFO)


@main.command("migrate")
@click.option(
    "--status", "show_status", is_flag=True, help="Show applied and pending; change nothing."
)
@database_errors
def migrate_command(show_status: bool) -> None:
    """Bring the database to the current schema (Procrastinate's, then migrations/)."""
    settings = load_settings()
    dsn = settings.db_session_url  # an advisory lock needs a session, not a transaction pool
    if show_status:
        state = migrate.status(dsn)
        click.echo(f"database: {redact(dsn)}")
        click.echo(f"applied: {len(state.applied)}")
        for name in state.pending:
            click.echo(f"pending: {name}")
        if not state.pending:
            click.echo("up to date")
        return
    applied = migrate.apply(dsn)
    for name in applied:
        click.echo(f"applied {name}")
    click.echo(f"{len(applied)} migration(s) applied" if applied else "already up to date")


@main.command("worker")
@click.option(
    "-c", "--concurrency", type=click.IntRange(1, 64), help="Jobs at once [WORKER_CONCURRENCY]."
)
@click.option(
    "--graceful-timeout",
    type=click.FloatRange(0, MAX_GRACEFUL_S),
    default=60.0,
    show_default=True,
    help="Seconds SIGTERM waits for running jobs before they are queued again.",
)
def worker_command(concurrency: int | None, graceful_timeout: float) -> None:
    """Run the worker: build collages as SKUs are uploaded, and the periodic tasks."""
    # Let Pillow keep freed canvas memory between jobs instead of faulting fresh pages in each
    # time: about 25 % less CPU per collage for at most 512 MB kept (docs in README, Performance).
    # It is read when Pillow is imported, which the next line does.
    os.environ.setdefault("PILLOW_BLOCKS_MAX", "32")
    from collage import metrics, worker

    settings = load_settings()
    exporter = None
    if settings.metrics_port:
        exporter = metrics.serve(settings.metrics_port, dsn=settings.db_url)
    code = asyncio.run(
        worker.supervise(
            settings,
            concurrency=concurrency,
            graceful_timeout_s=graceful_timeout,
            middleware=exporter.middleware if exporter else (),
        )
    )
    # Exit now rather than let the interpreter join threads still stuck in an abandoned S3 call
    # (bounded by its timeouts, but past a container's stop grace period): their jobs are queued
    # again and every database write has been awaited.
    logging.shutdown()
    os._exit(code)


@main.command("make")
@click.argument(
    "photos", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("-q", "--quality", type=click.IntRange(1, 100), default=95, show_default=True)
def make_command(photos: tuple[Path, ...], output: Path, quality: int) -> None:
    """Build a collage from local files, exactly as the worker would."""
    from collage import imaging

    try:
        data = [path.read_bytes() for path in photos]
    except OSError as exc:
        raise Fail(f"cannot read {exc.filename}: {exc.strerror}") from None
    try:
        jpeg = imaging.build_collage(data, quality=quality, names=[str(p) for p in photos])
    except CollageError as exc:
        raise Fail(exc.message) from None
    try:
        output.write_bytes(jpeg)
    except OSError as exc:
        raise Fail(f"cannot write {output}: {exc.strerror}") from None
    click.echo(f"wrote {output} ({len(jpeg):,} bytes from {len(photos)} photo(s))")


@main.command("sweep")
@click.option("--limit", type=click.IntRange(1), help="SKUs to queue at most [BATCH_SIZE].")
@database_errors
def sweep_command(limit: int | None) -> None:
    """Queue 'uploaded' SKUs that have no job now, and log the batch (the 15-minute sweep)."""
    from collage.maintenance import run_sweep

    settings = load_settings()

    async def run() -> list[int]:
        conn = await psycopg.AsyncConnection.connect(
            settings.db_url, autocommit=True, prepare_threshold=None
        )
        async with conn:
            return await run_sweep(conn, limit=limit or settings.batch_size)

    queued = asyncio.run(run())
    click.echo(f"queued {len(queued)} SKU(s)")


class Duration(click.ParamType):
    """A duration such as 45s, 30m, 2h or 7d."""

    name = "duration"

    def convert(self, value: Any, param: Any, ctx: Any) -> timedelta:
        if isinstance(value, timedelta):
            return value
        text = str(value).strip().lower()
        if (
            len(text) >= 2
            and text[-1] in DURATION_UNITS
            and text[:-1].isascii()
            and text[:-1].isdigit()
        ):
            seconds = int(text[:-1]) * DURATION_UNITS[text[-1]]
            if seconds <= MAX_DURATION_S:
                return timedelta(seconds=seconds)
            self.fail(f"{value!r} is more than {MAX_DURATION_S // 86400} days", param, ctx)
        self.fail(f"{value!r} is not a duration like 45s, 30m, 2h or 7d", param, ctx)


@main.command("requeue")
@click.option("--brand", help="Only this brand.")
@click.option(
    "--id",
    "ids",
    type=click.IntRange(1, 2**63 - 1),
    multiple=True,
    help="Only this product id (repeatable).",
)
@click.option("--error-like", help="Only errors containing this text (or a LIKE pattern with %).")
@click.option("--older-than", type=Duration(), help="Only SKUs that failed longer ago (2h, 7d).")
@click.option("--limit", type=click.IntRange(1), help="At most this many SKUs.")
@click.option("--dry-run", is_flag=True, help="List what would be requeued; change nothing.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@database_errors
def requeue_command(
    brand: str | None,
    ids: tuple[int, ...],
    error_like: str | None,
    older_than: timedelta | None,
    limit: int | None,
    dry_run: bool,
    yes: bool,
) -> None:
    """Put errored SKUs back in the queue (they become 'uploaded'; the trigger queues them)."""
    where = inspection.RequeueFilter(
        brand=brand, ids=ids, error_like=error_like, older_than=older_than, limit=limit
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


@main.command("jobs")
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
        click.echo(json.dumps(report, default=_json_value, indent=2))
        return
    s = report["summary"]
    click.echo(
        f"waiting {s['waiting']}  retry later {s['retry_later']}  running {s['running']}"
        f"  stalled {s['stalled']}  workers alive {s['workers_alive']}"
    )
    click.echo(f"oldest waiting: {_age(s['oldest_waiting_for'])}")
    click.echo(
        f"SKUs uploaded {s['skus_uploaded']}  error {s['skus_error']}  last hour: built"
        f" {s['built_last_hour']}, errors {s['errors_last_hour']}"
    )
    _table("running", report["running"], ["product_id", "brand", "external_id", "running_for"])
    _table("stalled", report["stalled"], ["job_id", "product_id", "worker_id", "last_heartbeat"])
    _table(
        "recent failures",
        report["recent_failures"],
        ["finished_at", "product_id", "brand", "external_id", "outcome", "message"],
    )


@main.command("show")
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
        click.echo(f"{key:>14}: {_cell(value)}")
    _table(
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


@main.command("health")
@database_errors
def health_command() -> None:
    """Exit 0 only if both database URLs, the bucket and a fresh worker heartbeat answer."""
    settings = load_settings()
    checks = health.run_checks(settings)
    for check in checks:
        mark = click.style("ok  ", fg="green") if check.ok else click.style("FAIL", fg="red")
        click.echo(f"{mark} {check.name}: {check.detail}")
    if not all(check.ok for check in checks):
        sys.exit(1)


def _json_value(value: Any) -> Any:
    if isinstance(value, timedelta):
        return round(value.total_seconds(), 3)
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    return str(value)


def _age(value: timedelta | None) -> str:
    return "-" if value is None else f"{value.total_seconds():.1f}s"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, timedelta):
        return _age(value)
    return str(_json_value(value)) if isinstance(value, datetime) else str(value)


def _table(title: str, rows: list[dict[str, Any]], columns: list[str]) -> None:
    click.echo(f"\n{title}: {len(rows)}")
    for row in rows:
        click.echo("  " + "  ".join(_cell(row.get(column)) for column in columns))
