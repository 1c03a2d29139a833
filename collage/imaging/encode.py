"""Encode the finished collage as JPEG, at a lower quality if it must fit a size in bytes.

Never at a lower resolution: a try-on service that takes at most 10 MB gets every pixel, with
coarser quantization. Each full encode of a 60 MP collage costs about 0.25 s, so the search for
the highest quality that fits tries qualities on a sample of the collage's own blocks (an
eighth of its rows) and encodes the whole collage only to confirm (docs/imaging.md).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from collage.errors import TooLarge

# Rows sampled: bands of 16 rows (two rows of 8x8 blocks, so every sampled block is coded as
# in the whole image), one band in every 8.
_BAND, _EVERY = 16, 8
# How much smaller a file gets as libjpeg's quantization scale grows: size ~ scale^-0.6 on
# product photos and the benchmark's collages, a first guess that the search then corrects.
_SLOPE = 0.6


@dataclass(frozen=True, kw_only=True)
class JpegTarget:
    """How a collage is encoded: its quality, and the size in bytes it must fit, if any."""

    quality: int
    max_bytes: int | None = None  # None: any size
    min_quality: int | None = None  # how low max_bytes may push the quality; None: not at all

    def __post_init__(self) -> None:
        if not 1 <= self.quality <= 100:
            raise ValueError(f"JPEG quality must be between 1 and 100, not {self.quality!r}")
        if self.max_bytes is not None and self.max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, not {self.max_bytes!r}")
        if self.min_quality is not None and not 1 <= self.min_quality <= self.quality:
            raise ValueError(
                f"min_quality must be between 1 and quality {self.quality}, not"
                f" {self.min_quality!r}"
            )

    @property
    def floor(self) -> int:
        """The lowest quality a size limit may push the collage to."""
        return self.quality if self.min_quality is None else self.min_quality


@dataclass(frozen=True)
class Encoded:
    """A JPEG and the quality it was encoded at."""

    jpeg: bytes
    quality: int


def encode(image: Image.Image, *, quality: int, icc: bytes) -> bytes:
    """Encode baseline JPEG, 4:4:4, tagged with the ICC profile, without EXIF or comment."""
    out = io.BytesIO()
    # Baseline, not optimized: at 60 MP progressive takes 5.9x the encoding CPU and 340 MiB more
    # memory for files 8 % smaller, optimize 2.9x and 340 MiB for 4 % (docs/imaging.md).
    # comment=b"" keeps a source JPEG's comment out of a single-photo collage.
    image.save(out, "JPEG", quality=quality, subsampling=0, icc_profile=icc, comment=b"")
    return out.getvalue()


def fit(image: Image.Image, target: JpegTarget, *, icc: bytes) -> Encoded:
    """Encode at the target's quality, or at the highest down to its floor that fits.

    Raise TooLarge, naming the size reached, when even the floor is too large.
    """
    quality, max_bytes, min_quality = target.quality, target.max_bytes, target.floor
    first = encode(image, quality=quality, icc=icc)
    if max_bytes is None or len(first) <= max_bytes:
        return Encoded(first, quality)
    sample = _sample(image)
    probes: dict[int, int] = {}

    def probe(q: int) -> int:
        if q not in probes:
            probes[q] = len(encode(sample, quality=q, icc=icc))
        return probes[q]

    # Full encodes bracket the answer: `fits` is the best that fits so far, `over` the lowest
    # quality known to be too large; the sample, scaled to the nearest full encode, predicts.
    fits: Encoded | None = None
    over, sizes = quality, {quality: len(first)}
    while over - (fits.quality if fits else min_quality - 1) > 1:
        low = fits.quality if fits else min_quality - 1
        # Scaled to the full encode nearest the answer from below, or the lowest too large.
        anchor = fits.quality if fits else over
        ratio = sizes[anchor] / probe(anchor)
        guess = _highest_fitting(_scaled(probe, ratio), low, over, max_bytes)
        if guess is None:  # the sample says nothing above `low` fits
            if fits is not None:
                break
            guess = min_quality  # check the floor itself, and name its size if too large
        jpeg = encode(image, quality=guess, icc=icc)
        sizes[guess] = len(jpeg)
        if len(jpeg) <= max_bytes:
            fits = Encoded(jpeg, guess)
        else:
            over = guess
    if fits is None:
        raise TooLarge(
            f"the collage ({image.width:,} x {image.height:,} px) is {sizes[min_quality]:,} bytes"
            f" even at JPEG quality {min_quality}, the lowest allowed; at most {max_bytes:,}"
            " bytes are allowed"
        )
    return fits


def _scaled(probe: Callable[[int], int], ratio: float) -> Callable[[int], float]:
    return lambda quality: ratio * probe(quality)


def _highest_fitting(
    size_at: Callable[[int], float], low: int, over: int, max_bytes: int
) -> int | None:
    """Find the highest quality in (low, over) whose predicted size fits, or None.

    A secant search on log size against log quantization scale, inside the bracket.
    """
    fits, sizes = low, {over: size_at(over)}
    while over - fits > 1:
        if fits > low:
            slope = math.log(sizes[over] / sizes[fits]) / math.log(_scale(fits) / _scale(over))
        else:
            slope = _SLOPE
        scale = _scale(over) * (sizes[over] / max_bytes) ** (1 / max(slope, 0.05))
        guess = min(max(math.floor(_quality_of(scale)), fits + 1), over - 1)
        sizes[guess] = size_at(guess)
        if sizes[guess] <= max_bytes:
            fits = guess
        else:
            over = guess
    return fits if fits > low else None


def _scale(quality: int) -> float:
    """Return libjpeg's quantization scale in percent for a quality (jcparam.c's formula)."""
    return 5000 / quality if quality < 50 else max(1, 200 - 2 * quality)


def _quality_of(scale: float) -> float:
    """Invert _scale, continuously."""
    return 5000 / scale if scale > 100 else (200 - scale) / 2


def _sample(image: Image.Image) -> Image.Image:
    """Return one band of rows in every _EVERY, stacked: a sample of the image's own blocks."""
    tops = range(0, image.height - _BAND + 1, _BAND * _EVERY)
    if len(tops) < 4:  # too short to sample: the whole image is cheap to encode anyway
        return image
    sample = Image.new(image.mode, (image.width, _BAND * len(tops)))
    for i, top in enumerate(tops):
        sample.paste(image.crop((0, top, image.width, top + _BAND)), (0, i * _BAND))
    return sample
