"""What every command shares: one-line failures, settings, durations, tables."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, TypeVar

import click

from collage.errors import ConfigError, one_line
from collage.settings import Database, Settings
from collage.text import shown

F = TypeVar("F", bound=Callable[..., Any])
R = TypeVar("R")
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_DURATION_S = 10 * 365 * 86400


class Fail(click.ClickException):
    """One line on stderr and exit code 1: what went wrong, never a traceback."""

    def show(self, file: Any = None) -> None:
        click.secho(f"collage: {shown(self.format_message())}", err=True, fg="red")


def load_settings() -> Settings:
    """Read the environment once per command, turning a bad value into one clear line."""
    return _from_environment(Settings.from_env)


def load_database() -> Database:
    """Read only the database URLs: commands on rows run where no S3 keys are set."""
    return _from_environment(Database.from_env)


def _from_environment(read: Callable[[Mapping[str, str]], R]) -> R:
    try:
        return read(os.environ)
    except ConfigError as exc:
        raise Fail(str(exc)) from None


def database_errors(func: F) -> F:
    """Turn a database that cannot be reached, or is not migrated, into one line."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import psycopg  # imported as a database command runs: `collage make` has no need of it

        try:
            return func(*args, **kwargs)
        except psycopg.OperationalError as exc:
            raise Fail(f"database unavailable: {one_line(exc)}") from None
        except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedFunction) as exc:
            raise Fail(f"database not migrated ({one_line(exc)}): run `collage migrate`") from None
        except psycopg.Error as exc:
            raise Fail(f"database error: {one_line(exc)}") from None

    return wrapper  # type: ignore[return-value]


class Duration(click.ParamType[timedelta]):
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


def json_value(value: Any) -> Any:
    if isinstance(value, timedelta):
        return round(value.total_seconds(), 3)
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    return str(value)


def age(value: timedelta | None) -> str:
    return "-" if value is None else f"{value.total_seconds():.1f}s"


def cell(value: Any) -> str:
    """A value as the terminal shows it: one line, control characters escaped, long ones cut.

    A row's brand or external_id may hold ESC sequences that would retitle or rewrite the
    operator's terminal.
    """
    if value is None:
        return "-"
    if isinstance(value, timedelta):
        return age(value)
    return shown(str(json_value(value)) if isinstance(value, datetime) else str(value))


def table(title: str, rows: list[dict[str, Any]], columns: list[str]) -> None:
    click.echo(f"\n{title}: {len(rows)}")
    for row in rows:
        click.echo("  " + "  ".join(cell(row.get(column)) for column in columns))
