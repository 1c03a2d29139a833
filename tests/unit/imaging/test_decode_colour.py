"""imaging.decode's colours: every mode and ICC profile to 8-bit sRGB, transparency on white."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
from PIL import Image, ImageCms

from dev.collages import build_collage
from tests.support.icc import (
    ADOBE_PRIMARIES,
    ADOBE_RGB,
    DISPLAY_P3,
    LINEAR_GREY,
    P3_PRIMARIES,
    SRGB_PRIMARIES,
    apply,
    cmyk_lab,
    cmyk_profile,
    inverse,
    lab_to_srgb,
    mul,
    rgb_to_xyz,
    srgb_decode,
    srgb_encode,
    to_srgb,
)
from tests.support.pictures import GREEN, RED, Colour, centre_pixel, decode, encode, near, solid


def cmyk(ink: tuple[int, int, int, int], fmt: str, **options: object) -> bytes:
    """Return a CMYK photo of one ink mix."""
    return encode(Image.new("CMYK", (16, 16), ink), fmt, **options)


@pytest.mark.parametrize(
    ("ink", "expected"),
    [
        ((0, 0, 0, 0), (255, 255, 255)),
        ((0, 255, 0, 0), (255, 0, 255)),
        ((0, 0, 0, 128), (127, 127, 127)),
    ],
)
@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_cmyk_without_profile_is_converted_as_browsers_do(
    ink: tuple[int, int, int, int], expected: Colour, fmt: str
) -> None:
    data = cmyk(ink, fmt)
    if fmt == "JPEG":  # libjpeg writes CMYK with Adobe's APP14 marker, inks inverted
        assert b"Adobe" in data
        assert decode(data).info["adobe"]
    assert near(centre_pixel(build_collage([data])), expected, 6)


@pytest.mark.parametrize("fmt", ["TIFF", "JPEG"])
def test_cmyk_profile_is_applied(fmt: str) -> None:
    profile = cmyk_profile()
    tolerance = 4 if fmt == "TIFF" else 8
    for ink, corner_ in (
        ((255, 0, 0, 0), (1, 0, 0, 0)),
        ((0, 0, 0, 0), (0, 0, 0, 0)),
        ((0, 0, 0, 255), (0, 0, 0, 1)),
    ):
        data = cmyk(ink, fmt, icc_profile=profile)
        assert near(centre_pixel(build_collage([data])), lab_to_srgb(cmyk_lab(*corner_)), tolerance)


@pytest.mark.parametrize(
    ("profile", "primaries", "linearise"),
    [
        (ADOBE_RGB, ADOBE_PRIMARIES, lambda v: (v / 255) ** (563 / 256)),
        (DISPLAY_P3, P3_PRIMARIES, srgb_decode),
    ],
    ids=["Adobe RGB", "Display P3"],
)
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_rgb_profiles_are_converted_to_srgb(
    profile: bytes,
    primaries: Sequence[tuple[float, float]],
    linearise: Callable[[int], float],
    fmt: str,
) -> None:
    tolerance = 3 if fmt == "PNG" else 6
    for colour in [(180, 90, 70), (70, 150, 110), (200, 180, 60), (128, 128, 128)]:
        expected = to_srgb(primaries, [linearise(v) for v in colour])
        if colour != (128, 128, 128):
            assert not near(colour, expected, 8)  # the conversion must show
        data = encode(Image.new("RGB", (16, 16), colour), fmt, icc_profile=profile)
        assert near(centre_pixel(build_collage([data])), expected, tolerance)


def test_grey_profile_is_applied() -> None:
    data = encode(Image.new("L", (16, 16), 128), "PNG", icc_profile=LINEAR_GREY)
    assert near(centre_pixel(build_collage([data])), (188, 188, 188), 2)


def test_srgb_profile_and_broken_or_foreign_profiles_leave_pixels_alone() -> None:
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    for profile in (srgb, b"not a profile" * 20, cmyk_profile(), LINEAR_GREY):
        data = encode(Image.new("RGB", (16, 16), (180, 90, 70)), "PNG", icc_profile=profile)
        assert near(centre_pixel(build_collage([data])), (180, 90, 70), 2)


def test_srgb_photo_and_adobe_rgb_photo_match_side_by_side() -> None:
    linear = [(v / 255) ** 2.4 for v in (40, 160, 90)]  # some colour, in linear light
    srgb_colour = tuple(round(v) for v in srgb_encode(linear))
    adobe = apply(mul(inverse(rgb_to_xyz(ADOBE_PRIMARIES)), rgb_to_xyz(SRGB_PRIMARIES)), linear)
    adobe_colour = tuple(round(255 * v ** (256 / 563)) for v in adobe)
    photos = [
        encode(Image.new("RGB", (16, 16), srgb_colour), "PNG"),
        encode(Image.new("RGB", (16, 16), adobe_colour), "PNG", icc_profile=ADOBE_RGB),
    ]
    collage = decode(build_collage(photos))
    assert near(collage.getpixel((8, 8)), collage.getpixel((24, 8)), 4)


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [
        ("L", 100, 100),
        ("1", 1, 255),
        ("1", 0, 0),
        ("I;16", 257 * 100, 100),
        ("I;16", 65535, 255),
        ("I;16", 32896, 128),
        ("I;16B", 257 * 100, 100),
        ("I", 257 * 200, 200),
    ],
)
def test_grey_bit_depths_are_scaled_not_clipped(mode: str, value: int, expected: int) -> None:
    fmt = "TIFF" if mode in ("I", "I;16B") else "PNG"
    data = encode(Image.new(mode, (16, 16), value), fmt)
    assert near(centre_pixel(build_collage([data])), (expected,) * 3, 1)


def test_greyscale_jpeg() -> None:
    assert near(centre_pixel(build_collage([encode(Image.new("L", (16, 16), 77))])), (77,) * 3, 2)


@pytest.mark.parametrize(
    ("mode", "value"),
    [("RGBA", (200, 0, 0, 0)), ("LA", (0, 0))],
)
@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_transparency_is_white(mode: str, value: tuple[int, ...], fmt: str) -> None:
    image = Image.new(mode, (16, 16), value)
    assert near(
        centre_pixel(build_collage([encode(image, fmt, lossless=True)])), (255, 255, 255), 2
    )


def test_half_transparent_black_is_grey_on_white() -> None:
    data = encode(Image.new("RGBA", (16, 16), (0, 0, 0, 128)), "PNG")
    assert near(centre_pixel(build_collage([data])), (127, 127, 127), 2)


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_transparency_is_white(fmt: str) -> None:
    image = Image.new("P", (16, 16), 0)
    image.putpalette([0, 0, 0, 20, 200, 20])
    image.paste(1, (0, 0, 8, 16))
    collage = decode(build_collage([encode(image, fmt, transparency=0)]))
    assert near(collage.getpixel((4, 8)), (20, 200, 20), 6)
    assert near(collage.getpixel((12, 8)), (255, 255, 255), 6)


@pytest.mark.parametrize(("mode", "key"), [("RGB", (1, 2, 3)), ("L", 7)])
def test_colour_key_transparency_is_white(mode: str, key: int | Colour) -> None:
    data = encode(Image.new(mode, (16, 16), key), "PNG", transparency=key)
    assert near(centre_pixel(build_collage([data])), (255, 255, 255), 2)


def test_gif_gives_its_first_frame() -> None:
    frames = [Image.new("P", (16, 16), index) for index in (0, 1)]
    for frame in frames:
        frame.putpalette([*RED, *GREEN])
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert near(centre_pixel(build_collage([data])), RED, 8)


@pytest.mark.parametrize(
    ("fmt", "options", "tolerance"),
    [
        ("WEBP", {"lossless": True}, 2),
        ("AVIF", {"quality": 90}, 12),
        ("TIFF", {}, 2),
        ("BMP", {}, 2),
    ],
)
def test_other_formats_open(fmt: str, options: dict[str, object], tolerance: int) -> None:
    data = encode(Image.new("RGB", (32, 32), (40, 90, 160)), fmt, **options)
    assert near(centre_pixel(build_collage([data, solid((40, 90, 160))])), (40, 90, 160), tolerance)
