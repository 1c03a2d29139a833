"""imaging.canvas: photos decoded and scaled in place give the pixels the copying path gives."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from collage import imaging
from collage.errors import PhotoUnreadable
from collage.imaging import canvas, compose
from collage.imaging.decode import Photo
from dev.photos import noisy_jpeg
from tests.support.icc import ADOBE_RGB
from tests.support.pictures import encode

SRGB = compose.srgb_profile()


def opened(data: bytes) -> Photo:
    return imaging.open_photo(data, "photo 1", imaging.Limits())


def jpeg_with(**options: object) -> bytes:
    base = Image.open(io.BytesIO(noisy_jpeg(120, 90, seed=5))).convert("RGB")
    return encode(base, "JPEG", **options)


@pytest.mark.parametrize("options", [{}, {"icc_profile": ADOBE_RGB}, {"progressive": True}])
def test_a_jpeg_decoded_into_a_column_is_what_decode_gives(options: dict[str, object]) -> None:
    data = jpeg_with(**options)
    target = canvas.Canvas(120 + 50 + 30, 90)
    target.pixels[:] = 7  # whatever the memory held before
    photo = opened(data)
    assert canvas.decodes_in_place(photo)
    canvas.decode_into(photo, SRGB, target.column(50, 120))
    expected = np.asarray(imaging.decode(opened(data), SRGB).convert("RGB"))
    assert np.array_equal(target.pixels[:, 50:170, :3], expected)
    # Nothing beside the column was written.
    assert (target.pixels[:, :50] == 7).all() and (target.pixels[:, 170:] == 7).all()


def test_photos_that_need_a_turn_or_a_conversion_take_the_copying_path() -> None:
    base = Image.open(io.BytesIO(noisy_jpeg(40, 30, seed=1)))
    turned = Image.Exif()
    turned[0x0112] = 6
    for data in (
        encode(base, "JPEG", exif=turned),
        encode(base.convert("CMYK"), "JPEG"),
        encode(base.convert("L"), "JPEG"),
        encode(base, "PNG"),
    ):
        assert not canvas.decodes_in_place(opened(data))


def test_a_scaled_photo_fills_its_column_and_only_it() -> None:
    source = np.asarray(Image.open(io.BytesIO(noisy_jpeg(80, 60, seed=2))).convert("RGBA"))
    target = canvas.Canvas(30 + 160 + 20, 120)
    target.pixels[:] = 7
    target.scale_into(np.ascontiguousarray(source), 30, 160)
    separate = np.asarray(compose.scale(Image.fromarray(source).convert("RGB"), (160, 120)))
    assert np.array_equal(target.pixels[:, 30:190, :3], separate[..., :3])
    assert (target.pixels[:, :30] == 7).all() and (target.pixels[:, 190:] == 7).all()


def test_a_corrupt_jpeg_decoded_in_place_names_the_photo() -> None:
    data = jpeg_with()
    target = canvas.Canvas(120, 90)
    photo = opened(data[: len(data) // 2])
    with pytest.raises(PhotoUnreadable, match=r"^photo 1 cannot be decoded"):
        canvas.decode_into(photo, SRGB, target.column(0, 120))
