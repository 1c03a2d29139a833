"""imaging.decode: photos upright as a browser shows them, refused from their headers if hostile."""

from __future__ import annotations

import io
import random
import time

import pytest
from PIL import Image, ImageFile

from collage.errors import PhotoUnreadable, TooLarge
from collage.imaging import Limits, open_photo
from collage.imaging import decode as decode_photo
from dev.collages import build_collage
from dev.photos import shapes
from tests.support.pictures import (
    CORNERS,
    GOOD_JPEG,
    GOOD_PNG,
    GOOD_WEBP,
    GREEN,
    GREY,
    NAMES,
    RED,
    centre_pixel,
    corner,
    decode,
    encode,
    near,
    png_header,
    solid,
)


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


def test_still_webps_decode_through_opencv_to_pillows_own_pixels() -> None:
    import sys

    import numpy as np
    from PIL import ImageCms

    decoding = sys.modules["collage.imaging.decode"]
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    base = Image.merge(
        "RGB",
        (
            Image.linear_gradient("L").resize((96, 64)),
            Image.effect_noise((96, 64), 40),
            Image.linear_gradient("L").rotate(90).resize((96, 64)),
        ),
    )
    with_alpha = base.convert("RGBA")
    with_alpha.putalpha(Image.linear_gradient("L").resize((96, 64)))
    for image, options in [
        (base, {"quality": 80}),
        (base, {"lossless": True}),
        (with_alpha, {"quality": 80}),
        (with_alpha, {"lossless": True}),
    ]:
        out = io.BytesIO()
        image.save(out, "WEBP", **options)
        data = out.getvalue()
        photo = open_photo(data, "photo 1", Limits())
        assert photo.data == data
        ours = decode_photo(photo, srgb).convert("RGB")
        with Image.open(io.BytesIO(data)) as pillows:
            pillows.load()
            expected = decoding._to_srgb(pillows, srgb).convert("RGB")
        assert np.array_equal(np.asarray(ours), np.asarray(expected)), options
