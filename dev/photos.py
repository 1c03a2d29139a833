"""Made-up photos for the tests, the demo and the benchmarks: no binary fixtures in the repo.

Each is deterministic for its seed, so a benchmark's data set is the same on every machine.
"""

from __future__ import annotations

import io
import random

from PIL import Image, ImageDraw, ImageFilter

Colour = tuple[int, int, int]


def encode(image: Image.Image, fmt: str = "JPEG", **options: object) -> bytes:
    """Save an image to bytes (JPEG at quality 90 unless told otherwise)."""
    out = io.BytesIO()
    if fmt == "JPEG":
        options = {"quality": 90, **options}
    image.save(out, fmt, **options)
    return out.getvalue()


def solid_jpeg(width: int, height: int, rgb: Colour, **options: object) -> bytes:
    """A one-colour JPEG: its colour survives scaling, so a collage's pixels say which it is."""
    return encode(Image.new("RGB", (width, height), rgb), quality=95, subsampling=0, **options)


def jpeg(width: int, height: int, *, seed: int = 0, quality: int = 90) -> bytes:
    """A photo-like JPEG: a gradient background and a few shapes."""
    rng = random.Random(seed)
    base = tuple(rng.randrange(60, 200) for _ in range(3))
    image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    image = Image.blend(image, Image.new("RGB", (width, height), base), 0.6)  # type: ignore[arg-type]
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        x1, y1 = x0 + rng.randrange(1, width // 2 + 2), y0 + rng.randrange(1, height // 2 + 2)
        draw.ellipse((x0, y0, x1, y1), fill=tuple(rng.randrange(256) for _ in range(3)))
    return encode(image, quality=quality)


def noisy_jpeg(width: int, height: int, *, seed: int = 0) -> bytes:
    """A JPEG full of texture, so decoding and encoding it cost what a real photo costs."""
    rng = random.Random(seed)
    small = (max(1, width // 4), max(1, height // 4))
    noise = Image.effect_noise(small, 40).resize((width, height))
    base = Image.new("RGB", (width, height), tuple(rng.randrange(40, 220) for _ in range(3)))
    return encode(Image.composite(base, Image.merge("RGB", (noise, noise, noise)), noise))


def shapes(size: tuple[int, int], seed: int) -> Image.Image:
    """Smooth gradients and hard-edged shapes, so that a misplaced panel shows in PSNR."""
    rnd = random.Random(seed)
    image = Image.frombytes("RGB", (3, 3), rnd.randbytes(27)).resize(size, Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x, y = rnd.randrange(size[0]), rnd.randrange(size[1])
        box = (x, y, x + size[0] // 3, y + size[1] // 4)
        draw.ellipse(box, fill=tuple(rnd.randrange(256) for _ in range(3)))
    return image


def product(rnd: random.Random, width: int, height: int) -> Image.Image:
    """A product-like photo: gradients, soft shapes, and grain like fabric or paper."""
    small = (max(1, width // 4), max(1, height // 4))
    base = Image.frombytes("RGB", (4, 6), rnd.randbytes(72)).resize(small, Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(base)
    for _ in range(12):
        x, y = rnd.randrange(small[0]), rnd.randrange(small[1])
        box = (x, y, x + rnd.randrange(small[0] // 8 + 1, small[0] // 2 + 2), y + small[1] // 3)
        colour = tuple(rnd.randrange(256) for _ in range(3))
        (draw.ellipse if rnd.random() < 0.5 else draw.rectangle)(box, fill=colour)
    base = base.filter(ImageFilter.GaussianBlur(1)).resize(
        (width, height), Image.Resampling.BICUBIC
    )
    coarse = Image.frombytes("L", small, rnd.randbytes(small[0] * small[1]))
    grain = Image.blend(
        coarse.resize((width, height), Image.Resampling.BILINEAR),
        Image.frombytes("L", (width, height), rnd.randbytes(width * height)),
        0.3,
    )
    return Image.blend(base, Image.merge("RGB", (grain, grain, grain)), rnd.uniform(0.03, 0.14))


def detailed(rnd: random.Random, width: int, height: int) -> Image.Image:
    """Detail at every scale, as in nature (1/f texture), with hard edges and small print."""
    image = Image.new("RGB", (width, height), (128, 128, 128))
    for octave in range(1, 8):
        size = (max(2, width >> octave), max(2, height >> octave))
        noise = Image.frombytes("RGB", size, rnd.randbytes(size[0] * size[1] * 3))
        image = Image.blend(image, noise.resize((width, height), Image.Resampling.BICUBIC), 0.5)
    draw = ImageDraw.Draw(image)
    for _ in range(10):
        x, y = rnd.randrange(width), rnd.randrange(height)
        box = (x, y, x + rnd.randrange(50, width // 2), y + rnd.randrange(50, height // 3))
        colour = tuple(rnd.randrange(256) for _ in range(3))
        (draw.ellipse if rnd.random() < 0.5 else draw.rectangle)(box, fill=colour)
    for y in range(height // 2, height, 90):
        draw.text((40, y), "SIZE M  100% COTTON  EU 42", fill=(250, 250, 250), font_size=40)
    return image


def garment(rng: random.Random, view: str, *, width: int, height: int) -> Image.Image:
    """A garment silhouette on a studio background, labelled with its view (the demo's)."""
    background = tuple(rng.randrange(225, 250) for _ in range(3))
    colour = tuple(rng.randrange(30, 220) for _ in range(3))
    image = Image.new("RGB", (width, height), background)  # type: ignore[arg-type]
    draw = ImageDraw.Draw(image)
    w, h = width, height
    body = [
        (0.30 * w, 0.18 * h),
        (0.42 * w, 0.12 * h),
        (0.58 * w, 0.12 * h),
        (0.70 * w, 0.18 * h),
        (0.90 * w, 0.35 * h),
        (0.80 * w, 0.42 * h),
        (0.70 * w, 0.34 * h),
        (0.70 * w, 0.88 * h),
        (0.30 * w, 0.88 * h),
        (0.30 * w, 0.34 * h),
        (0.20 * w, 0.42 * h),
        (0.10 * w, 0.35 * h),
    ]
    draw.polygon(body, fill=colour)  # type: ignore[arg-type]
    for _ in range(rng.randrange(3, 9)):  # a print on the fabric
        x, y = rng.uniform(0.35, 0.6) * w, rng.uniform(0.3, 0.75) * h
        r = rng.uniform(0.02, 0.06) * w
        draw.ellipse((x, y, x + r, y + r), fill=tuple(rng.randrange(256) for _ in range(3)))
    draw.text((0.04 * w, 0.04 * h), view, fill=(60, 60, 60), font_size=max(12, h // 18))
    return image


def scan_bomb(width: int, height: int, *, repeats: int, seed: int = 0) -> bytes:
    """A progressive JPEG whose last scan is repeated: small, and slow to decode in proportion."""
    data = encode(Image.open(io.BytesIO(jpeg(width, height, seed=seed))), progressive=True)
    last = data.rindex(b"\xff\xda")  # the last scan runs to the end-of-image marker
    return data[:last] + data[last:-2] * repeats + data[-2:]
