"""Unit tests of collage.imaging, on small photos drawn with Pillow in the tests themselves."""

from __future__ import annotations

import io
import itertools
import math
import random
import struct
import time
import zlib
from collections.abc import Callable, Sequence
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageChops, ImageCms, ImageFile, ImageStat, JpegImagePlugin

from collage import imaging
from collage.errors import NoPhotos, PhotoUnreadable, TooLarge
from collage.imaging import RESAMPLING, Limits, compose, plan_layout
from dev import collages
from dev.collages import build_collage
from dev.photos import shapes

Colour = tuple[int, int, int]
NAMES = ["s3://bucket/a.jpg", "s3://bucket/b.jpg", "s3://bucket/c.jpg"]


# --- helpers ---------------------------------------------------------------------------------


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


# --- colour science, written out so that the ICC tests check ImageCms against the maths ----------

D50 = (0.9642, 1.0, 0.8249)
D65_XY = (0.3127, 0.3290)
SRGB_PRIMARIES = ((0.64, 0.33), (0.30, 0.60), (0.15, 0.06))
ADOBE_PRIMARIES = ((0.64, 0.33), (0.21, 0.71), (0.15, 0.06))
P3_PRIMARIES = ((0.680, 0.320), (0.265, 0.690), (0.150, 0.060))
BRADFORD = ((0.8951, 0.2664, -0.1614), (-0.7502, 1.7135, 0.0367), (0.0389, -0.0685, 1.0296))
Matrix = tuple[tuple[float, ...], ...]


def mul(a: Matrix, b: Matrix) -> Matrix:
    """Multiply two 3x3 matrices."""
    return tuple(
        tuple(sum(a[i][k] * b[k][j] for k in range(3)) for j in range(3)) for i in range(3)
    )


def apply(m: Matrix, v: Sequence[float]) -> tuple[float, ...]:
    """Multiply a 3x3 matrix by a vector."""
    return tuple(sum(m[i][k] * v[k] for k in range(3)) for i in range(3))


def inverse(m: Matrix) -> Matrix:
    """Invert a 3x3 matrix."""
    (a, b, c), (d, e, f), (g, h, i) = m
    det = a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)
    cof = ((e * i - f * h, c * h - b * i, b * f - c * e),
           (f * g - d * i, a * i - c * g, c * d - a * f),
           (d * h - e * g, b * g - a * h, a * e - b * d))  # fmt: skip
    return tuple(tuple(x / det for x in row) for row in cof)


def xyz_of(xy: tuple[float, float]) -> tuple[float, float, float]:
    """Return the XYZ of a chromaticity at Y = 1."""
    x, y = xy
    return (x / y, 1.0, (1 - x - y) / y)


def rgb_to_xyz(primaries: Sequence[tuple[float, float]]) -> Matrix:
    """Return the matrix from linear RGB to XYZ, white D65 at Y = 1."""
    columns = tuple(tuple(xyz_of(p)[i] for p in primaries) for i in range(3))
    scale = apply(inverse(columns), xyz_of(D65_XY))
    return tuple(tuple(columns[i][j] * scale[j] for j in range(3)) for i in range(3))


def d65_to_d50() -> Matrix:
    """Return Bradford's chromatic adaptation from D65 to D50, as ICC profiles store colorants."""
    cone_src, cone_dst = apply(BRADFORD, xyz_of(D65_XY)), apply(BRADFORD, D50)
    scale = tuple(
        tuple(cone_dst[i] / cone_src[i] if i == j else 0.0 for j in range(3)) for i in range(3)
    )
    return mul(inverse(BRADFORD), mul(scale, BRADFORD))


def srgb_encode(linear: Sequence[float]) -> tuple[float, ...]:
    """Apply sRGB's transfer curve to linear values, clipped, on a 0-255 scale."""
    out = []
    for v in linear:
        v = min(1.0, max(0.0, v))
        out.append(255 * (12.92 * v if v <= 0.0031308 else 1.055 * v ** (1 / 2.4) - 0.055))
    return tuple(out)


def srgb_decode(value: int) -> float:
    """Undo sRGB's transfer curve (also Display P3's)."""
    v = value / 255
    return v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4


def to_srgb(primaries: Sequence[tuple[float, float]], linear: Sequence[float]) -> tuple[float, ...]:
    """Convert linear RGB in other primaries (same D65 white) to 8-bit sRGB."""
    matrix = mul(inverse(rgb_to_xyz(SRGB_PRIMARIES)), rgb_to_xyz(primaries))
    return srgb_encode(apply(matrix, linear))


def lab_to_srgb(lab: tuple[float, float, float]) -> tuple[float, ...]:
    """Convert CIELAB (D50, as ICC's PCS) to 8-bit sRGB."""
    lightness, a, b = lab
    fy = (lightness + 16) / 116
    finv = [
        t**3 if t > 6 / 29 else 3 * (6 / 29) ** 2 * (t - 4 / 29)
        for t in (fy + a / 500, fy, fy - b / 200)
    ]
    xyz = tuple(n * f for n, f in zip(D50, finv, strict=True))
    return srgb_encode(apply(inverse(mul(d65_to_d50(), rgb_to_xyz(SRGB_PRIMARIES))), xyz))


# --- ICC profiles built byte by byte (ICC.1:2001-04, version 2), as no real one may be committed --


def s15(value: float) -> bytes:
    """Encode an s15Fixed16Number."""
    return struct.pack(">i", round(value * 65536))


def xyz_tag(xyz: Sequence[float]) -> bytes:
    """Encode an XYZType."""
    return b"XYZ \0\0\0\0" + b"".join(map(s15, xyz))


def gamma_tag(gamma: float) -> bytes:
    """Encode a curveType holding a single gamma."""
    return b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256))


def srgb_curve_tag() -> bytes:
    """Encode sRGB's transfer curve as a parametricCurveType (function 3), as Display P3 has."""
    params = (2.4, 1 / 1.055, 0.055 / 1.055, 1 / 12.92, 0.04045)
    return b"para\0\0\0\0" + struct.pack(">HH", 3, 0) + b"".join(map(s15, params))


def icc(device: bytes, space: bytes, pcs: bytes, name: str, tags: dict[bytes, bytes]) -> bytes:
    """Assemble a version 2 ICC profile from its tags."""
    text = name.encode() + b"\0"
    tags = {
        b"desc": b"desc\0\0\0\0" + struct.pack(">I", len(text)) + text + bytes(8 + 3 + 67),
        b"wtpt": xyz_tag(D50),
        **tags,
    }
    table, data, start = b"", b"", 128 + 4 + 12 * len(tags)
    for signature, body in tags.items():
        table += signature + struct.pack(">II", start + len(data), len(body))
        data += body + bytes(-len(body) % 4)
    header = (
        struct.pack(">I4sI4s4s4s", start + len(data), b"", 0x02100000, device, space, pcs)
        + bytes(12) + b"acsp" + bytes(28) + b"".join(map(s15, D50)) + bytes(48)
    )  # fmt: skip
    return header + struct.pack(">I", len(tags)) + table + data


def rgb_profile(name: str, primaries: Sequence[tuple[float, float]], curve: bytes) -> bytes:
    """Build a matrix/TRC display profile, colorants adapted to D50 as the ICC requires."""
    colorants = mul(d65_to_d50(), rgb_to_xyz(primaries))
    columns = {
        sig: xyz_tag([row[i] for row in colorants])
        for i, sig in enumerate((b"rXYZ", b"gXYZ", b"bXYZ"))
    }
    return icc(
        b"mntr", b"RGB ", b"XYZ ", name, {**columns, b"rTRC": curve, b"gTRC": curve, b"bTRC": curve}
    )


ADOBE_RGB = rgb_profile("Adobe RGB (1998)", ADOBE_PRIMARIES, gamma_tag(563 / 256))
DISPLAY_P3 = rgb_profile("Display P3", P3_PRIMARIES, srgb_curve_tag())
LINEAR_GREY = icc(b"mntr", b"GRAY", b"XYZ ", "Linear grey", {b"kTRC": gamma_tag(1.0)})


def cmyk_lab(c: int, m: int, y: int, k: int) -> tuple[float, float, float]:
    """Say where the test CMYK profile puts each corner of its grid (0 or 1 per ink)."""
    if (c, m, y, k) == (1, 0, 0, 0):
        return (50.0, 60.0, 40.0)  # cyan ink printing red: only a profile can make that happen
    return (100 * (1 - 0.25 * (c + m + y)) * (1 - 0.8 * k), 0.0, 0.0)


def cmyk_profile() -> bytes:
    """Build a CMYK output profile whose A2B0 is a 2-point lut8 grid over the four inks."""
    body = b"mft1\0\0\0\0" + bytes([4, 3, 2, 0]) + b"".join(map(s15, (1, 0, 0, 0, 1, 0, 0, 0, 1)))
    body += bytes(range(256)) * 4
    for corner in itertools.product((0, 1), repeat=4):  # the first ink varies slowest
        lightness, a, b = cmyk_lab(*corner)
        body += bytes([round(lightness * 255 / 100), round(a + 128), round(b + 128)])
    body += bytes(range(256)) * 3
    return icc(b"prtr", b"CMYK", b"Lab ", "Test CMYK", {b"A2B0": body})


# --- layout ----------------------------------------------------------------------------------


@given(st.lists(st.tuples(st.integers(1, 20_000), st.integers(1, 20_000)), min_size=1, max_size=30))
def test_plan_layout_scales_every_photo_to_the_tallest(sizes: list[tuple[int, int]]) -> None:
    layout = plan_layout(sizes)
    assert layout.height == max(h for _, h in sizes)
    assert len(layout.widths) == len(sizes)
    assert layout.width == sum(layout.widths)
    for (w, h), width in zip(sizes, layout.widths, strict=True):
        exact = Fraction(w * layout.height, h)
        assert width >= w  # never downscaled, so never under 1 px either
        assert abs(width - exact) < Fraction(1, 2) or width == exact + Fraction(1, 2)
        if h == layout.height:
            assert width == w


def test_plan_layout_rounds_half_up() -> None:
    assert plan_layout([(100, 50), (30, 100)]).widths == (200, 30)
    assert plan_layout([(1, 2), (1, 3)]).widths == (2, 1)  # 1.5 -> 2
    assert plan_layout([(5, 4), (1, 10)]).widths == (13, 1)  # 12.5 -> 13
    assert plan_layout([(7, 30), (1, 31)]).widths == (7, 1)  # 7.23 -> 7


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 48), st.integers(1, 48)), min_size=1, max_size=5))
def test_collage_has_the_planned_size(sizes: list[tuple[int, int]]) -> None:
    photos = [solid((200, 30, 30), size) for size in sizes]
    layout = plan_layout(sizes)
    assert decode(build_collage(photos)).size == (layout.width, layout.height)


def test_photos_keep_their_order() -> None:
    colours = [(220, 20, 20), (20, 200, 20), (20, 20, 220), (240, 240, 20), (20, 220, 220)]
    sizes = [(24, 40), (16, 40), (40, 20), (8, 40), (32, 32)]
    collage = decode(build_collage([solid(c, s) for c, s in zip(colours, sizes, strict=True)]))
    x = 0
    for colour, width in zip(colours, plan_layout(sizes).widths, strict=True):
        for y in (2, 20, 37):
            assert near(collage.getpixel((x + width // 2, y)), colour, 6)
        x += width


# --- encoding --------------------------------------------------------------------------------


@pytest.mark.parametrize("quality", [95, 80, 40])
def test_output_is_444_at_the_quality_asked(quality: int) -> None:
    collage = decode(build_collage([solid((10, 120, 200)), solid((90, 10, 20))], quality=quality))
    reference = decode(encode(Image.new("RGB", (8, 8)), quality=quality, subsampling=0))
    assert collage.format == "JPEG"
    assert JpegImagePlugin.get_sampling(collage) == 0
    assert collage.quantization == reference.quantization


def test_default_quality_is_95() -> None:
    reference = decode(encode(Image.new("RGB", (8, 8)), quality=95, subsampling=0))
    assert decode(build_collage([solid((1, 2, 3))])).quantization == reference.quantization


def test_output_is_tagged_srgb_without_exif_or_comment() -> None:
    exif = Image.Exif()
    exif[0x0112] = 1
    exif[0x010F] = "Camera maker"
    photo = encode(Image.new("RGB", (16, 16)), exif=exif.tobytes(), comment=b"secret")
    for data in (build_collage([photo]), build_collage([photo, photo])):
        collage = decode(data)
        profile = ImageCms.ImageCmsProfile(io.BytesIO(collage.info["icc_profile"]))
        assert "sRGB" in ImageCms.getProfileDescription(profile)
        assert "exif" not in collage.info
        assert not collage.getexif()
        assert b"secret" not in data


def test_each_panel_is_its_photo_resized() -> None:
    images = [shapes((60, 90), 1), shapes((64, 60), 2), shapes((45, 72), 3)]
    photos = [encode(image, quality=98, subsampling=0) for image in images]
    collage = decode(build_collage(photos))
    layout = plan_layout([image.size for image in images])
    assert layout.height == 90
    x = 0
    for photo, width in zip(photos, layout.widths, strict=True):
        reference = decode(photo).convert("RGB")
        if reference.height != layout.height:
            reference = reference.resize((width, layout.height), RESAMPLING)
        panel = collage.crop((x, 0, x + width, layout.height))
        assert psnr(panel, reference) > 38
        x += width


@pytest.mark.parametrize("resampler", ["opencv", "pillow"])
def test_upscaling_restores_a_shrunk_photo(resampler: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Shrunk to 0.8x as an export tool would (LANCZOS) and scaled back: OpenCV's bicubic gave
    # 48.2-49.5 dB on such photos, Pillow's 0.1-0.3 dB less; half a pixel off costs 13 dB.
    monkeypatch.setattr(compose, "RESAMPLER", resampler)
    truths = [shapes((2000, 3000), seed) for seed in (1, 2, 3)]
    scaled = [
        imaging.scale(truth.resize((1600, 2400), Image.Resampling.LANCZOS), (2000, 3000))
        for truth in truths
    ]
    assert all(image.size == (2000, 3000) for image in scaled)
    pairs = zip(scaled, truths, strict=True)
    fidelity = [psnr(image.convert("RGB"), truth) for image, truth in pairs]
    assert sum(fidelity) / 3 >= 47.2, fidelity


def edge_at(values: Sequence[int]) -> float:
    """Return where a dark-to-light profile crosses half way (pixel centres are at +0.5)."""
    low, high = values[0], values[-1]
    middle = (low + high) / 2
    for i in range(len(values) - 1):
        if values[i] < middle <= values[i + 1]:
            return i + 0.5 + (middle - values[i]) / (values[i + 1] - values[i])
    raise AssertionError("no edge")


@pytest.mark.parametrize("resampler", ["opencv", "pillow"])
def test_upscaled_panel_edges_stay_in_place(
    resampler: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A hard edge 800 px from the left and 1200 px from the top of a 1600x2400 photo must land
    # at 1000 and 1500 px when it is scaled 1.25x, not half a pixel off (as libvips resize is).
    monkeypatch.setattr(compose, "RESAMPLER", resampler)
    photo = Image.new("L", (1600, 2400), 40)
    photo.paste(220, (800, 0, 1600, 2400))
    photo.paste(40, (0, 1200, 1600, 2400))
    tall = encode(Image.new("RGB", (8, 3000), "white"), "PNG")
    collage = decode(build_collage([encode(photo, "PNG"), tall], quality=100)).convert("L")
    row = [collage.getpixel((x, 700)) for x in range(960, 1040)]
    column = [collage.getpixel((1400, y)) for y in range(1540, 1460, -1)]  # light above, dark below
    assert abs(960 + edge_at(row) - 1000) < 0.1
    assert abs(1540 - edge_at(column) + 1 - 1500) < 0.1
    assert collage.getpixel((1999, 700)) > 200 and collage.getpixel((2000, 700)) > 250


def test_one_photo_is_reencoded_as_it_is() -> None:
    photo = encode(shapes((50, 70), 4), quality=90)
    collage = decode(build_collage([photo]))
    assert collage.size == (50, 70)
    assert JpegImagePlugin.get_sampling(collage) == 0
    assert psnr(collage, decode(photo)) > 40


@pytest.mark.parametrize("quality", [0, 101, -5])
def test_quality_out_of_range_is_refused(quality: int) -> None:
    with pytest.raises(ValueError, match="quality"):
        build_collage([solid((0, 0, 0))], quality=quality)


def test_names_must_match_photos() -> None:
    with pytest.raises(ValueError, match="2 names for 1 photos"):
        build_collage([solid((0, 0, 0))], names=NAMES[:2])


# --- orientation -----------------------------------------------------------------------------

RED, GREEN, GREY = (230, 20, 20), (20, 200, 20), (128, 128, 128)
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


def stored_with_orientation(orientation: int, fmt: str = "JPEG") -> bytes:
    """Return a 48x24 photo, red at its stored top-left and green at its top-right, tagged."""
    image = Image.new("RGB", (48, 24), GREY)
    image.paste(RED, (0, 0, 12, 12))
    image.paste(GREEN, (36, 0, 48, 12))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, fmt, exif=exif.tobytes())


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_and_dropped(orientation: int) -> None:
    data = build_collage([stored_with_orientation(orientation)])
    collage = decode(data)
    assert collage.size == ((48, 24) if orientation <= 4 else (24, 48))
    red_at, green_at = CORNERS[orientation]
    assert near(corner(collage, red_at), RED, 10)
    assert near(corner(collage, green_at), GREEN, 10)
    assert 0x0112 not in collage.getexif()
    assert b"Exif" not in data


def test_layout_uses_the_upright_size() -> None:
    rotated = stored_with_orientation(6)  # stored 48x24, shown 24x48
    collage = decode(build_collage([rotated, solid(RED, (24, 48))]))
    assert collage.size == (48, 48)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "AVIF", "TIFF"])
def test_orientation_is_read_from_other_formats(fmt: str) -> None:
    collage = decode(build_collage([stored_with_orientation(8, fmt)]))
    assert collage.size == (24, 48)
    assert near(corner(collage, "bottom-left"), RED, 12)


def test_corrupt_exif_is_ignored_as_a_browser_does() -> None:
    photo = solid(RED)
    broken = photo[:2] + b"\xff\xe1\x00\x1aExif\x00\x00II*\x00\x08\x00\x00\x00\xff\xff" + bytes(6)
    assert near(centre_pixel(build_collage([broken + photo[2:]])), RED, 6)


# --- colour modes, transparency and ICC profiles -----------------------------------------------


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


# --- limits ----------------------------------------------------------------------------------


def png_header(width: int, height: int) -> bytes:
    """Return a PNG that declares a size but whose pixel data stops short."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(64)))


def test_no_photos() -> None:
    with pytest.raises(NoPhotos):
        build_collage([])


def test_photo_over_the_pixel_limit_is_refused_before_decoding() -> None:
    truncated = GOOD_JPEG[: len(GOOD_JPEG) // 2]  # would fail to decode, were it decoded first
    with pytest.raises(TooLarge) as raised:
        build_collage(
            [truncated, solid(RED), solid(RED, (40, 30))],
            limits=Limits(max_photo_pixels=1000),
            names=NAMES,
        )
    assert raised.value.message == (
        "photo 1 (s3://bucket/a.jpg) is 64 x 64 px (4,096 pixels); "
        "at most 1,000 are allowed per photo"
    )


def test_collage_wider_than_jpeg_allows() -> None:
    photos = [png_header(40_000, 10), png_header(30_000, 10)]
    with pytest.raises(TooLarge) as raised:
        build_collage(photos)
    assert raised.value.message == (
        "the collage would be 70,000 px wide (2 photos scaled to 10 px high); "
        "JPEG allows at most 65,500 px"
    )


def test_collage_taller_than_allowed() -> None:
    with pytest.raises(
        TooLarge, match=r"^photo 2 \(s3://bucket/b.jpg\) is 40 px high; JPEG allows at most 30 px$"
    ):
        build_collage(
            [solid(RED, (10, 20)), solid(RED, (10, 40))],
            limits=Limits(max_side=30),
            names=NAMES[:2],
        )


def test_canvas_over_the_limit() -> None:
    with pytest.raises(TooLarge) as raised:
        build_collage(
            [solid(RED, (30, 20)), solid(RED, (20, 40))], limits=Limits(max_canvas_pixels=1000)
        )
    assert (
        raised.value.message
        == "the collage would be 80 x 40 px (3,200 pixels); at most 1,000 are allowed"
    )


def test_photo_over_our_limit_under_pillows() -> None:
    with pytest.raises(
        TooLarge,
        match=r"^photo 1 is 15,000 x 10,000 px \(150,000,000 pixels\); at most 64,000,000",
    ):
        build_collage([png_header(15_000, 10_000)])


def test_decompression_bomb_is_too_large_not_a_pillow_error() -> None:
    with pytest.raises(
        TooLarge,
        match=r"^photo 1 has 200,000,000 pixels; at most 64,000,000 are allowed per photo$",
    ):
        build_collage([png_header(20_000, 10_000)])


def test_pillows_bomb_warning_never_escapes() -> None:
    # 95 MP: over Pillow's warning threshold (89.5 MP), under ours: filterwarnings=error would tell.
    with pytest.raises(TooLarge, match="10,000 x 9,500 px"):
        build_collage([png_header(10_000, 9_500)], limits=Limits(max_canvas_pixels=1000))


# --- unreadable photos -----------------------------------------------------------------------

UNREADABLE = {
    "zero bytes": (b"", "is not a JPEG, PNG, WEBP, AVIF, GIF, TIFF, BMP image: 0 bytes"),
    "HTML error page": (
        b"<!DOCTYPE html><html><body>404</body></html>",
        "44 bytes starting b'<!DOCTYPE html><html>",
    ),
    "garbage": (
        random.Random(1).randbytes(500),
        "is not a JPEG, PNG, WEBP, AVIF, GIF, TIFF, BMP image: 500 bytes",
    ),
    "truncated JPEG": (
        GOOD_JPEG[: len(GOOD_JPEG) // 2],
        "cannot be decoded: image file is truncated",
    ),
    "JPEG without its end": (GOOD_JPEG[:-2], "cannot be decoded: image file is truncated"),
    "JPEG header only": (GOOD_JPEG[:200], "cannot be"),
    "truncated PNG": (GOOD_PNG[: len(GOOD_PNG) // 2], "cannot be decoded: image file is truncated"),
    "truncated WebP": (GOOD_WEBP[: len(GOOD_WEBP) // 2], "cannot be"),
    "EPS (never handed to Ghostscript)": (
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n",
        "is not a",
    ),
}


@pytest.mark.parametrize("case", UNREADABLE)
def test_unreadable_photo_is_named_in_one_line(case: str) -> None:
    data, reason = UNREADABLE[case]
    with pytest.raises(PhotoUnreadable) as raised:
        build_collage([GOOD_JPEG, data, GOOD_PNG], names=NAMES)
    message = raised.value.message
    assert message.startswith("photo 2 (s3://bucket/b.jpg) ")
    assert reason in message
    assert "\n" not in message
    assert "Traceback" not in message
    assert "BytesIO" not in message
    assert not ImageFile.LOAD_TRUNCATED_IMAGES


def test_unnamed_photos_are_numbered() -> None:
    with pytest.raises(PhotoUnreadable, match=r"^photo 3 is not a "):
        build_collage([GOOD_JPEG, GOOD_JPEG, b"<html>"])


# --- structural checks: hostile files refused from their markers, in milliseconds ----------------


def test_progressive_jpeg_is_accepted() -> None:
    photo = encode(shapes((64, 48), 5), quality=90, progressive=True)
    assert decode(build_collage([photo])).size == (64, 48)


def test_scan_bomb_is_refused_before_decoding() -> None:
    from dev.photos import scan_bomb

    bomb = scan_bomb(3000, 3000, repeats=300)
    started = time.process_time()
    with pytest.raises(TooLarge) as raised:
        build_collage([GOOD_JPEG, bomb], names=NAMES[:2])
    assert time.process_time() - started < 0.1
    assert raised.value.message == (
        "photo 2 (s3://bucket/b.jpg) is a JPEG of 309 scans; at most 100 are allowed"
    )


def test_scans_after_the_end_of_the_image_do_not_count() -> None:
    photo = encode(shapes((64, 48), 5), quality=90, progressive=True)
    assert decode(build_collage([photo + photo * 20], limits=Limits(max_scans=10))).size == (64, 48)


# --- real-world classes (issue 9, item 6) ----------------------------------------------------

XMP_TURNED = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF'
    b' xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description'
    b' xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
)


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "AVIF", "PNG"])
def test_orientation_only_in_xmp_is_ignored_in_every_format(fmt: str) -> None:
    data = encode(Image.new("RGB", (48, 24), RED), fmt, xmp=XMP_TURNED)
    assert decode(build_collage([data])).size == (48, 24)


def test_orientation_in_a_png_text_chunk_is_ignored() -> None:
    from PIL import PngImagePlugin

    exif = Image.Exif()
    exif[0x0112] = 6
    raw = exif.tobytes()
    text = PngImagePlugin.PngInfo()
    text.add_text("Raw profile type exif", f"\nexif\n{len(raw):8d}\n{raw.hex()}\n", zip=True)
    data = encode(Image.new("RGB", (48, 24), RED), "PNG", pnginfo=text)
    assert decode(build_collage([data])).size == (48, 24)


def test_sixteen_bit_grey_with_a_transparent_value_is_white_there() -> None:
    image = Image.new("I;16", (16, 16), 30000)
    image.paste(Image.new("I;16", (8, 16), 257 * 40), (0, 0))
    collage = decode(build_collage([encode(image, "PNG", transparency=30000)]))
    assert near(collage.getpixel((12, 8)), (255, 255, 255), 2)
    assert near(collage.getpixel((3, 8)), (40, 40, 40), 2)


def test_a_recognised_photo_that_cannot_be_opened_says_what_is_wrong() -> None:
    broken = bytearray(GOOD_JPEG)
    frame = broken.find(b"\xff\xc0")
    broken[frame + 5 : frame + 9] = bytes(4)  # a frame of 0 x 0 pixels
    with pytest.raises(PhotoUnreadable) as raised:
        build_collage([bytes(broken)], names=NAMES[:1])
    assert raised.value.message.startswith("photo 1 (s3://bucket/a.jpg) is a JPEG that cannot be")


# --- AVIF's clean aperture (clap), in a container written box by box ---------------------------


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


# --- decoding the next photo while one is pasted ------------------------------------------------


def _events(photos: list[bytes], **options: object) -> list[tuple[str, int]]:
    events: list[tuple[str, int]] = []

    def on_photo(index: int, label: str) -> None:
        events.append(("told", index))

    def on_decode(index: int, done: bool) -> None:
        events.append(("decoded" if done else "decoding", index))

    collages.build(photos, on_photo=on_photo, on_decode=on_decode, **options)
    return events


def test_the_next_photo_decodes_while_the_first_still_is() -> None:
    from dev.photos import scan_bomb

    slow = scan_bomb(300, 300, repeats=1500, seed=3)  # a quarter of a second or so to decode
    events = _events([slow, GOOD_JPEG, GOOD_PNG], limits=Limits(max_scans=10**6))
    assert events[:3] == [("told", 1), ("told", 2), ("told", 3)]  # the headers, in order
    started = [index for kind, index in events if kind == "decoding"]
    assert started == [1, 2, 3]
    assert events.index(("decoding", 2)) < events.index(("decoded", 1))
    # Never more than two at once: photo 3 starts only once photo 1 is done.
    assert events.index(("decoded", 1)) < events.index(("decoding", 3))
    told = [index for kind, index in events if kind == "told"]
    assert told == [1, 2, 3, 1, 2, 3]


@pytest.mark.parametrize("ahead_pixels", [0, 64 * 64 * 2 - 1])
def test_photos_decode_one_at_a_time_past_the_pair_limit(ahead_pixels: int) -> None:
    events = _events([GOOD_JPEG, GOOD_PNG, GOOD_WEBP], ahead_pixels=ahead_pixels)
    decoding = [e for e in events if e[0] != "told"]
    assert decoding == [(kind, i) for i in (1, 2, 3) for kind in ("decoding", "decoded")]


def test_a_failing_photo_is_reported_in_order_even_if_the_next_one_failed_first() -> None:
    from dev.photos import scan_bomb

    slow_broken = scan_bomb(300, 300, repeats=1500, seed=3)[:-40_000]  # truncated: fails late
    broken = GOOD_JPEG[: len(GOOD_JPEG) // 2]  # fails at once, while photo 1 still decodes
    with pytest.raises(PhotoUnreadable, match=r"^photo 1 cannot be decoded"):
        build_collage([slow_broken, broken], limits=Limits(max_scans=10**6))


# --- a size limit in bytes ------------------------------------------------------------------------


def _textured(width: int, height: int, seed: int) -> bytes:
    """Return a photo whose JPEG size falls steadily with quality (grain at every scale)."""
    return encode(photos_detailed(random.Random(seed), width, height), quality=95)


def photos_detailed(rnd: random.Random, width: int, height: int) -> Image.Image:
    from dev.photos import detailed

    return detailed(rnd, width, height)


TEXTURED = [_textured(400, 600, 1), _textured(300, 500, 2)]


def _sizes_by_quality(data: list[bytes]) -> dict[int, int]:
    return {q: len(build_collage(data, quality=q)) for q in range(40, 96)}


SIZES = _sizes_by_quality(TEXTURED)


@pytest.mark.parametrize("fraction", [0.97, 0.8, 0.6, 0.45, 0.3])
def test_size_limit_gives_the_highest_quality_that_fits(fraction: float) -> None:
    max_bytes = int(SIZES[95] * fraction)
    built = collages.build(TEXTURED, max_bytes=max_bytes, min_quality=40)
    assert built.quality == max(q for q, size in SIZES.items() if size <= max_bytes)
    assert len(built.jpeg) <= max_bytes
    assert built.jpeg == build_collage(TEXTURED, quality=built.quality)  # same pixels, same size
    assert decode(built.jpeg).size == decode(build_collage(TEXTURED)).size


def test_size_limit_already_met_changes_nothing() -> None:
    built = collages.build(TEXTURED, max_bytes=SIZES[95])
    assert (built.quality, built.jpeg) == (95, build_collage(TEXTURED))


def test_size_limit_past_the_floor_names_the_size_reached() -> None:
    with pytest.raises(TooLarge) as raised:
        build_collage(TEXTURED, max_bytes=SIZES[70] - 1, min_quality=70)
    width, height = decode(build_collage(TEXTURED)).size
    assert raised.value.message == (
        f"the collage ({width:,} x {height:,} px) is {SIZES[70]:,} bytes even at JPEG quality 70,"
        f" the lowest allowed; at most {SIZES[70] - 1:,} bytes are allowed"
    )


def test_size_limit_search_costs_few_full_encodes(monkeypatch: pytest.MonkeyPatch) -> None:
    from collage.imaging import encode as encoding

    heights: list[int] = []
    original = encoding.encode

    def counted(image: Image.Image, **options: object) -> bytes:
        heights.append(image.height)
        return original(image, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(encoding, "encode", counted)
    tall = [_textured(300, 1600, 3), _textured(400, 1600, 4)]  # tall enough to be sampled
    whole = build_collage(tall)
    full, max_bytes = decode(whole).height, len(whole) * 3 // 5
    heights.clear()
    collages.build(tall, max_bytes=max_bytes)
    full_encodes = heights.count(full)
    assert full_encodes <= 3, heights
    assert len(heights) - full_encodes <= 8  # the sampled ones: an eighth of the rows each


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_bytes": 0}, "max_bytes must be at least 1"),
        ({"max_bytes": 1000, "min_quality": 96}, "min_quality must be between 1 and quality 95"),
        ({"max_bytes": 1000, "min_quality": 0}, "min_quality must be between 1 and quality 95"),
    ],
)
def test_size_limit_arguments_are_checked(options: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_collage([GOOD_JPEG], **options)
