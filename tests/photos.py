"""Product-like photos made on the fly, so the tests need no binary fixtures."""

from __future__ import annotations

import io
import random

from PIL import Image, ImageDraw


def jpeg(width: int, height: int, *, seed: int = 0, quality: int = 90) -> bytes:
    """A photo-like JPEG: a gradient background, a few shapes, deterministic for a seed."""
    rng = random.Random(seed)
    base = tuple(rng.randrange(60, 200) for _ in range(3))
    image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    image = Image.blend(image, Image.new("RGB", (width, height), base), 0.6)  # type: ignore[arg-type]
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        x1, y1 = x0 + rng.randrange(1, width // 2 + 2), y0 + rng.randrange(1, height // 2 + 2)
        draw.ellipse((x0, y0, x1, y1), fill=tuple(rng.randrange(256) for _ in range(3)))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()
