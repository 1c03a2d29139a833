"""The `collage` command: thin click commands over the library modules."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import psycopg

from collage import imaging, logs, migrate
from collage.errors import CollageError, ConfigError
from collage.settings import Settings, redact

F = TypeVar("F", bound=Callable[..., Any])
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
    """Turn a database that cannot be reached into one line instead of a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except psycopg.OperationalError as exc:
            first_line = (str(exc).strip().splitlines() or ["unknown error"])[0]
            raise Fail(f"database unavailable: {first_line}") from None

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
    type=click.FloatRange(0),
    default=60.0,
    show_default=True,
    help="Seconds SIGTERM waits for running jobs before they are queued again.",
)
def worker_command(concurrency: int | None, graceful_timeout: float) -> None:
    """Run the worker: build collages as SKUs are uploaded, and the periodic tasks."""
    from collage import metrics, worker  # the worker's imports are heavier than the CLI's

    settings = load_settings()
    middleware = (
        metrics.start(settings.metrics_port, dsn=settings.db_url) if settings.metrics_port else ()
    )
    code = asyncio.run(
        worker.supervise(
            settings,
            concurrency=concurrency,
            graceful_timeout_s=graceful_timeout,
            middleware=middleware,
        )
    )
    sys.exit(code)


@main.command("make")
@click.argument("photos", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("-q", "--quality", type=click.IntRange(1, 100), default=95, show_default=True)
def make_command(photos: tuple[Path, ...], output: Path, quality: int) -> None:
    """Build a collage from local files, exactly as the worker would."""
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
    from collage.tasks import run_sweep

    settings = load_settings()

    async def run() -> list[int]:
        conn = await psycopg.AsyncConnection.connect(
            settings.db_url, autocommit=True, prepare_threshold=None
        )
        async with conn:
            return await run_sweep(conn, limit=limit or settings.batch_size)

    queued = asyncio.run(run())
    click.echo(f"queued {len(queued)} SKU(s)")
