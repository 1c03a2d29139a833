"""imaging.compose: the layout, each panel scaled to the tallest, joined in order; its limits."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, JpegImagePlugin

from collage import imaging
from collage.errors import NoPhotos, PhotoUnreadable, TooLarge
from collage.imaging import RESAMPLING, Limits, compose, plan_layout
from dev import collages
from dev.collages import build_collage
from dev.photos import shapes
from tests.support.pictures import (
    GOOD_JPEG,
    GOOD_PNG,
    GOOD_WEBP,
    NAMES,
    RED,
    decode,
    encode,
    near,
    png_header,
    psnr,
    solid,
)


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


def test_names_must_match_photos() -> None:
    with pytest.raises(ValueError, match="2 names for 1 photos"):
        build_collage([solid((0, 0, 0))], names=NAMES[:2])


def test_no_photos() -> None:
    with pytest.raises(NoPhotos):
        build_collage([])


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
