"""The collage itself, bytes in and bytes out: decode, lay out, scale, join, encode. No I/O."""

from collage.imaging.compose import (
    AHEAD_PIXELS,
    RESAMPLING,
    Layout,
    PhotoOutOfMemory,
    build,
    build_collage,
    check_names,
    load_resampler,
    plan_layout,
    scale,
)
from collage.imaging.decode import FORMATS, Limits, decode, open_photo, webp_size
from collage.imaging.encode import Encoded, JpegTarget

__all__ = [
    "AHEAD_PIXELS",
    "FORMATS",
    "RESAMPLING",
    "Encoded",
    "JpegTarget",
    "Layout",
    "Limits",
    "PhotoOutOfMemory",
    "build",
    "build_collage",
    "check_names",
    "decode",
    "load_resampler",
    "open_photo",
    "plan_layout",
    "scale",
    "webp_size",
]
