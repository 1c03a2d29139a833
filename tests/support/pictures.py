"""Pictures for the tests: files that lie about themselves, and what a collage looks like."""

from __future__ import annotations

import io
import math
import struct
import zlib
from collections.abc import Sequence

from PIL import Image, ImageChops, ImageStat

from dev.photos import shapes

RED, GREEN, BLUE, GREY = (230, 20, 20), (20, 200, 20), (30, 30, 220), (128, 128, 128)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims `width` x `height` in its header and has no pixel data at all."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def mean_rgb(jpeg_bytes: bytes) -> tuple[float, float, float]:
    """The average colour of an image."""
    with Image.open(io.BytesIO(jpeg_bytes)) as image:
        small = image.convert("RGB").resize((1, 1), Image.Resampling.BOX)
        r, g, b = small.getpixel((0, 0))  # type: ignore[misc]
    return (r, g, b)


# --- for the imaging tests ---------------------------------------------------------------

Colour = tuple[int, int, int]


NAMES = ["s3://bucket/a.jpg", "s3://bucket/b.jpg", "s3://bucket/c.jpg"]


def encode(image: Image.Image, fmt: str = "JPEG", **options: object) -> bytes:
    """Save an image to bytes in the given format."""
    out = io.BytesIO()
    if fmt == "JPEG":
        options = {"quality": 95, **options}
    image.save(out, fmt, **options)
    return out.getvalue()


def decode(data: bytes) -> Image.Image:
    """Open and load a collage."""
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def solid(colour: Colour, size: tuple[int, int] = (16, 16)) -> bytes:
    """Return a JPEG of one colour."""
    return encode(Image.new("RGB", size, colour))


def psnr(a: Image.Image, b: Image.Image) -> float:
    """Return the PSNR of two RGB images of one size, in dB."""
    mse = sum(rms * rms for rms in ImageStat.Stat(ImageChops.difference(a, b)).rms) / 3
    return 10 * math.log10(255 * 255 / mse) if mse else math.inf


def near(actual: Sequence[int], expected: Sequence[float], tolerance: float) -> bool:
    """Say whether every channel is within the tolerance."""
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


def centre_pixel(data: bytes) -> Colour:
    """Return the colour at the centre of a collage."""
    image = decode(data)
    return image.getpixel((image.width // 2, image.height // 2))


GOOD_JPEG = encode(shapes((64, 64), 9), quality=90)


GOOD_PNG = encode(shapes((64, 64), 9), "PNG")


GOOD_WEBP = encode(shapes((64, 64), 9), "WEBP")


# Where a browser shows the stored image's top-left and top-right corners (EXIF 2.3, 0x0112).
CORNERS = {
    1: ("top-left", "top-right"),
    2: ("top-right", "top-left"),
    3: ("bottom-right", "bottom-left"),
    4: ("bottom-left", "bottom-right"),
    5: ("top-left", "bottom-left"),
    6: ("top-right", "bottom-right"),
    7: ("bottom-right", "top-right"),
    8: ("bottom-left", "top-left"),
}


def corner(image: Image.Image, where: str) -> Colour:
    """Return the colour 4 px inside a corner."""
    vertical, horizontal = where.split("-")
    x = 4 if horizontal == "left" else image.width - 5
    y = 4 if vertical == "top" else image.height - 5
    return image.getpixel((x, y))


def png_header(width: int, height: int) -> bytes:
    """Return a PNG that declares a size but whose pixel data stops short."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(64)))
