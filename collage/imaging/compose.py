"""Scale every photo of a SKU to the tallest one and join them left to right into one JPEG."""

from __future__ import annotations

import functools
import itertools
import struct
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageCms

from collage.errors import CollageError, NoPhotos, TooLarge
from collage.imaging.canvas import Canvas, decode_into, decodes_in_place, rgbx_pixels, scratch
from collage.imaging.decode import Limits, Photo, decode, open_photo
from collage.imaging.encode import Encoded, JpegTarget, fit
from collage.imaging.webp import opencv

# Upscaling from 0.6x and 0.8x, BICUBIC comes within 0.4-0.7 dB of LANCZOS for 27 % less CPU;
# BILINEAR saves a third more and loses 0.9-1.6 dB (bin/bench-imaging --filters, docs/imaging.md).
# The filter of the "pillow" resampler; the "opencv" one is bicubic too (a = -0.75).
RESAMPLING = Image.Resampling.BICUBIC
# Who scales a photo up: OpenCV's SIMD bicubic costs about a sixth of Pillow's plain C one and is
# 0.2 dB closer to the original (docs/imaging.md). "pillow" is the path before it, for comparison.
RESAMPLER = "opencv"
# The next photo is decoded while the current one is scaled and pasted (the large benchmark SKU
# builds in N % less time with a core free) only when the two have at most this many pixels
# together: every accepted job then stays below the worst case one photo at a time already
# has (a 64 MP lossless WebP, 1.6 GiB), which this never pairs (docs/imaging.md).
AHEAD_PIXELS = 24_000_000


@dataclass(frozen=True)
class Layout:
    """The width of every scaled photo, left to right, and the height they share."""

    widths: tuple[int, ...]
    height: int

    @property
    def width(self) -> int:
        """Return the collage's width."""
        return sum(self.widths)


def plan_layout(sizes: Sequence[tuple[int, int]]) -> Layout:
    """Scale every (width, height) to the tallest height, keeping its aspect, never below 1 px."""
    height = max(h for _, h in sizes)
    # Integer arithmetic rounds half up exactly, where floats would wobble on huge sizes.
    return Layout(tuple(max(1, (2 * w * height + h) // (2 * h)) for w, h in sizes), height)


def build_collage(photos: Sequence[bytes], *, target: JpegTarget, limits: Limits) -> bytes:
    """Scale every photo to the tallest one and join them left to right into one sRGB JPEG."""
    return build(photos, target=target, limits=limits).jpeg


def build(
    photos: Sequence[bytes],
    *,
    target: JpegTarget,
    limits: Limits,
    names: Sequence[str] | None = None,
    on_photo: Callable[[int, str], object] | None = None,
    on_decode: Callable[[int, bool], object] | None = None,
    ahead_pixels: int = AHEAD_PIXELS,
) -> Encoded:
    """Build the collage; return the JPEG and the quality it was encoded at.

    `on_photo(index, label)` is told before each photo is read and again before it is decoded;
    `on_decode(index, done)` as its decoding starts and (from another thread) ends, so that
    whoever watches a build knows which photos it was decoding when it died. The next photo is
    decoded while the current one is scaled and pasted when the two have at most
    `ahead_pixels` together (0: never). A JPEG larger than the target's `max_bytes` is encoded
    again at the highest quality down to its floor that fits (never at a lower resolution), or
    TooLarge names the size reached.
    """
    check_names(photos, names)
    if not photos:
        raise NoPhotos()
    labels = [
        f"photo {i} ({names[i - 1]})" if names else f"photo {i}" for i in range(1, len(photos) + 1)
    ]
    told = on_photo or (lambda index, label: None)
    opened: list[Photo] = []
    for index, (data, label) in enumerate(zip(photos, labels, strict=True), start=1):
        told(index, label)
        opened.append(open_photo(data, label, limits))
    layout = plan_layout([photo.size for photo in opened])
    _check_layout(layout, opened, limits)
    srgb = srgb_profile()
    if len(opened) == 1:
        told(1, opened[0].label)
        if on_decode is not None:
            on_decode(1, False)
        collage = decode(opened[0], srgb)
        if on_decode is not None:
            on_decode(1, True)
    else:
        collage = _join(opened, layout, srgb, told, on_decode, ahead_pixels)
    return fit(collage, target, icc=srgb_icc())


@functools.cache
def srgb_profile() -> ImageCms.ImageCmsProfile:
    """The sRGB profile photos are converted to, made once."""
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


@functools.cache
def srgb_icc() -> bytes:
    """The ICC profile every collage carries, the same bytes in every process.

    LittleCMS stamps the time it made the profile into its header: two builds of the same
    photos a second apart would differ. The stamp is fixed, and the optional profile ID,
    which would hash it, left unset.
    """
    data = bytearray(srgb_profile().tobytes())
    data[24:36] = struct.pack(">6H", 2024, 1, 1, 0, 0, 0)  # the header's dateTimeNumber
    data[84:100] = bytes(16)  # the profile ID: zero says "not computed"
    return bytes(data)


class PhotoOutOfMemory(MemoryError):
    """Decoding or scaling one photo ran out of memory; `label` says which."""

    def __init__(self, label: str) -> None:
        super().__init__(label)
        self.label = label


def _join(
    opened: list[Photo],
    layout: Layout,
    srgb: ImageCms.ImageCmsProfile,
    told: Callable[[int, str], object],
    on_decode: Callable[[int, bool], object] | None,
    ahead_pixels: int,
) -> Image.Image:
    """Decode, scale and place each photo in turn, the next one decoding while one is placed.

    Two photos at most are in memory beside the canvas (one only where they are large), and
    each is freed as soon as it is placed: Pillow's WebP decoder keeps its own copy of the
    canvas until the image object itself is freed (256 MiB at 64 MP). A JPEG that needs no
    scaling is decoded into the canvas itself, one that does into a buffer OpenCV scales from.
    """
    canvas = Canvas(layout.width, layout.height)
    # Two threads: the photo being placed may still be decoding when the next one starts.
    # Pillow and OpenCV let go of the GIL while they decode, convert, scale and paste.
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="collage-decode")
    pending: dict[int, Future[Panel]] = {}
    pixels = [photo.image.size[0] * photo.image.size[1] for photo in opened]
    labels = [photo.label for photo in opened]
    lefts = list(itertools.accumulate(layout.widths, initial=0))
    unplaced: list[Photo | None] = [*opened]  # each dropped once placed
    opened.clear()

    def start(i: int) -> None:
        photo = unplaced[i]
        assert photo is not None
        told(i + 1, photo.label)
        if on_decode is not None:
            on_decode(i + 1, False)
        pending[i] = pool.submit(_decoded_panel, photo, srgb, canvas, lefts[i], layout.widths[i])
        if on_decode is not None:
            pending[i].add_done_callback(functools.partial(_decoded, on_decode, i + 1))

    try:
        for i, width in enumerate(layout.widths):
            if i not in pending:
                start(i)
            if i + 1 < len(pixels) and pixels[i] + pixels[i + 1] <= ahead_pixels:
                start(i + 1)
            photo, unplaced[i] = unplaced[i], None
            try:
                _place(pending.pop(i).result(), canvas, lefts[i], width)
            except MemoryError as exc:
                raise PhotoOutOfMemory(labels[i]) from exc
            except Exception as exc:  # OpenCV says "Insufficient memory" in its own type
                if "memory" in str(exc).lower() and not isinstance(exc, CollageError):
                    raise PhotoOutOfMemory(labels[i]) from exc
                raise
            assert photo is not None
            photo.image.close()
            del photo
    except BaseException:
        # Do not wait for the next photo (it may be a slow one) to say what went wrong.
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return canvas.image


# A photo decoded: an image to paste or scale, pixels to scale, or None when already in place.
Panel = Image.Image | Any | None


def _decoded_panel(
    photo: Photo, srgb: ImageCms.ImageCmsProfile, canvas: Canvas, x: int, width: int
) -> Panel:
    """Decode a photo, into the canvas itself where it needs no scaling and the format allows."""
    if not decodes_in_place(photo):
        return decode(photo, srgb)
    if photo.size == (width, canvas.height):
        decode_into(photo, srgb, canvas.column(x, width))
        return None
    if RESAMPLER != "opencv":
        return decode(photo, srgb)
    pixels, target = scratch(*photo.size)
    decode_into(photo, srgb, target)
    return pixels


def _place(panel: Panel, canvas: Canvas, x: int, width: int) -> None:
    """Put a decoded photo into the canvas at x, scaled to its height if it must be."""
    if panel is None:
        return
    if not isinstance(panel, Image.Image):
        canvas.scale_into(panel, x, width)
        return
    with panel:
        if panel.size == (width, canvas.height):
            canvas.paste(panel, x)
        elif RESAMPLER == "opencv":
            canvas.scale_into(rgbx_pixels(panel), x, width)
        else:
            canvas.paste(panel.resize((width, canvas.height), RESAMPLING), x)


def _decoded(on_decode: Callable[[int, bool], object], index: int, _: Future[Image.Image]) -> None:
    on_decode(index, True)


def check_names(photos: Sequence[bytes], names: Sequence[str] | None) -> None:
    """Raise ValueError when the names do not match the photos (a caller's bug)."""
    if names is not None and len(names) != len(photos):
        raise ValueError(f"{len(names)} names for {len(photos)} photos")


def load_resampler() -> None:
    """Import the resampler and pay its first-call costs now, before any job is timed."""
    if RESAMPLER == "opencv":
        cv2, np = opencv()
        cv2.resize(np.zeros((4, 4, 4), np.uint8), (8, 8), interpolation=cv2.INTER_CUBIC)


def scale(panel: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Scale a decoded 8-bit RGB panel to `size`, and close it.

    With OpenCV the result is RGBX (Pillow's own 4-byte layout) over numpy's memory.
    """
    if RESAMPLER != "opencv":
        return panel.resize(size, RESAMPLING)
    cv2, _ = opencv()
    source = rgbx_pixels(panel)
    panel.close()
    scaled = cv2.resize(source, size, interpolation=cv2.INTER_CUBIC)
    del source
    return Image.frombuffer("RGBX", size, scaled, "raw", "RGBX", 0, 1)  # shares its memory


def _check_layout(layout: Layout, opened: Sequence[Photo], limits: Limits) -> None:
    """Refuse a collage JPEG cannot hold or a worker cannot afford, naming the SKU's numbers."""
    if layout.width > limits.max_side:
        raise TooLarge(
            f"the collage would be {layout.width:,} px wide ({len(opened)} photos scaled to "
            f"{layout.height:,} px high); JPEG allows at most {limits.max_side:,} px"
        )
    if layout.height > limits.max_side:
        tallest = max(opened, key=lambda photo: photo.size[1])
        raise TooLarge(
            f"{tallest.label} is {layout.height:,} px high; "
            f"JPEG allows at most {limits.max_side:,} px"
        )
    if layout.width * layout.height > limits.max_canvas_pixels:
        raise TooLarge(
            f"the collage would be {layout.width:,} x {layout.height:,} px "
            f"({layout.width * layout.height:,} pixels); "
            f"at most {limits.max_canvas_pixels:,} are allowed"
        )
