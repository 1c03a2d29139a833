"""Scale every photo of a SKU to the tallest one and join them left to right into one JPEG."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PIL import Image, ImageCms

from collage.decoding import FORMATS, Limits, Photo, decode, open_photo, opencv, webp_size
from collage.errors import NoPhotos, TooLarge

__all__ = ["FORMATS", "Layout", "Limits", "build_collage", "plan_layout", "scale", "webp_size"]

# Upscaling from 0.6x and 0.8x, BICUBIC comes within 0.4-0.7 dB of LANCZOS for 27 % less CPU;
# BILINEAR saves a third more and loses 0.9-1.6 dB (bin/bench-imaging --filters, docs/imaging.md).
# The filter of the "pillow" resampler; the "opencv" one is bicubic too (a = -0.75).
RESAMPLING = Image.Resampling.BICUBIC
# Who scales a photo up: OpenCV's SIMD bicubic costs about a sixth of Pillow's plain C one and is
# 0.2 dB closer to the original (docs/imaging.md). "pillow" is the path before it, for comparison.
RESAMPLER = "opencv"


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


def build_collage(
    photos: Sequence[bytes],
    *,
    quality: int = 95,
    limits: Limits | None = None,
    names: Sequence[str] | None = None,
    on_photo: Callable[[int, str], object] | None = None,
) -> bytes:
    """Scale every photo to the tallest one and join them left to right into one sRGB JPEG.

    `on_photo(index, label)` is told before each photo is read and again before it is decoded,
    so that whoever watches a build knows which photo it was on when it died.
    """
    check_arguments(photos, quality=quality, names=names)
    limits = limits or Limits()
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
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    if len(opened) == 1:
        told(1, opened[0].label)
        collage = decode(opened[0], srgb)
    else:
        # One photo decoded at a time: peak memory is the canvas plus one photo and its copy.
        collage = Image.new("RGB", (layout.width, layout.height))
        x = 0
        # Drop every reference to a photo once it is pasted: Pillow's WebP decoder keeps its own
        # copy of the canvas until the image object itself is freed (256 MiB at 64 MP).
        pending: list[Photo | None] = [*opened]
        del opened
        for index, width in enumerate(layout.widths, start=1):
            photo, pending[index - 1] = pending[index - 1], None
            assert photo is not None
            told(index, photo.label)
            panel = decode(photo, srgb)
            if panel.size != (width, layout.height):
                panel = scale(panel, (width, layout.height))
            if panel.mode == "RGBX":
                # Pillow stores RGB as 4 bytes a pixel too: the core paste copies the scaled
                # pixels as they are, where Image.paste would first convert a copy to RGB.
                collage.im.paste(panel.im, (x, 0, x + width, layout.height))
            else:
                collage.paste(panel, (x, 0))
            panel.close()
            photo.image.close()
            del photo, panel
            x += width
    out = io.BytesIO()
    # Baseline, not optimized: at 60 MP progressive takes 5.9x the encoding CPU and 340 MiB more
    # memory for files 8 % smaller, optimize 2.9x and 340 MiB for 4 % (docs/imaging.md).
    # comment=b"" keeps a source JPEG's comment out of a single-photo collage.
    collage.save(
        out, "JPEG", quality=quality, subsampling=0, icc_profile=srgb.tobytes(), comment=b""
    )
    return out.getvalue()


def check_arguments(photos: Sequence[bytes], *, quality: int, names: Sequence[str] | None) -> None:
    """Raise ValueError for a quality or names build_collage cannot take (a caller's bug)."""
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be between 1 and 100, not {quality!r}")
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
    cv2, np = opencv()
    width, height = panel.size
    # RGBX is Pillow's own layout, and OpenCV's SIMD is fastest on 4 channels (1.5 against
    # 1.8 ms per output megapixel for 3); the padding byte is ignored by the paste.
    source = np.frombuffer(panel.tobytes("raw", "RGBX"), np.uint8).reshape(height, width, 4)
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
