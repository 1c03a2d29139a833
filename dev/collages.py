"""Collages with the settings' defaults, so that tests and benchmarks name only what they vary."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from collage import imaging
from collage.imaging import AHEAD_PIXELS, Encoded, JpegTarget, Limits
from collage.isolation.pool import BuildPool
from collage.isolation.process import Budget
from collage.isolation.protocol import Built
from collage.settings import DEFAULT_MIN_QUALITY, DEFAULT_QUALITY


def target(
    *, quality: int = DEFAULT_QUALITY, max_bytes: int | None = None, min_quality: int | None = None
) -> JpegTarget:
    """The JpegTarget the worker would use for these settings."""
    if max_bytes is not None and min_quality is None:
        min_quality = min(DEFAULT_MIN_QUALITY, quality)
    return JpegTarget(quality=quality, max_bytes=max_bytes, min_quality=min_quality)


def build(
    photos: Sequence[bytes],
    *,
    quality: int = DEFAULT_QUALITY,
    max_bytes: int | None = None,
    min_quality: int | None = None,
    limits: Limits | None = None,
    names: Sequence[str] | None = None,
    on_photo: Callable[[int, str], object] | None = None,
    on_decode: Callable[[int, bool], object] | None = None,
    ahead_pixels: int = AHEAD_PIXELS,
) -> Encoded:
    """imaging.build in this process."""
    return imaging.build(
        photos,
        target=target(quality=quality, max_bytes=max_bytes, min_quality=min_quality),
        limits=limits or Limits(),
        names=names,
        on_photo=on_photo,
        on_decode=on_decode,
        ahead_pixels=ahead_pixels,
    )


def build_collage(photos: Sequence[bytes], **options: object) -> bytes:
    """The collage's JPEG, built in this process (build's options)."""
    return build(photos, **options).jpeg  # type: ignore[arg-type]


def build_in(
    pool: BuildPool,
    photos: Sequence[bytes],
    *,
    quality: int = DEFAULT_QUALITY,
    max_bytes: int | None = None,
    min_quality: int | None = None,
    names: Sequence[str] | None = None,
    on_photo: Callable[[int, str], object] | None = None,
) -> Built:
    """BuildPool.build, as the worker calls it for these settings."""
    wanted = target(quality=quality, max_bytes=max_bytes, min_quality=min_quality)
    return pool.build(photos, target=wanted, names=names, on_photo=on_photo)


def pool(*, processes: int = 1, **options: Any) -> BuildPool:
    """A BuildPool with the settings' budget unless given another."""
    budget = options.pop("budget", None) or Budget.of()
    return BuildPool(budget=budget, processes=processes, **options)
