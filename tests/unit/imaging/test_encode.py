"""imaging.encode: quality 95, 4:4:4, tagged sRGB; a size limit met by quality, never by pixels."""

from __future__ import annotations

import io
import random

import pytest
from PIL import Image, ImageCms, JpegImagePlugin

from collage.errors import TooLarge
from dev import collages
from dev.collages import build_collage
from tests.support.pictures import GOOD_JPEG, decode, encode, solid


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


@pytest.mark.parametrize("quality", [0, 101, -5])
def test_quality_out_of_range_is_refused(quality: int) -> None:
    with pytest.raises(ValueError, match="quality"):
        build_collage([solid((0, 0, 0))], quality=quality)


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
