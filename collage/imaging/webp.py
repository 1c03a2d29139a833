"""Still WebP photos decoded by OpenCV into one buffer that Pillow then shares.

Pillow's WebP decoder (libwebp's animation decoder, for stills too) holds two canvases of its
own and then copies the frame into the image: about 1 GiB at 64 MP before the photo is even
converted. libwebp through OpenCV decodes the same pixels into one BGR(A) array, turned into
Pillow's own 4-byte layout once (docs/imaging.md). Animated WebPs stay with Pillow.
"""

from __future__ import annotations

import os
from functools import cache
from types import ModuleType
from typing import Any

from PIL import Image


@cache
def opencv() -> tuple[ModuleType, ModuleType]:
    """Import OpenCV and numpy, each on one thread: a job is given one core."""
    # numpy's OpenBLAS starts a spinning thread per core at import unless told otherwise; the
    # setdefault keeps an operator's own choice.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import cv2
    import numpy as np

    cv2.setNumThreads(1)
    return cv2, np


def decode_still_webp(header: Any, data: bytes | None) -> Image.Image | None:
    """Decode a still WebP's pixels as RGBX (RGBA with alpha); None to leave it to Pillow.

    `header` is Pillow's opened image: its info (ICC profile, EXIF) goes with the pixels.
    """
    if data is None or header.format != "WEBP" or getattr(header, "n_frames", 1) != 1:
        return None
    cv2, np = opencv()
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if decoded is None or decoded.ndim != 3 or decoded.shape[:2] != header.size[::-1]:
        return None  # Pillow says what is wrong with it, in its own words
    height, width, channels = decoded.shape
    if channels == 4:
        cv2.cvtColor(decoded, cv2.COLOR_BGRA2RGBA, dst=decoded)
        image = Image.frombuffer("RGBA", (width, height), decoded, "raw", "RGBA", 0, 1)
    else:
        padded = cv2.cvtColor(decoded, cv2.COLOR_BGR2RGBA)  # the 4th byte is 255, ignored
        del decoded
        image = Image.frombuffer("RGBX", (width, height), padded, "raw", "RGBX", 0, 1)
    image.info.update(header.info)
    header.close()
    return image
