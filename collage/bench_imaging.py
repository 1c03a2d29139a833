"""Measure build_collage against the floor: decode every photo, encode the canvas once."""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageStat

from collage.imaging import build_collage, plan_layout

QUALITY = 95
# Pillow keeps up to this many freed 16 MB blocks for reuse (--warm): a worker that sets it stops
# paying the kernel for a fresh canvas on every job.
WARM_BLOCKS = "32"
USAGE = "bin/bench-imaging needs the repo's .venv: run bin/test once to create it."


def make_photo(rnd: random.Random, width: int, height: int) -> Image.Image:
    """Draw a product-like photo: gradients, soft shapes, and grain like fabric or paper."""
    small = (max(1, width // 4), max(1, height // 4))
    base = Image.frombytes("RGB", (4, 6), rnd.randbytes(72)).resize(small, Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(base)
    for _ in range(12):
        x, y = rnd.randrange(small[0]), rnd.randrange(small[1])
        box = (x, y, x + rnd.randrange(small[0] // 8 + 1, small[0] // 2 + 2), y + small[1] // 3)
        colour = tuple(rnd.randrange(256) for _ in range(3))
        (draw.ellipse if rnd.random() < 0.5 else draw.rectangle)(box, fill=colour)
    base = base.filter(ImageFilter.GaussianBlur(1)).resize((width, height), Image.Resampling.BICUBIC)
    coarse = Image.frombytes("L", small, rnd.randbytes(small[0] * small[1]))
    grain = Image.blend(
        coarse.resize((width, height), Image.Resampling.BILINEAR),
        Image.frombytes("L", (width, height), rnd.randbytes(width * height)),
        0.3,
    )
    return Image.blend(base, Image.merge("RGB", (grain, grain, grain)), rnd.uniform(0.03, 0.14))


def make_dataset(root: Path) -> list[Path]:
    """Write 20 SKUs of 4-10 JPEG photos (a third with mixed heights) and one large SKU."""
    rnd = random.Random(20_240_611)
    specs: list[list[tuple[int, int]]] = []
    for i in range(20):
        count, height = rnd.randint(4, 10), rnd.randrange(1500, 3001, 100)
        mixed = i % 3 == 2
        specs.append(
            [
                (rnd.randrange(1200, 2001, 10), rnd.randrange(1500, 3001, 10) if mixed else height)
                for _ in range(count)
            ]
        )
    specs.append([(2000, 3000)] * 10)
    skus = []
    for i, sizes in enumerate(specs, start=1):
        sku = root / (f"sku{i:02d}" if i <= 20 else "large")
        skus.append(sku)
        if sku.exists():
            continue
        sku.mkdir(parents=True)
        for j, (width, height) in enumerate(sizes, start=1):
            photo = make_photo(rnd, width, height)
            photo.save(sku / f"{j:02d}.jpg", quality=90, subsampling=2)
    return skus


def load(sku: Path) -> list[bytes]:
    """Read a SKU's photos, in order."""
    return [path.read_bytes() for path in sorted(sku.glob("*.jpg"))]


def encode(image: Image.Image, **options: object) -> bytes:
    """Encode as build_collage does, with extra options for the encoder study."""
    out = io.BytesIO()
    image.save(out, "JPEG", quality=QUALITY, subsampling=0, comment=b"", **options)
    return out.getvalue()


def measure(kind: str, sku: Path, runs: int) -> dict[str, float]:
    """Run one kind of job `runs` times in this process and measure the last run."""
    photos = load(sku)
    canvas = Image.open(io.BytesIO(build_collage(photos, quality=QUALITY))).convert("RGB")
    job: Callable[[], int]
    if kind == "build":
        del canvas
        job = lambda: len(build_collage(photos, quality=QUALITY))  # noqa: E731
    elif kind == "floor":
        job = lambda: floor(photos, canvas)  # noqa: E731
    else:  # encode:<option>
        option = kind.split(":")[1]
        job = lambda: len(encode(canvas, **({option: True} if option != "baseline" else {})))  # noqa: E731
    for _ in range(runs - 1):
        job()
    rss_before = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGESIZE")
    wall, cpu = time.perf_counter(), time.process_time()
    size = job()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"cpu": cpu, "wall": wall, "peak": max(0, peak - rss_before), "size": size}


def floor(photos: Sequence[bytes], canvas: Image.Image) -> int:
    """Decode every photo once and encode a canvas of the collage's pixels once, nothing else."""
    for data in photos:
        with Image.open(io.BytesIO(data)) as photo:
            photo.load()
    return len(encode(canvas, icc_profile=b""))


def child(kind: str, sku: Path, *, warm: bool) -> dict[str, float]:
    """Measure in a fresh process, so that ru_maxrss is this job's peak and nothing else's."""
    env = dict(os.environ, PILLOW_BLOCKS_MAX=WARM_BLOCKS) if warm else dict(os.environ)
    runs = "2" if warm else "1"
    command = [sys.executable, "-m", "collage.bench_imaging", "--child", kind, str(sku), runs]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def median_of(kind: str, sku: Path, reps: int, *, warm: bool) -> dict[str, float]:
    """Return the median of every figure over `reps` fresh processes."""
    samples = [child(kind, sku, warm=warm) for _ in range(reps)]
    return {key: statistics.median(s[key] for s in samples) for key in samples[0]}


def geomean(values: Sequence[float]) -> float:
    """Return the geometric mean."""
    return math.exp(statistics.fmean(math.log(v) for v in values)) if values else float("nan")


def bench(skus: Sequence[Path], reps: int, *, warm: bool) -> None:
    """Print one markdown row per SKU, build against floor, then the geometric means."""
    mib = 1024 * 1024
    print(f"\n### {'Warm worker (PILLOW_BLOCKS_MAX=' + WARM_BLOCKS + ')' if warm else 'Cold'}\n")
    print("| SKU | photos | upscaled | collage px | in MB | out MB | floor CPU s | build CPU s "
          "| build wall s | ratio | peak MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    ratios: dict[bool, list[float]] = {True: [], False: []}
    for sku in skus:
        photos = load(sku)
        sizes = [Image.open(io.BytesIO(p)).size for p in photos]
        layout = plan_layout(sizes)
        upscaled = sum(h < layout.height for _, h in sizes)
        base, built = median_of("floor", sku, reps, warm=warm), median_of("build", sku, reps, warm=warm)
        ratio = built["cpu"] / base["cpu"]
        ratios[upscaled > 0].append(ratio)
        print(f"| {sku.name} | {len(photos)} | {upscaled} | {layout.width}x{layout.height} "
              f"| {sum(map(len, photos)) / 1e6:.1f} | {built['size'] / 1e6:.1f} | {base['cpu']:.3f} "
              f"| {built['cpu']:.3f} | {built['wall']:.3f} | {ratio:.2f} | {built['peak'] / mib:.0f} |")
        if sku.name == "large":
            target = (layout.width * layout.height * 4 + max(w * h for w, h in sizes) * 4) / mib + 64
            large = f"large SKU peak {built['peak'] / mib:.0f} MiB, target {target:.0f} MiB"
    print(f"\nGeometric mean of CPU ratios: all {geomean(ratios[True] + ratios[False]):.2f}, "
          f"no upscaling {geomean(ratios[False]):.2f}, with upscaling {geomean(ratios[True]):.2f}; "
          f"{large}.")


def psnr(a: Image.Image, b: Image.Image) -> float:
    """Return the peak signal-to-noise ratio of two RGB images, in dB."""
    mse = statistics.fmean(rms * rms for rms in ImageStat.Stat(ImageChops.difference(a, b)).rms)
    return 10 * math.log10(255 * 255 / mse) if mse else float("inf")


def sharp_photo(rnd: random.Random, width: int, height: int) -> Image.Image:
    """Draw hard edges over a photo: seams, stripes, lettering, as on garments and labels."""
    image = make_photo(rnd, width, height)
    draw = ImageDraw.Draw(image)
    for i in range(0, width, 7 + rnd.randrange(9)):
        draw.line((i, 0, i + height // 3, height), fill=(20, 20, 20), width=1 + i % 3)
    for y in range(height // 2, height, 40):
        draw.text((30, y), "SIZE M 100% COTTON 42/EU", fill=(250, 250, 250), font_size=24)
    return image


def filter_study(reps: int) -> None:
    """Print fidelity (PSNR against the true image) and CPU of every filter upscaling to 2000x3000."""
    rnd = random.Random(7)
    truths = [make_photo(rnd, 2000, 3000) for _ in range(2)] + [sharp_photo(rnd, 2000, 3000)]
    print("\n| filter | PSNR from 0.6x dB | PSNR from 0.8x dB | CPU from 0.6x s | CPU from 0.8x s |")
    print("|---|---|---|---|---|")
    for name in ("NEAREST", "BILINEAR", "BICUBIC", "LANCZOS"):
        resampling = Image.Resampling[name]
        cells = []
        for scale in (0.6, 0.8):
            quality, cost = [], []
            for truth in truths:
                # A lower-resolution camera: area average, which favours none of the filters.
                small = truth.resize((round(2000 * scale), round(3000 * scale)), Image.Resampling.BOX)
                for _ in range(reps):
                    cpu = time.process_time()
                    up = small.resize(truth.size, resampling)
                    cost.append(time.process_time() - cpu)
                quality.append(psnr(up, truth))
            cells.append((statistics.fmean(quality), statistics.median(cost)))
        print(f"| {name} | {cells[0][0]:.2f} | {cells[1][0]:.2f} | {cells[0][1]:.3f} "
              f"| {cells[1][1]:.3f} |")


def encoder_study(skus: Sequence[Path], reps: int) -> None:
    """Print CPU, output size and peak memory of each JPEG encoder option on the collages."""
    print("\n| encoder | CPU s (sum) | MB (sum) | large SKU peak MiB |\n|---|---|---|---|")
    for option in ("baseline", "optimize", "progressive"):
        runs = [median_of(f"encode:{option}", sku, reps, warm=False) for sku in skus]
        print(f"| {option} | {sum(r['cpu'] for r in runs):.2f} | {sum(r['size'] for r in runs) / 1e6:.1f} "
              f"| {runs[-1]['peak'] / 1024 / 1024:.0f} |")


def main(argv: Sequence[str] | None = None) -> None:
    """Build the data set, then print the benchmark tables."""
    parser = argparse.ArgumentParser(prog="bin/bench-imaging", description=__doc__, epilog=USAGE)
    parser.add_argument("--reps", type=int, default=3, help="fresh processes per figure (median)")
    parser.add_argument("--data", type=Path, help="keep the photos here (reused if present)")
    parser.add_argument("--only", nargs="*", default=[], help="SKU names to run, e.g. large")
    parser.add_argument("--warm", action="store_true", help="also measure a warm worker")
    parser.add_argument("--filters", action="store_true", help="also compare resampling filters")
    parser.add_argument("--encoder", action="store_true", help="also compare encoder options")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, sku, runs = args.child
        print(json.dumps(measure(kind, Path(sku), int(runs))))
        return
    with tempfile.TemporaryDirectory(prefix="bench-imaging-") as scratch:
        skus = make_dataset(args.data or Path(scratch))
        if args.only:
            skus = [sku for sku in skus if sku.name in args.only]
        sizes = [len(p) / Image.open(io.BytesIO(p)).size[0] / Image.open(io.BytesIO(p)).size[1]
                 for sku in skus for p in load(sku)]
        print(f"{len(skus)} SKUs, inputs {min(sizes) * 6e6 / 1e3:.0f}-{max(sizes) * 6e6 / 1e3:.0f} KB "
              f"per 6 MP (JPEG q90 4:2:0); output JPEG q{QUALITY} 4:4:4; medians of {args.reps} runs")
        bench(skus, args.reps, warm=False)
        if args.warm:
            bench(skus, args.reps, warm=True)
        if args.encoder:
            encoder_study(skus, args.reps)
        if args.filters:
            filter_study(args.reps)


if __name__ == "__main__":
    main()
