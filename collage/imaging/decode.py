"""Open a photo as a browser would show it: refused from its headers first, then decoded.

Everything here happens before or while one photo is decoded, never across photos:
compose.py lays them out and joins them.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass

from PIL import ExifTags, Image, ImageCms, ImageFile, UnidentifiedImageError

from collage.errors import PhotoUnreadable, TooLarge, one_line
from collage.imaging.avif import clean_aperture
from collage.imaging.webp import decode_still_webp, opencv

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
# Where the next marker may be after a scan: 0xFF in entropy-coded data is followed by 0x00 (a
# stuffed byte), a restart marker, or 0xFF (fill).
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
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
    # Each scan of a progressive JPEG is a pass over every pixel: encoders write 10 or so, and a
    # file that repeats one hundreds of times decodes for minutes. 100 at 64 MP is about 10 s.
    max_scans: int = 100


@dataclass(frozen=True)
class Photo:
    """A photo whose header has been read and whose pixels are not decoded yet."""

    image: ImageFile.ImageFile
    label: str
    orientation: int
    crop: tuple[int, int, int, int] | None = None  # an AVIF's clean aperture, before turning
    data: bytes | None = None  # a WebP's file: OpenCV decodes it, not Pillow (webp.py)

    @property
    def size(self) -> tuple[int, int]:
        """Return the size as a browser shows it, after any crop and the EXIF orientation."""
        width, height = self.image.size
        if self.crop is not None:
            width, height = self.crop[2] - self.crop[0], self.crop[3] - self.crop[1]
        return (height, width) if self.orientation >= 5 else (width, height)


def webp_size(data: bytes) -> tuple[int, int] | None:
    """Return the canvas size a WebP file declares, from its first chunk; None if not a WebP."""
    if len(data) < 30 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    chunk = data[12:16]
    if chunk == b"VP8X":  # extended: 24-bit canvas width and height minus one
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8L":  # lossless: 14-bit width and height minus one after a signature byte
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8 ":  # lossy: 14-bit width and height after the key frame's start code
        return (int.from_bytes(data[26:28], "little") & 0x3FFF,
                int.from_bytes(data[28:30], "little") & 0x3FFF)  # fmt: skip
    return None


def open_photo(data: bytes, label: str, limits: Limits) -> Photo:
    """Read a photo's header and orientation, refusing it before its pixels are decoded."""
    # Pillow's WebP decoder allocates the whole canvas as it opens the file: check it first.
    if (declared := webp_size(data)) is not None:
        _check_photo_size(label, *declared, limits)
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
    except MemoryError:
        raise
    except UnidentifiedImageError:
        if (recognised := _recognised_as(data)) is not None:
            fmt, reason = recognised
            raise PhotoUnreadable(f"{label} is a {fmt} that cannot be read: {reason}") from None
        raise PhotoUnreadable(
            f"{label} is not a {', '.join(FORMATS)} image: {len(data):,} bytes"
            + (f" starting {data[:24]!r}" if data else "")
        ) from None
    except Exception as exc:  # Pillow raises many kinds on malformed headers
        raise PhotoUnreadable(f"{label} cannot be read: {one_line(exc)}") from exc
    if image.format == "JPEG" and (scans := _jpeg_scans(data)) > limits.max_scans:
        raise TooLarge(
            f"{label} is a JPEG of {scans:,} scans; at most {limits.max_scans:,} are allowed"
        )
    # The whole coded image is decoded before any crop: its size is what the limit bounds.
    _check_photo_size(label, *Photo(image, label, orientation).size, limits)
    crop = clean_aperture(data, image.size) if image.format == "AVIF" else None
    return Photo(image, label, orientation, crop, data if image.format == "WEBP" else None)


def _check_photo_size(label: str, width: int, height: int, limits: Limits) -> None:
    if width < 1 or height < 1:
        raise PhotoUnreadable(f"{label} has no pixels ({width} x {height})")
    if width * height > limits.max_photo_pixels:
        raise TooLarge(
            f"{label} is {width:,} x {height:,} px ({width * height:,} pixels); "
            f"at most {limits.max_photo_pixels:,} are allowed per photo"
        )


def _recognised_as(data: bytes) -> tuple[str, str] | None:
    """Say which format's signature a photo Pillow could not open has, and what stopped it."""
    # Image.open tries every plugin and keeps none of their errors: ask the one that claims
    # the bytes again, alone.
    Image.init()
    for fmt in FORMATS:
        factory, accept = Image.OPEN[fmt]
        if accept is None or not accept(data[:16]):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                factory(io.BytesIO(data), "").close()
        except Exception as exc:
            return fmt, one_line(exc)
        return None
    return None


def _jpeg_scans(data: bytes) -> int:
    """Count the scans of a JPEG's first image, from its markers, without decoding anything."""
    scans, at = 0, 2
    while (found := _JPEG_MARKER.search(data, at)) is not None:
        marker, at = data[found.start() + 1], found.start() + 2
        if marker == 0xD9:  # end of image: what follows (another image of an MPO) is not shown
            break
        if marker == 0xDA:
            scans += 1
        if marker != 0x01:  # every other marker here has a length: skip its segment
            at += int.from_bytes(data[at : at + 2], "big")
    return scans


def _orientation(image: ImageFile.ImageFile) -> int:
    """Return the EXIF orientation 1-8, or 1 where the photo's EXIF block has none.

    One rule for every format, the browsers': only the EXIF block counts. Pillow's getexif()
    would also take tiff:Orientation from XMP (JPEG, WebP, AVIF; not PNG), and PNG's own
    getexif() an ImageMagick "Raw profile type exif" text chunk, which no browser reads.
    """
    # Pillow turns a TIFF upright itself, in .size from the header on (Pillow 11) and in pixels.
    # A PNG's eXIf chunk after the pixels is not in info until the image is decoded: ignored.
    block = image.info.get("exif")
    if image.format == "TIFF" or not isinstance(block, bytes) or not block:
        return 1
    try:
        exif = Image.Exif()
        exif.load(block)
        value = exif.get(ExifTags.Base.Orientation, 1)
    except Exception:  # a browser ignores EXIF it cannot parse
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def decode(photo: Photo, srgb: ImageCms.ImageCmsProfile) -> Image.Image:
    """Decode a photo into 8-bit sRGB, upright and flattened on white, as a browser shows it."""
    try:
        image: Image.Image
        if (still := decode_still_webp(photo.image, photo.data)) is not None:
            image = still
        else:
            photo.image.load()
            image = photo.image
        if photo.crop is not None:  # MIAF's order: the clean aperture, then the turn
            image = image.crop(photo.crop)
            photo.image.close()
        image = _to_srgb(image, srgb)
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
    if image.mode in _SIXTEEN_BIT and isinstance(image.info.get("transparency"), int):
        # A 16-bit grey PNG's tRNS names one grey value transparent; Pillow keeps it in info.
        _, np = opencv()
        values = np.asarray(image)
        alpha = Image.fromarray(
            np.where(values == image.info["transparency"], 0, 255).astype(np.uint8)
        )
        del values
    if image.mode in ("LA", "RGBA"):
        alpha = image.getchannel("A")
        image = image.convert(image.mode[:-1])
    if image.mode in _SIXTEEN_BIT:
        # Scale 0-65535 to 0-255, rounded (convert("L") would clip at 255); "I" is taken to hold
        # 16-bit values too, as Pillow gives for 16-bit PNGs and TIFFs.
        if image.mode not in ("I;16", "I"):
            image = image.convert("I")  # point() takes no other byte order
        image = image.point(lambda v: v / 257 + 0.5).convert("L")
    elif image.mode == "RGBX" and not image.info.get("icc_profile"):
        return image  # a WebP from OpenCV without a profile: Pillow's own 4-byte RGB, as it is
    elif image.mode not in _PROFILE_SPACE:
        image = image.convert("RGB")  # 1, P, YCbCr, RGBX...: no profile applies to these
    transform = srgb_transform(image, srgb)
    if transform is not None and image.mode == "RGB":
        ImageCms.applyTransform(image, transform, inPlace=True)
    elif transform is not None:
        converted = ImageCms.applyTransform(image, transform)
        assert converted is not None  # only inPlace=True returns None
        image = converted
    elif image.mode != "RGB":
        image = image.convert("RGB")  # CMYK without a profile: ink multiplied, as browsers do
    if alpha is None:
        return image
    # White where the photo is transparent, in place: no second full-size image.
    image.paste((255, 255, 255), mask=alpha.point(lambda a: 255 - a))
    return image


def srgb_transform(
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
