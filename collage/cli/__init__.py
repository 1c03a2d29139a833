"""The `collage` command: thin click commands over the library modules."""

from __future__ import annotations

import logging

import click

from collage.cli import controls, logs, service, skus, web


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


for command in (
    service.migrate_command,
    service.uninstall_command,
    service.worker_command,
    service.make_command,
    service.sweep_command,
    controls.requeue_command,
    controls.cancel_command,
    controls.pause_command,
    controls.resume_command,
    skus.jobs_command,
    skus.show_command,
    service.health_command,
    web.web_command,
):
    main.add_command(command)
