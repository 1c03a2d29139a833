"""Commands that run the service: the worker, migrations, the health check, the sweep, make."""

from __future__ import annotations

import asyncio
import logging
import os
import sys

import click

from collage.cli.common import Fail, database_errors, load_database, load_settings
from collage.constants import GRACEFUL_TIMEOUT_S, STALLED_WORKER_S, drain_s
from collage.db import connect, connect_async, migrate, uninstall
from collage.settings import redact

# Heartbeats stop while a worker drains: the whole drain (grace, hand-over of an upload in
# flight, clean-up) must end well before STALLED_WORKER_S, past which a silent worker's jobs
# are taken even while it holds their locks.
MAX_GRACEFUL_S = STALLED_WORKER_S - (drain_s(0) + 10)


@click.command("migrate")
@click.option(
    "--status", "show_status", is_flag=True, help="Show applied and pending; change nothing."
)
@database_errors
def migrate_command(show_status: bool) -> None:
    """Bring the database to the current schema (Procrastinate's, then migrations/)."""
    dsn = load_database().session_url  # an advisory lock needs a session, not a transaction pool
    if show_status:
        state = migrate.status(dsn)
        click.echo(f"database: {redact(dsn)}")
        click.echo(f"applied: {len(state.applied)}")
        for name in state.pending:
            click.echo(f"pending: {name}")
        if not state.pending:
            click.echo("up to date")
        return
    try:
        applied = migrate.apply(dsn)
    except migrate.MigrationError as exc:
        raise Fail(str(exc)) from None
    for name in applied:
        click.echo(f"applied {name}")
    click.echo(f"{len(applied)} migration(s) applied" if applied else "already up to date")


@click.command("uninstall")
@click.option("--yes", is_flag=True, help="Run the SQL (in one transaction); without it, print it.")
@click.option(
    "--drop-columns",
    is_flag=True,
    help="Also drop raw_products.upload_generation and uploaded_at, which the project added.",
)
@database_errors
def uninstall_command(yes: bool, drop_columns: bool) -> None:
    """Remove the project from the database (triggers first); print the SQL unless --yes.

    raw_products and scraper_logs keep their rows; the downloader's writes no longer queue jobs.
    """
    dsn = load_database().session_url
    with connect(dsn) as conn, migrate.migration_lock(conn):
        steps = uninstall.plan(conn, drop_columns=drop_columns)
        if not steps:
            click.echo("nothing of collage is in this database")
            return
        if not yes:
            click.echo(f"-- database: {redact(dsn)}; run again with --yes to apply")
            click.echo("BEGIN;")
            for step in steps:
                click.echo(f"{step.as_string(conn)};")
            click.echo("COMMIT;")
            return
        uninstall.run(conn, steps)
    click.echo(f"removed: {len(steps)} statement(s) in one transaction")


@click.command("worker")
@click.option(
    "-c", "--concurrency", type=click.IntRange(1, 64), help="Jobs at once [WORKER_CONCURRENCY]."
)
@click.option(
    "--graceful-timeout",
    type=click.FloatRange(0, MAX_GRACEFUL_S),
    default=float(GRACEFUL_TIMEOUT_S),
    show_default=True,
    help="Seconds SIGTERM waits for running jobs before they are queued again.",
)
def worker_command(concurrency: int | None, graceful_timeout: float) -> None:
    """Run the worker: build collages as SKUs are uploaded, and the periodic tasks."""
    # Let Pillow keep freed canvas memory between jobs instead of faulting fresh pages in each
    # time: about 25 % less CPU per collage for at most 512 MB kept (docs in README, Performance).
    # It is read when Pillow is imported, which the next line does.
    os.environ.setdefault("PILLOW_BLOCKS_MAX", "32")
    from collage import allocator
    from collage.queue import metrics, worker

    allocator.reuse_freed_memory()  # photos in, collages out: the same buffers, SKU after SKU

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


@click.command("sweep")
@click.option("--batch", type=click.IntRange(1), help="SKUs queued per transaction [BATCH_SIZE].")
@database_errors
def sweep_command(batch: int | None) -> None:
    """Queue every 'uploaded' SKU no job covers (the backlog at adoption), and log the batch."""
    from collage.queue.periodic import Swept, run_sweep

    settings = load_settings()

    async def run() -> Swept:
        async with await connect_async(settings.db_url) as conn:
            return await run_sweep(conn, batch=batch or settings.batch_size)

    swept = asyncio.run(run())
    click.echo(f"queued {len(swept.queued)} SKU(s)")
    if swept.logged:
        click.echo(
            f"logged to scraper_logs: {swept.logged['records_fetched']} SKU(s) taken,"
            f" {swept.logged['records_new']} built, {swept.logged['records_errors']} failed"
        )
    if swept.refused:
        click.secho(f"scraper_logs refused the batch row: {swept.refused}", err=True, fg="yellow")


@click.command("health")
@click.option(
    "--fleet", is_flag=True, help="Ask whether any worker anywhere is alive, not the one here."
)
def health_command(fleet: bool) -> None:
    """Exit 0 only if both database URLs, the bucket and the worker here answer, within 12 s."""
    from collage.queue import health

    settings = load_settings()
    checks = health.run_checks(settings, fleet=fleet)
    for check in checks:
        mark = click.style("ok  ", fg="green") if check.ok else click.style("FAIL", fg="red")
        click.echo(f"{mark} {check.name}: {check.detail}")
    # A check still stuck in a socket runs in a daemon thread: exiting does not wait for it.
    if not all(check.ok for check in checks):
        sys.exit(1)
