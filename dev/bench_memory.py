"""Peak RSS of the worst case of each accepted format at the limits, one fresh process each."""

from __future__ import annotations

import argparse
import io
import json
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from collage import imaging
from dev import collages, photos

MIB = 1024 * 1024


def _base(width: int, height: int, mode: str = "RGB") -> Image.Image:
    """A cheap photo of the size: memory depends on pixels, not on what they show."""
    image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    noise = Image.effect_noise((max(1, width // 8), max(1, height // 8)), 30).resize(
        (width, height)
    )
    image = Image.merge("RGB", (image.getchannel(0), noise, image.getchannel(0)))
    return image if mode == "RGB" else image.convert(mode)


def _save(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def cases(side: int) -> dict[str, Callable[[], bytes]]:
    """The worst case of each format for a side x side photo (the pixel limit is 8000 x 8000)."""
    exif = Image.Exif()
    exif[0x0112] = 6  # turned by EXIF: one more full copy

    def grey16() -> bytes:
        return _save(Image.new("I;16", (side, side), 30000), "PNG", transparency=30000)

    def animated() -> bytes:
        frames = [_base(side, side), _base(side, side).rotate(180)]
        return _save(
            frames[0], "WEBP", save_all=True, append_images=frames[1:], quality=80, method=0
        )

    return {
        "JPEG baseline, EXIF-turned": lambda: _save(
            _base(side, side), "JPEG", quality=90, exif=exif.tobytes()
        ),
        "JPEG progressive": lambda: _save(_base(side, side), "JPEG", quality=90, progressive=True),
        "JPEG CMYK, EXIF-turned": lambda: _save(
            _base(side, side, "CMYK"), "JPEG", quality=90, exif=exif.tobytes()
        ),
        "PNG 8-bit RGBA": lambda: _save(_base(side, side, "RGBA"), "PNG", compress_level=1),
        "PNG 16-bit grey + tRNS": grey16,
        "WebP lossy": lambda: _save(_base(side, side), "WEBP", quality=80, method=0),
        "WebP lossless": lambda: _save(
            _base(side, side), "WEBP", lossless=True, method=0, quality=0
        ),
        "WebP animated (2 frames)": animated,
        "AVIF": lambda: _save(_base(side, side), "AVIF", quality=60, speed=10),
        "GIF": lambda: _save(_base(side, side).convert("P"), "GIF"),
        "TIFF (deflate)": lambda: _save(
            _base(side, side), "TIFF", compression="tiff_adobe_deflate"
        ),
        "BMP": lambda: _save(_base(side, side), "BMP"),
    }


def pairs(megapixels: float) -> dict[str, Callable[[], list[bytes]]]:
    """Two photos decoding at once, at the decode-ahead limit: the worst cases that adds."""
    limits = imaging.Limits()

    def beside_upscaled(fmt: str, **options: object) -> Callable[[], list[bytes]]:
        # A small JPEG scaled up 6x to fill most of the canvas while the big one decodes.
        def make() -> list[bytes]:
            side = int(math.sqrt(megapixels * 1e6 * 0.85))
            rest = limits.max_canvas_pixels // side - side - 64  # room for rounding
            small = photos.jpeg(max(1, rest // 6), side // 6, seed=1)
            return [small, _save(_base(side, side), fmt, **options)]

        return make

    def two(fmt: str, **options: object) -> Callable[[], list[bytes]]:
        def make() -> list[bytes]:
            side = int(math.sqrt(megapixels * 1e6 / 2))
            return [
                _save(_base(side, side), fmt, **options),
                _save(_base(side, side), fmt, **options),
            ]

        return make

    return {
        "JPEG upscaled to most of the canvas, then a lossless WebP": beside_upscaled(
            "WEBP", lossless=True, method=0, quality=0
        ),
        "JPEG upscaled to most of the canvas, then an RGBA PNG": beside_upscaled("PNG"),
        "two lossless WebPs": two("WEBP", lossless=True, method=0, quality=0),
        "two JPEGs": two("JPEG", quality=90),
    }


def measure(paths: list[Path], ahead: int) -> dict[str, float]:
    """Build the worst-case collage in this fresh process and return its peak RSS and CPU."""
    data = [path.read_bytes() for path in paths]
    imaging.load_resampler()
    Path("/proc/self/clear_refs").write_text("5")
    before = _status("VmRSS")
    cpu = time.process_time()
    error = ""
    try:
        jpeg = collages.build_collage(data, ahead_pixels=ahead)
        size = len(jpeg)
        del jpeg
    except Exception as exc:
        error, size = str(exc), 0
    return {
        "peak": _status("VmHWM") - before,
        "cpu": time.process_time() - cpu,
        "size": size,
        "error": error,
    }


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise LookupError(field)


def main() -> None:
    """Write each case once, then measure each in its own process; print a markdown table."""
    parser = argparse.ArgumentParser(prog="dev.bench_memory", description=__doc__)
    parser.add_argument("--megapixels", type=float, default=64.0, help="the photo under test")
    parser.add_argument("--only", nargs="*", default=[])
    parser.add_argument("--data", type=Path, help="keep the files here (reused if present)")
    parser.add_argument(
        "--pairs", action="store_true", help="also two photos decoding at once (decode-ahead)"
    )
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        ahead, *paths = args.child
        print(json.dumps(measure([Path(p) for p in paths], int(ahead))))
        return
    side = int(math.sqrt(args.megapixels * 1e6))
    limits = imaging.Limits()
    # Beside it, a small JPEG upscaled to fill the rest of the canvas budget at that height.
    rest = limits.max_canvas_pixels // side - side
    scratch = args.data or Path(tempfile.mkdtemp(prefix="bench-memory-"))
    scratch.mkdir(parents=True, exist_ok=True)
    companion = scratch / "companion.jpg"
    if not companion.exists():
        companion.write_bytes(photos.jpeg(max(1, rest // 4), side // 4, seed=1))
    canvas = (side + rest) * side
    print(
        f"Photo {side} x {side} ({side * side / 1e6:.0f} MP) beside a JPEG upscaled 4x to "
        f"{rest} x {side}: a {canvas / 1e6:.0f} MP canvas ({canvas * 4 / MIB:,.0f} MiB)\n"
    )
    print("| format, worst case | file MB | peak RSS MiB | CPU s | result |\n|---|---|---|---|---|")
    for name, make in cases(side).items():
        if args.only and not any(o.lower() in name.lower() for o in args.only):
            continue
        path = scratch / (name.replace(" ", "_").replace(",", "").replace("/", "") + ".bin")
        if not path.exists():
            path.write_bytes(make())
        got = _child([path, companion], imaging.AHEAD_PIXELS)
        result = got["error"][:60] or "built"
        print(
            f"| {name} | {path.stat().st_size / 1e6:.1f} | {got['peak'] / MIB:,.0f} "
            f"| {got['cpu']:.2f} | {result} |",
            flush=True,
        )
    if not args.pairs:
        return
    pixels = imaging.AHEAD_PIXELS / 1e6
    print(
        f"\nTwo photos of {pixels:.0f} MP together (the decode-ahead limit), on a canvas near the"
        " limit where that is possible; peak RSS of the job one photo at a time and with the"
        " next photo decoding while one is scaled and pasted:\n"
    )
    print(
        "| photos | MP | one at a time MiB | decode-ahead MiB | added MiB |\n|---|---|---|---|---|"
    )
    for name, make in pairs(pixels * 0.999).items():
        if args.only and not any(o.lower() in name.lower() for o in args.only):
            continue
        stem = "pair_" + "".join(c if c.isalnum() else "_" for c in name)
        files = [scratch / f"{stem}_{i}.bin" for i in (1, 2)]
        if not all(f.exists() for f in files):
            for f, data in zip(files, make(), strict=True):
                f.write_bytes(data)
        megapixels = sum(math.prod(Image.open(f).size) for f in files) / 1e6
        one, ahead = _child(files, 0), _child(files, imaging.AHEAD_PIXELS)
        error = one["error"] or ahead["error"]
        print(
            f"| {name} | {megapixels:.1f} | {one['peak'] / MIB:,.0f} | {ahead['peak'] / MIB:,.0f}"
            f" | {(ahead['peak'] - one['peak']) / MIB:+,.0f} |"
            + (f" {error[:60]}" if error else ""),
            flush=True,
        )


def _child(paths: list[Path], ahead: int) -> dict[str, Any]:
    command = [sys.executable, "-m", "dev.bench_memory", "--child", str(ahead), *map(str, paths)]
    env = {"OPENBLAS_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout)


if __name__ == "__main__":
    main()
