"""The collage's pixels in one buffer that photos are decoded and scaled straight into.

Pasting a decoded photo into the canvas copied it, and scaling one went through two more
copies (out of Pillow, OpenCV's result); with the canvas in numpy's memory, Pillow's JPEG
decoder writes a photo's rows in place and OpenCV writes a scaled photo in place, and the
encoder reads the same memory (docs/imaging.md). Pixels stay in Pillow's 4-byte RGB layout.
"""

from __future__ import annotations

from typing import Any

from PIL import Image, ImageCms
from PIL import _imaging as pillow_core

from collage.errors import PhotoUnreadable, one_line
from collage.imaging.decode import Photo, srgb_transform
from collage.imaging.webp import opencv


class Canvas:
    """A collage's pixels: columns to decode or scale photos into, and an image to encode."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        _, np = opencv()
        # Not zeroed: every column is written, or the build fails (a decoded photo fills its
        # column or raises; a scaled one is written whole), so no earlier SKU's pixels can
        # show through. One row more than the pixels: Pillow checks that a column's map, `x`
        # bytes in, still has `height` full rows after it.
        self._buffer = np.empty((height + 1) * width * 4, np.uint8)
        self.pixels = self._buffer[: height * width * 4].reshape(height, width, 4)
        self.image = Image.frombuffer("RGBX", (width, height), self._buffer, "raw", "RGBX", 0, 1)

    def column(self, x: int, width: int) -> Any:
        """A Pillow core image of mode RGB over the columns x to x + width, sharing the memory."""
        return pillow_core.map_buffer(
            self._buffer, (width, self.height), "raw", x * 4, ("RGB", self.width * 4, 1)
        )

    def paste(self, panel: Image.Image, x: int) -> None:
        """Copy an RGB or RGBX panel as tall as the canvas into it at x."""
        # The core paste copies the 4-byte pixels as they are, where Image.paste would first
        # convert an RGBX panel to RGB (and copy a read-only canvas).
        self.image.im.paste(panel.im, (x, 0, x + panel.width, self.height))

    def scale_into(self, source: Any, x: int, width: int) -> None:
        """Scale a (height, width, 4) array to the canvas's height, written at x (bicubic)."""
        cv2, _ = opencv()
        cv2.resize(
            source,
            (width, self.height),
            dst=self.pixels[:, x : x + width],
            interpolation=cv2.INTER_CUBIC,
        )


def scratch(width: int, height: int) -> tuple[Any, Any]:
    """A (height, width, 4) array and a Pillow core image of mode RGB over the same memory."""
    _, np = opencv()
    pixels = np.empty((height, width, 4), np.uint8)
    return pixels, pillow_core.map_buffer(pixels, (width, height), "raw", 0, ("RGB", width * 4, 1))


def rgbx_pixels(panel: Image.Image) -> Any:
    """A copy of an RGB(X) panel's pixels as a (height, width, 4) array for OpenCV."""
    _, np = opencv()
    width, height = panel.size
    # RGBX is Pillow's own layout, and OpenCV's SIMD is fastest on 4 channels (1.5 against
    # 1.8 ms per output megapixel for 3); the padding byte is never encoded.
    return np.frombuffer(panel.tobytes("raw", "RGBX"), np.uint8).reshape(height, width, 4)


def decodes_in_place(photo: Photo) -> bool:
    """Whether decode_into takes this photo: a JPEG in RGB that needs no crop or turn."""
    image = photo.image
    return (
        image.format == "JPEG"
        and image.mode == "RGB"
        and photo.orientation == 1
        and photo.crop is None
    )


def decode_into(photo: Photo, srgb: ImageCms.ImageCmsProfile, target: Any) -> None:
    """Decode a photo that decodes_in_place takes into `target`, a core image of mode RGB.

    Pillow's decoder writes into the image memory it finds already there: the same decoder,
    the same pixels as decode(), without a copy. An ICC profile is applied in place.
    """
    image = photo.image
    try:
        image.im = target
        image.load()
        if (transform := srgb_transform(image, srgb)) is not None:
            ImageCms.applyTransform(image, transform, inPlace=True)
    except MemoryError:
        raise
    except Exception as exc:  # truncated or corrupt data; Pillow raises many kinds
        raise PhotoUnreadable(f"{photo.label} cannot be decoded: {one_line(exc)}") from exc
