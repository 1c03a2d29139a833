"""`collage make`: a collage from local files, as the worker builds it, in one interpreter.

Imports nothing of the database or the queue: a cold run pays for the imaging alone.
"""

from __future__ import annotations

from pathlib import Path

import click

from collage.cli.common import Fail
from collage.errors import CollageError
from collage.settings import DEFAULT_MIN_QUALITY, DEFAULT_QUALITY


@click.command("make")
@click.argument(
    "photos", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-q", "--quality", type=click.IntRange(1, 100), default=DEFAULT_QUALITY, show_default=True
)
@click.option(
    "--max-bytes", type=click.IntRange(1024), help="Encode again at a lower quality to fit this."
)
@click.option(
    "--min-quality",
    type=click.IntRange(1, 100),
    default=DEFAULT_MIN_QUALITY,
    show_default=True,
    help="The lowest quality --max-bytes may go to.",
)
def make_command(
    photos: tuple[Path, ...], output: Path, quality: int, max_bytes: int | None, min_quality: int
) -> None:
    """Build a collage from local files exactly as the worker would, within the same bounds."""
    from collage.imaging import JpegTarget
    from collage.isolation.pool import BuildPool
    from collage.isolation.process import Budget

    try:
        data = [path.read_bytes() for path in photos]
    except OSError as exc:
        raise Fail(f"cannot read {exc.filename}: {exc.strerror}") from None
    target = JpegTarget(
        quality=quality,
        max_bytes=max_bytes,
        min_quality=min(min_quality, quality) if max_bytes else None,
    )
    try:
        # One interpreter: the build child is forked from this one, with its imports.
        with BuildPool(budget=Budget.of(), processes=1, forked=True) as pool:
            built = pool.build(data, target=target, names=[str(p) for p in photos])
    except CollageError as exc:
        raise Fail(exc.message) from None
    try:
        output.write_bytes(built.jpeg)
    except OSError as exc:
        raise Fail(f"cannot write {output}: {exc.strerror}") from None
    lowered = f" at quality {built.quality} to fit" if built.quality != quality else ""
    click.echo(f"wrote {output} ({len(built.jpeg):,} bytes from {len(photos)} photo(s){lowered})")
