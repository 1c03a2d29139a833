"""Commands that change what gets built: requeue, cancel, pause and resume."""

from __future__ import annotations

import functools
import getpass
import os
import socket
import sys
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any, TypeVar

import click

from collage import db
from collage.cli.common import Duration, Fail, cell, database_errors, load_database
from collage.db import controls

F = TypeVar("F", bound=Callable[..., Any])


def sku_filters(*, errors: bool) -> Callable[[F], F]:
    """The options that pick SKUs, the same for every command that changes them."""

    def decorate(func: F) -> F:
        options = [
            click.option("--brand", help="Only this brand."),
            click.option(
                "--id",
                "ids",
                type=click.IntRange(1, 2**63 - 1),
                multiple=True,
                help="Only this product id (repeatable).",
            ),
            click.option(
                "--older-than",
                type=Duration(),
                help="Only SKUs that failed (requeue) or were uploaded (cancel) longer ago.",
            ),
            click.option("--limit", type=click.IntRange(1), help="At most this many SKUs."),
            click.option("--dry-run", is_flag=True, help="List what would change; change nothing."),
            click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation."),
        ]
        if errors:
            options += [
                click.option(
                    "--error-like", help="Only errors containing this text, literally (any case)."
                ),
                click.option(
                    "--error-pattern",
                    help="Only errors matching this SQL LIKE pattern (% and _), any case.",
                ),
            ]

        @functools.wraps(func)
        def with_filter(
            brand: str | None,
            ids: tuple[int, ...],
            older_than: timedelta | None,
            limit: int | None,
            error_like: str | None = None,
            error_pattern: str | None = None,
            **rest: Any,
        ) -> Any:
            where = controls.SkuFilter(
                brand=brand,
                ids=ids,
                error_like=error_like,
                error_pattern=error_pattern,
                older_than=older_than,
                limit=limit,
            )
            return func(where=where, **rest)

        wrapped: Any = with_filter
        for option in reversed(options):
            wrapped = option(wrapped)
        return wrapped  # type: ignore[no-any-return]

    return decorate


def operator() -> str:
    """Who is acting, for the record: COLLAGE_OPERATOR, else user@host."""
    return os.environ.get("COLLAGE_OPERATOR") or f"{getpass.getuser()}@{socket.gethostname()}"


@click.command("requeue")
@sku_filters(errors=True)
@click.option("--cancelled", is_flag=True, help="Requeue cancelled SKUs instead of errored ones.")
@database_errors
def requeue_command(where: controls.SkuFilter, dry_run: bool, yes: bool, cancelled: bool) -> None:
    """Put errored (or cancelled) SKUs back in the queue: 'uploaded' again, and queued."""
    status = controls.CANCELLED if cancelled else "error"
    database = load_database()
    with db.connect_dicts(database.url) as conn:
        rows = controls.errored(conn, where, status=status)
        if not rows:
            click.echo(f"no {'cancelled' if cancelled else 'errored'} SKU matches")
            return
        if dry_run:
            for row in rows:
                why = f"cancelled by {row['cancelled_by']}" if cancelled else row["error_message"]
                click.echo(
                    f"{row['product_id']}\t{cell(row['brand'])}/{cell(row['external_id'])}"
                    f"\t{cell(why)}"
                )
            click.echo(f"{len(rows)} SKU(s) would be requeued")
            return
        if where.is_empty and not yes:
            click.confirm(f"No filter given: requeue all {len(rows)} {status} SKU(s)?", abort=True)
        ids_chosen = [row["product_id"] for row in rows]
        done = _in_batches(controls.requeue(conn, ids_chosen, status=status), len(ids_chosen))
    click.echo(f"requeued {done} SKU(s)")


@click.command("cancel")
@sku_filters(errors=False)
@database_errors
def cancel_command(where: controls.SkuFilter, dry_run: bool, yes: bool) -> None:
    """Cancel waiting builds (running builds finish); a new upload queues the SKU again.

    The rows keep their image_status ('uploaded'): `collage requeue --cancelled` queues them.
    """
    database = load_database()
    with db.connect_dicts(database.url) as conn:
        rows = controls.waiting(conn, where)
        if not rows:
            click.echo("no waiting build matches")
            return
        if dry_run:
            for row in rows:
                paused = " (paused)" if row["paused"] else ""
                click.echo(f"{row['product_id']}\t{row['brand']}/{row['external_id']}{paused}")
            click.echo(f"{len(rows)} build(s) would be cancelled")
            return
        if not yes:
            click.confirm(f"Cancel {len(rows)} waiting build(s)?", abort=True)
        ids_chosen = [row["product_id"] for row in rows]
        done = _in_batches(controls.cancel(conn, ids_chosen, by=operator()), len(ids_chosen))
    click.echo(f"cancelled {done} build(s)")


@click.command("pause")
@click.option("--brand", help="Pause this brand, exactly as raw_products spells it.")
@click.option("--all", "every", is_flag=True, help="Pause every brand.")
@click.option("--reason", help="Why, for whoever looks next (shown by `collage jobs`).")
@database_errors
def pause_command(brand: str | None, every: bool, reason: str | None) -> None:
    """Stop building (new uploads keep being queued; running builds finish; nothing is lost)."""
    scope = _scope(brand, every)
    database = load_database()
    with db.connect_dicts(database.url) as conn:
        held = controls.pause(conn, scope, by=operator(), reason=reason)
    click.echo(f"paused {controls.scope_name(scope)}: {held} waiting build(s) held back")


@click.command("resume")
@click.option("--brand", help="End this brand's pause, exactly as it was paused.")
@click.option("--all", "every", is_flag=True, help="End the pause of every brand.")
@database_errors
def resume_command(brand: str | None, every: bool) -> None:
    """End a pause: the builds it held back are due again."""
    scope = _scope(brand, every)
    database = load_database()
    with db.connect_dicts(database.url) as conn:
        due = controls.resume(conn, scope)
        still = [row["scope"] for row in controls.pauses(conn)]
    if due is None:
        known = ", ".join(controls.scope_name(s) for s in still) or "none"
        raise Fail(f"no pause of {controls.scope_name(scope)} (paused now: {known})")
    click.echo(f"resumed {controls.scope_name(scope)}: {due} build(s) due again")
    if still:
        click.echo(f"still paused: {', '.join(controls.scope_name(s) for s in still)}")


def _scope(brand: str | None, every: bool) -> str:
    """The exact scope asked for, or a one-line refusal (exit 2, as for a bad option)."""
    try:
        return controls.pause_scope(brand, every=every)
    except controls.BadScope as exc:
        raise click.UsageError(f"{exc} (--brand NAME or --all)") from None


def _in_batches(batches: Iterator[int], total: int) -> int:
    done = 0
    with click.progressbar(length=total, label="working", file=sys.stderr) as bar:
        for count in batches:
            done += count
            bar.update(count)
    return done
