"""imaging.avif: an AVIF's clean aperture (clap), in containers written box by box."""

from __future__ import annotations

import io
import itertools
import struct
import time
from collections.abc import Sequence
from fractions import Fraction

import pytest
from PIL import Image

from dev.collages import build_collage
from tests.support.pictures import GREEN, GREY, RED, corner, decode, encode, near, solid


def box(kind: bytes, body: bytes, *, version: int | None = None) -> bytes:
    """Encode an ISOBMFF box; a full box when it has a version (its flags are 0)."""
    if version is not None:
        body = bytes([version, 0, 0, 0]) + body
    return struct.pack(">I", 8 + len(body)) + kind + body


def clap(width: Fraction, height: Fraction, x: Fraction, y: Fraction) -> bytes:
    """Encode a CleanApertureBox: sizes and the offset of its centre from the image's."""
    values = [(v.numerator, v.denominator) for v in (width, height, x, y)]
    return box(b"clap", struct.pack(">IIIIiIiI", *itertools.chain(*values)))


def avif_with(image: Image.Image, properties: Sequence[bytes], *, associate: bool = True) -> bytes:
    """Wrap Pillow's AV1 coding of an image in our own AVIF, with extra item properties.

    The properties are associated (as essential) with the primary item, in order, unless
    `associate` is false: then they sit in the property container, tied to no item.
    """
    coded = encode(image, "AVIF", quality=95, subsampling="4:4:4")
    at = coded.index(b"av1C") - 4
    av1c = coded[at : at + int.from_bytes(coded[at : at + 4], "big")]
    at = coded.index(b"mdat") - 4
    payload = coded[at + 8 : at + int.from_bytes(coded[at : at + 4], "big")]
    ispe = box(b"ispe", struct.pack(">II", *image.size), version=0)
    tied = [ispe, av1c, *properties] if associate else [ispe, av1c]
    ipco = box(b"ipco", b"".join([ispe, av1c, *properties]))
    # Item 1: ispe non-essential, the rest essential (MIAF wants transformations essential).
    links = bytes([len(tied), 1]) + bytes(0x80 | i for i in range(2, len(tied) + 1))
    ipma = box(b"ipma", struct.pack(">IH", 1, 1) + links, version=0)
    ftyp = box(b"ftyp", b"avif" + bytes(4) + b"avifmif1miaf")

    def meta(offset: int) -> bytes:
        iloc = struct.pack(">BBHHHHII", 0x44, 0, 1, 1, 0, 1, offset, len(payload))
        return box(
            b"meta",
            box(b"hdlr", bytes(4) + b"pict" + bytes(13), version=0)
            + box(b"pitm", struct.pack(">H", 1), version=0)
            + box(b"iloc", iloc, version=0)
            + box(b"iinf", struct.pack(">H", 1) + box(b"infe", b"\0\1\0\0av01\0", version=2),
                  version=0)
            + box(b"iprp", ipco + ipma),
            version=0,
        )  # fmt: skip

    start = len(ftyp) + len(meta(0)) + 8
    return ftyp + meta(start) + box(b"mdat", payload)


BLUE = (20, 40, 220)


def padded(size: tuple[int, int], kept: tuple[int, int, int, int]) -> Image.Image:
    """Blue padding around a grey picture, red at its top-left and green at its top-right."""
    image = Image.new("RGB", size, BLUE)
    left, top, right, _ = kept
    image.paste(GREY, kept)
    image.paste(RED, (left, top, left + 12, top + 12))
    image.paste(GREEN, (right - 12, top, right, top + 12))
    return image


HALF = Fraction(1, 2)


@pytest.mark.parametrize(
    ("kept", "offset"),
    [
        ((16, 12, 80, 60), (Fraction(0), Fraction(0))),  # centred, as letterboxing is cut
        ((0, 0, 64, 48), (Fraction(-32, 2), Fraction(-12))),  # anchored top-left
        ((32, 24, 96, 72), (Fraction(16), Fraction(12))),  # bottom-right
    ],
)
def test_avif_clean_aperture_crops_the_size_and_the_pixels(
    kept: tuple[int, int, int, int], offset: tuple[Fraction, Fraction]
) -> None:
    data = avif_with(padded((96, 72), kept), [clap(Fraction(64), Fraction(48), *offset)])
    assert Image.open(io.BytesIO(data)).size == (96, 72)  # what Pillow alone makes of it
    collage = decode(build_collage([data]))
    assert collage.size == (64, 48)
    assert near(corner(collage, "top-left"), RED, 16)
    assert near(corner(collage, "top-right"), GREEN, 16)
    for edge in ((0, 24), (63, 24), (32, 0), (32, 47)):  # no padding left on any side
        assert near(collage.getpixel(edge), GREY, 24), edge


def test_avif_clean_aperture_is_applied_before_the_rotation() -> None:
    kept = (16, 12, 80, 60)
    rotate_90 = box(b"irot", b"\1")  # a quarter turn anticlockwise, after the crop (MIAF)
    data = avif_with(
        padded((96, 72), kept), [clap(Fraction(64), Fraction(48), 0 * HALF, 0 * HALF), rotate_90]
    )
    collage = decode(build_collage([data]))
    assert collage.size == (48, 64)
    assert near(corner(collage, "bottom-left"), RED, 16)
    assert near(corner(collage, "top-left"), GREEN, 16)
    assert near(collage.getpixel((24, 0)), GREY, 24)


def test_layout_uses_the_cropped_size() -> None:
    data = avif_with(
        padded((96, 72), (16, 12, 80, 60)), [clap(Fraction(64), Fraction(48), 0 * HALF, 0 * HALF)]
    )
    # Uncropped, the 72 px tall AVIF would be the tallest and the JPEG would be scaled to it.
    assert decode(build_collage([data, solid(RED, (10, 48))])).size == (74, 48)


@pytest.mark.parametrize(
    "aperture",
    [
        (Fraction(63), Fraction(48), Fraction(0), Fraction(0)),  # left edge at 16.5 px
        (Fraction(64), Fraction(48), Fraction(1, 2), Fraction(0)),  # likewise, by its offset
        (Fraction(64), Fraction(48), Fraction(17), Fraction(0)),  # right edge past the image
        (Fraction(128), Fraction(48), Fraction(0), Fraction(0)),  # wider than the image
    ],
)
def test_avif_clean_aperture_that_is_not_whole_pixels_inside_is_ignored(
    aperture: tuple[Fraction, ...],
) -> None:
    data = avif_with(padded((96, 72), (16, 12, 80, 60)), [clap(*aperture)])
    assert decode(build_collage([data])).size == (96, 72)


def test_avif_clean_aperture_of_no_item_or_with_a_zero_denominator_is_ignored() -> None:
    image = padded((96, 72), (16, 12, 80, 60))
    loose = avif_with(
        image, [clap(Fraction(64), Fraction(48), 0 * HALF, 0 * HALF)], associate=False
    )
    assert decode(build_collage([loose])).size == (96, 72)
    broken = box(b"clap", struct.pack(">IIIIiIiI", 64, 1, 48, 1, 0, 0, 0, 1))
    assert decode(build_collage([avif_with(image, [broken])])).size == (96, 72)


def test_avif_sequence_clean_aperture_is_read_from_its_colour_track() -> None:
    from collage.imaging.avif import clean_aperture

    def track(aperture: bytes, *, alpha: bool) -> bytes:
        entry = box(b"av01", bytes(78) + aperture)
        stbl = box(b"stbl", box(b"stsd", struct.pack(">I", 1) + entry, version=0))
        tref = box(b"tref", box(b"auxl", struct.pack(">I", 1))) if alpha else b""
        return box(b"trak", tref + box(b"mdia", box(b"minf", stbl)))

    cut = clap(Fraction(64), Fraction(48), Fraction(0), Fraction(0))
    alpha = clap(Fraction(32), Fraction(24), Fraction(0), Fraction(0))
    moov = box(b"moov", track(alpha, alpha=True) + track(cut, alpha=False))
    data = box(b"ftyp", b"avis" + bytes(4) + b"avismsf1") + moov
    assert clean_aperture(data, (96, 72)) == (16, 12, 80, 60)
    # With 'avif' as its major brand, libavif shows the primary item, here none.
    assert clean_aperture(b"\0\0\0\x10ftypavif" + bytes(4) + moov, (96, 72)) is None


def test_avif_box_walk_stops_early_on_a_flood_of_tiny_boxes() -> None:
    from collage.imaging.avif import clean_aperture

    flood = box(b"ipco", box(b"free", b"") * 1_000_000)  # 8 MB of empty properties
    meta = box(b"meta", box(b"pitm", b"\0\1", version=0) + box(b"iprp", flood), version=0)
    data = box(b"ftyp", b"avif" + bytes(4) + b"avifmif1") + meta
    cpu = time.process_time()
    assert clean_aperture(data, (96, 72)) is None
    assert time.process_time() - cpu < 0.5
