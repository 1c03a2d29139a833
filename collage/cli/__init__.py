"""The `collage` command: thin click commands over the library modules."""

from __future__ import annotations

import importlib
import logging
from typing import Any

import click

from collage.cli import logs

# Each command's module, imported only when the command runs (or --help lists them all):
# `collage make` then imports no database driver, queue or web framework.
COMMANDS = {
    "migrate": "collage.cli.service:migrate_command",
    "uninstall": "collage.cli.service:uninstall_command",
    "worker": "collage.cli.service:worker_command",
    "make": "collage.cli.make:make_command",
    "sweep": "collage.cli.service:sweep_command",
    "requeue": "collage.cli.controls:requeue_command",
    "cancel": "collage.cli.controls:cancel_command",
    "pause": "collage.cli.controls:pause_command",
    "resume": "collage.cli.controls:resume_command",
    "jobs": "collage.cli.skus:jobs_command",
    "show": "collage.cli.skus:show_command",
    "health": "collage.cli.service:health_command",
    "web": "collage.cli.web:web_command",
}


class LazyGroup(click.Group):
    """A group whose commands are imported when asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, name = COMMANDS[cmd_name].split(":")
        command: Any = getattr(importlib.import_module(module), name)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
