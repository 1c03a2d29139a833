"""Scale every photo of a SKU to the tallest one and join them left to right into one JPEG."""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import ExifTags, Image, ImageCms, ImageFile

from collage.errors import NoPhotos, PhotoUnreadable, TooLarge, one_line

# Upscaling from 0.6x and 0.8x, BICUBIC comes within 0.4-0.7 dB of LANCZOS for 27 % less CPU;
# BILINEAR saves a third more and loses 0.9-1.6 dB (bin/bench-imaging --filters, docs/imaging.md).
RESAMPLING = Image.Resampling.BICUBIC

# What scraped product photos come as; EPS and the rare plugins are left out on purpose (EPS
# runs Ghostscript on the bytes).
FORMATS = ("JPEG", "PNG", "WEBP", "AVIF", "GIF", "TIFF", "BMP")

_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_PROFILE_SPACE = {"L": "GRAY", "RGB": "RGB", "CMYK": "CMYK"}
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


@dataclass(frozen=True)
class Limits:
    """Refuse a SKU, from its headers, before it can exhaust a worker or the JPEG format."""

    # Decompression bombs; checked before Pillow decodes a byte of pixels. 64 MP keeps every
    # camera a studio uses (61 MP at most) and bounds a photo's copies (decode, colour, turn).
    max_photo_pixels: int = 64_000_000
    # Pillow keeps RGB at 4 bytes a pixel: 150 MP is a 0.6 GB canvas. Measured worst cases at
    # the old 250 MP / 100 MP limits peaked at 1.87 GB (a small photo upscaled to most of the
    # canvas) and 1.66 GB (a 100 MP CMYK photo turned by EXIF): too close to 4 GB for two
    # jobs. These limits keep one job near 1.1 GB, two well inside a 4 GB worker
    # (tests/load/test_memory.py).
    max_canvas_pixels: int = 150_000_000
    # JPEG cannot encode a side longer than 65,535 px; libjpeg refuses more than 65,500.
    max_side: int = 65_500


@dataclass(frozen=True)
class Layout:
    """The width of every scaled photo, left to right, and the height they share."""

    widths: tuple[int, ...]
    height: int

    @property
    def width(self) -> int:
        """Return the collage's width."""
        return sum(self.widths)


@dataclass(frozen=True)
class _Photo:
    """A photo whose header has been read and whose pixels are not decoded yet."""

    image: ImageFile.ImageFile
    label: str
    orientation: int

    @property
    def size(self) -> tuple[int, int]:
        """Return the size as a browser shows it, after the EXIF orientation."""
        width, height = self.image.size
        return (height, width) if self.orientation >= 5 else (width, height)


def plan_layout(sizes: Sequence[tuple[int, int]]) -> Layout:
    """Scale every (width, height) to the tallest height, keeping its aspect, never below 1 px."""
    height = max(h for _, h in sizes)
    # Integer arithmetic rounds half up exactly, where floats would wobble on huge sizes.
    return Layout(tuple(max(1, (2 * w * height + h) // (2 * h)) for w, h in sizes), height)


def build_collage(
    photos: Sequence[bytes],
    *,
    quality: int = 95,
    limits: Limits = Limits(),  # frozen: sharing the default is safe
    names: Sequence[str] | None = None,
) -> bytes:
    """Scale every photo to the tallest one and join them left to right into one sRGB JPEG."""
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be between 1 and 100, not {quality!r}")
    if names is not None and len(names) != len(photos):
        raise ValueError(f"{len(names)} names for {len(photos)} photos")
    if not photos:
        raise NoPhotos()
    opened = [
        _open(data, f"photo {i} ({names[i - 1]})" if names else f"photo {i}", limits)
        for i, data in enumerate(photos, start=1)
    ]
    layout = plan_layout([photo.size for photo in opened])
    _check_layout(layout, opened, limits)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    if len(opened) == 1:
        collage = _decode(opened[0], srgb)
    else:
        # One photo decoded at a time: peak memory is the canvas plus one photo and its copy.
        collage = Image.new("RGB", (layout.width, layout.height))
        x = 0
        for photo, width in zip(opened, layout.widths, strict=True):
            panel = _decode(photo, srgb)
            if panel.size != (width, layout.height):
                panel = panel.resize((width, layout.height), RESAMPLING)
            collage.paste(panel, (x, 0))
            photo.image.close()  # opened still refers to it: free the pixels now
            x += width
    out = io.BytesIO()
    # Baseline, not optimized: at 60 MP progressive takes 5.9x the encoding CPU and 340 MiB more
    # memory for files 8 % smaller, optimize 2.9x and 340 MiB for 4 % (docs/imaging.md).
    # comment=b"" keeps a source JPEG's comment out of a single-photo collage.
    collage.save(
        out, "JPEG", quality=quality, subsampling=0, icc_profile=srgb.tobytes(), comment=b""
    )
    return out.getvalue()


def _open(data: bytes, label: str, limits: Limits) -> _Photo:
    """Read a photo's header and orientation, refusing it before its pixels are decoded."""
    try:
        with warnings.catch_warnings():
            # Our own limits replace Pillow's decompression-bomb warning, and a browser shows a
            # photo whose metadata Pillow warns about. catch_warnings is process-wide before
            # Python 3.14: a race between threads can at worst leave these Pillow-only filters.
            warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
            warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
            image = Image.open(io.BytesIO(data), formats=FORMATS)
            orientation = _orientation(image)
    except Image.DecompressionBombError as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = f"{int(found[1]):,}" if found else "too many"
        allowed = min(limits.max_photo_pixels, 2 * (Image.MAX_IMAGE_PIXELS or 0))
        raise TooLarge(
            f"{label} has {pixels} pixels; at most {allowed:,} are allowed per photo"
        ) from exc
    except Image.UnidentifiedImageError:
        raise PhotoUnreadable(
            f"{label} is not a {', '.join(FORMATS)} image: {len(data):,} bytes"
            + (f" starting {data[:24]!r}" if data else "")
        ) from None
    except Exception as exc:  # Pillow raises many kinds on malformed headers
        raise PhotoUnreadable(f"{label} cannot be read: {one_line(exc)}") from exc
    photo = _Photo(image, label, orientation)
    width, height = photo.size
    if width < 1 or height < 1:
        raise PhotoUnreadable(f"{label} has no pixels ({width} x {height})")
    if width * height > limits.max_photo_pixels:
        raise TooLarge(
            f"{label} is {width:,} x {height:,} px ({width * height:,} pixels); "
            f"at most {limits.max_photo_pixels:,} are allowed per photo"
        )
    return photo


def _orientation(image: ImageFile.ImageFile) -> int:
    """Return the EXIF orientation 1-8, or 1 where the header has none a browser would use."""
    # Pillow turns a TIFF upright itself, in .size from the header on (Pillow 11) and in pixels.
    # A PNG's getexif() decodes the whole image to look for an eXIf chunk after the pixels.
    if image.format == "TIFF" or (image.format == "PNG" and "exif" not in image.info):
        return 1
    try:
        value = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # a browser ignores EXIF it cannot parse
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _check_layout(layout: Layout, opened: Sequence[_Photo], limits: Limits) -> None:
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


def _decode(photo: _Photo, srgb: ImageCms.ImageCmsProfile) -> Image.Image:
    """Decode a photo into 8-bit sRGB, upright and flattened on white, as a browser shows it."""
    try:
        photo.image.load()
        image = _to_srgb(photo.image, srgb)
    except MemoryError:
        raise
    except Exception as exc:  # truncated or corrupt data; Pillow raises many kinds
        raise PhotoUnreadable(f"{photo.label} cannot be decoded: {one_line(exc)}") from exc
    if image is not photo.image:
        photo.image.close()
    if (transpose := _TRANSPOSE.get(photo.orientation)) is not None:
        image = image.transpose(transpose)
    return image


def _to_srgb(image: Image.Image, srgb: ImageCms.ImageCmsProfile) -> Image.Image:
    """Convert any mode to 8-bit sRGB, with transparency composited on white."""
    if image.mode == "PA" or (image.mode in ("P", "L", "RGB") and "transparency" in image.info):
        image = image.convert("LA" if image.mode == "L" else "RGBA")
    alpha = None
    if image.mode in ("LA", "RGBA"):
        alpha = image.getchannel("A")
        image = image.convert(image.mode[:-1])
    if image.mode in _SIXTEEN_BIT:
        # Scale 0-65535 to 0-255, rounded (convert("L") would clip at 255); "I" is taken to hold
        # 16-bit values too, as Pillow gives for 16-bit PNGs and TIFFs.
        if image.mode not in ("I;16", "I"):
            image = image.convert("I")  # point() takes no other byte order
        image = image.point(lambda v: v / 257 + 0.5).convert("L")
    elif image.mode not in _PROFILE_SPACE:
        image = image.convert("RGB")  # 1, P, YCbCr, RGBX...: no profile applies to these
    transform = _srgb_transform(image, srgb)
    if transform is not None and image.mode == "RGB":
        ImageCms.applyTransform(image, transform, inPlace=True)
    elif transform is not None:
        image = ImageCms.applyTransform(image, transform)
    elif image.mode != "RGB":
        image = image.convert("RGB")  # CMYK without a profile: ink multiplied, as browsers do
    if alpha is None:
        return image
    white = Image.new("RGB", image.size, "white")
    white.paste(image, mask=alpha)
    return white


def _srgb_transform(
    image: Image.Image, srgb: ImageCms.ImageCmsProfile
) -> ImageCms.ImageCmsTransform | None:
    """Return the transform from the photo's ICC profile to sRGB, or None if none applies."""
    icc = image.info.get("icc_profile")
    if not icc:
        return None
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        space = (profile.profile.xcolor_space or "").strip()
        # A profile for another colour space, or sRGB already (a transform for nothing).
        if space != _PROFILE_SPACE.get(image.mode) or (
            space == "RGB" and "sRGB" in (profile.profile.profile_description or "")
        ):
            return None
        # Relative colorimetric with black-point compensation, Photoshop's default: CMYK's
        # deepest black becomes sRGB's black instead of a grey (no-op for RGB matrix profiles).
        intent, flags = ImageCms.Intent.RELATIVE_COLORIMETRIC, ImageCms.Flags.BLACKPOINTCOMPENSATION
        return ImageCms.buildTransform(profile, srgb, image.mode, "RGB", intent, flags=flags)
    except (OSError, ImageCms.PyCMSError):
        return None  # browsers show a photo with a broken or mismatched profile as sRGB
