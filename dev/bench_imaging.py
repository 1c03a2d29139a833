"""Measure build_collage against the floor: decode every photo, encode the canvas once."""

from __future__ import annotations

import argparse
import io
import itertools
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageChops, ImageCms, ImageStat

from collage import imaging
from collage.imaging import RESAMPLING, build_collage, plan_layout
from dev import photos

QUALITY = 95
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
# Pillow keeps up to this many freed 16 MB blocks for reuse (--warm): a worker that sets it stops
# paying the kernel for a fresh canvas on every job.
WARM_BLOCKS = "32"
USAGE = "Full run (--warm --encoder --filters): about 15 minutes on 2 cores."


def make_dataset(root: Path) -> list[Path]:
    """Write 20 SKUs of 4-10 JPEG photos (a third with mixed heights) and one large SKU."""
    rnd = random.Random(20_240_611)
    specs: list[list[tuple[int, int]]] = []
    for i in range(20):
        count, height = rnd.randint(4, 10), rnd.randrange(1500, 3001, 100)
        heights = [height] * count
        if i % 3 == 2:
            # Mixed: a tall main height, and about half the photos (detail shots, older uploads)
            # 0.55-0.95 as tall, never under 1500 px; the first is always one of them.
            height = rnd.randrange(2500, 3001, 100)
            heights = [
                rnd.randrange(max(1500, height * 55 // 100), height * 95 // 100)
                if j == 0 or (j > 1 and rnd.random() < 0.5)
                else height
                for j in range(count)
            ]
        specs.append([(rnd.randrange(1200, 2001, 10), h) for h in heights])
    specs.append([(2000, 3000)] * 10)
    skus = []
    for i, sizes in enumerate(specs, start=1):
        sku = root / (f"sku{i:02d}" if i <= 20 else "large")
        skus.append(sku)
        if sku.exists():
            continue
        sku.mkdir(parents=True)
        for j, (width, height) in enumerate(sizes, start=1):
            photo = photos.product(rnd, width, height)
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
    if resampling := os.environ.get("BENCH_RESAMPLING"):
        imaging.RESAMPLING = Image.Resampling[resampling]
    if kind != "build":
        canvas = Image.open(io.BytesIO(build_collage(photos, quality=QUALITY)))
        canvas.load()
    option = kind.partition(":")[2]  # encode:optimize, encode:progressive, encode:baseline
    options = {option: True} if option in ("optimize", "progressive") else {}

    def job() -> int:
        if kind == "build":
            return len(build_collage(photos, quality=QUALITY))
        if kind == "floor":
            return floor(photos, canvas)
        return len(encode(canvas, **options))

    for _ in range(runs - 1):
        job()
    # Pillow allocates outside Python's allocator, where tracemalloc cannot see: reset the kernel's
    # peak-RSS mark instead, and read it after the job.
    Path("/proc/self/clear_refs").write_text("5")
    rss_before = _proc_status("VmRSS")
    wall, cpu = time.perf_counter(), time.process_time()
    size = job()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    peak = _proc_status("VmHWM") - rss_before
    # What the floor leaves out and a collage cannot: a canvas of fresh memory, the kernel zeroes.
    alloc = time.process_time()
    layout = plan_layout([Image.open(io.BytesIO(p)).size for p in photos])
    Image.new("RGB", (layout.width, layout.height), 0)
    alloc = time.process_time() - alloc
    return {"cpu": cpu, "wall": wall, "peak": peak, "size": size, "alloc": alloc}


def _proc_status(field: str) -> int:
    """Return a memory figure of this process from /proc/self/status, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise LookupError(field)


def floor(photos: Sequence[bytes], canvas: Image.Image) -> int:
    """Decode every photo once and encode a canvas of the collage's pixels once, nothing else."""
    for data in photos:
        with Image.open(io.BytesIO(data)) as photo:
            photo.load()
    return len(encode(canvas, icc_profile=SRGB))


def child(kind: str, sku: Path, *, warm: bool, resampling: str) -> dict[str, float]:
    """Measure in a fresh process, so that the peak RSS is this job's and nothing else's."""
    env = dict(os.environ, BENCH_RESAMPLING=resampling)
    if warm:
        env["PILLOW_BLOCKS_MAX"] = WARM_BLOCKS
    runs = "2" if warm else "1"
    command = [sys.executable, "-m", "dev.bench_imaging", "--child", kind, str(sku), runs]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def median_of(kind: str, sku: Path, reps: int, **options: Any) -> dict[str, float]:
    """Return the median of every figure over `reps` fresh processes."""
    samples = [child(kind, sku, **options) for _ in range(reps)]
    return {key: statistics.median(s[key] for s in samples) for key in samples[0]}


def geomean(values: Sequence[float]) -> float:
    """Return the geometric mean."""
    return math.exp(statistics.fmean(math.log(v) for v in values)) if values else float("nan")


def bench(skus: Sequence[Path], reps: int, *, warm: bool, resampling: str) -> None:
    """Print one markdown row per SKU, build against floor, then the geometric means."""
    mib = 1024 * 1024
    title = f"PILLOW_BLOCKS_MAX={WARM_BLOCKS}, second job in the process" if warm else "cold"
    print(f"\n### {resampling}, {title}\n")
    print(
        "| SKU | photos | upscaled | collage px | out MB | floor CPU s | fresh canvas s "
        "| build CPU s | build wall s | ratio | peak MiB |\n" + "|---" * 11 + "|"
    )
    ratios: dict[bool, list[float]] = {True: [], False: []}
    large = ""
    for sku in skus:
        photos = load(sku)
        sizes = [Image.open(io.BytesIO(p)).size for p in photos]
        layout = plan_layout(sizes)
        upscaled = sum(h < layout.height for _, h in sizes)
        base = median_of("floor", sku, reps, warm=warm, resampling=resampling)
        built = median_of("build", sku, reps, warm=warm, resampling=resampling)
        ratio = built["cpu"] / base["cpu"]
        ratios[upscaled > 0].append(ratio)
        # Warm, the memory is already the process's: neither figure would mean anything.
        peak = "-" if warm else f"{built['peak'] / mib:.0f}"
        alloc = "-" if warm else f"{base['alloc']:.3f}"
        print(
            f"| {sku.name} | {len(photos)} | {upscaled} | {layout.width}x{layout.height} "
            f"| {built['size'] / 1e6:.1f} | {base['cpu']:.3f} | {alloc} "
            f"| {built['cpu']:.3f} | {built['wall']:.3f} | {ratio:.2f} | {peak} |"
        )
        if sku.name == "large" and not warm:
            canvas, photo = layout.width * layout.height * 4, max(w * h for w, h in sizes) * 4
            target = (canvas + photo) / mib + 64
            large = f" Large SKU peak {built['peak'] / mib:.0f} MiB, target {target:.0f} MiB."
    print(
        f"\nGeometric mean of CPU ratios: all {geomean(ratios[True] + ratios[False]):.2f}, "
        f"no upscaling {geomean(ratios[False]):.2f}, with upscaling {geomean(ratios[True]):.2f}."
        + large
    )


def psnr(a: Image.Image, b: Image.Image) -> float:
    """Return the peak signal-to-noise ratio of two RGB images, in dB."""
    mse = statistics.fmean(rms * rms for rms in ImageStat.Stat(ImageChops.difference(a, b)).rms)
    return 10 * math.log10(255 * 255 / mse) if mse else float("inf")


def filter_study(reps: int) -> None:
    """Print each filter's fidelity (PSNR against the truth) and CPU, upscaling to 2000x3000."""
    rnd = random.Random(5)
    truths = [photos.detailed(rnd, 2000, 3000) for _ in range(3)]
    # The smaller photo as an export tool makes it (LANCZOS), or as a smaller sensor sees it (BOX).
    print(
        "\n| filter | PSNR dB, 0.6x LANCZOS | 0.8x LANCZOS | 0.6x BOX | 0.8x BOX "
        "| CPU s from 0.6x | from 0.8x |\n" + "|---" * 7 + "|"
    )
    for name in ("NEAREST", "BILINEAR", "BICUBIC", "LANCZOS"):
        fidelity, cost = [], []
        for down, scale in itertools.product(("LANCZOS", "BOX"), (0.6, 0.8)):
            size = (round(2000 * scale), round(3000 * scale))
            smalls = [truth.resize(size, Image.Resampling[down]) for truth in truths]
            ups = [small.resize((2000, 3000), Image.Resampling[name]) for small in smalls]
            fidelity.append(statistics.fmean(map(psnr, ups, truths)))
            if down == "BOX":
                continue
            samples = []
            for _ in range(reps):
                cpu = time.process_time()
                smalls[0].resize((2000, 3000), Image.Resampling[name])
                samples.append(time.process_time() - cpu)
            cost.append(statistics.median(samples))
        cells = " | ".join(f"{v:.2f}" for v in fidelity)
        print(f"| {name} | {cells} | {cost[0]:.3f} | {cost[1]:.3f} |")


def encoder_study(skus: Sequence[Path], reps: int) -> None:
    """Print CPU, output size and peak memory of each JPEG encoder option on the collages."""
    print("\n| encoder | CPU s, all SKUs | MB, all SKUs | peak MiB, last SKU |\n|---|---|---|---|")
    for option in ("baseline", "optimize", "progressive"):
        runs = [
            median_of(f"encode:{option}", sku, reps, warm=False, resampling=RESAMPLING.name)
            for sku in skus
        ]
        cpu, size = sum(r["cpu"] for r in runs), sum(r["size"] for r in runs)
        print(f"| {option} | {cpu:.2f} | {size / 1e6:.1f} | {runs[-1]['peak'] / 1024 / 1024:.0f} |")


def main(argv: Sequence[str] | None = None) -> None:
    """Build the data set, then print the benchmark tables."""
    parser = argparse.ArgumentParser(prog="bin/bench-imaging", description=__doc__, epilog=USAGE)
    parser.add_argument("--reps", type=int, default=3, help="fresh processes per figure (median)")
    parser.add_argument("--data", type=Path, help="keep the photos here (reused if present)")
    parser.add_argument("--only", nargs="*", default=[], help="SKU names to run, e.g. large")
    parser.add_argument("--warm", action="store_true", help="also measure a warm worker")
    parser.add_argument("--filters", action="store_true", help="also compare resampling filters")
    parser.add_argument("--encoder", action="store_true", help="also compare encoder options")
    parser.add_argument(
        "--resampling", nargs="*", default=[RESAMPLING.name], help="filters to build with"
    )
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
        per_6mp = [
            len(data) * 6e6 / math.prod(Image.open(io.BytesIO(data)).size) / 1e3
            for sku in skus
            for data in load(sku)
        ]
        print(
            f"{len(skus)} SKUs; inputs JPEG q90 4:2:0, {min(per_6mp):.0f}-{max(per_6mp):.0f} KB "
            f"per 6 MP; output JPEG q{QUALITY} 4:4:4; medians of {args.reps} fresh processes"
        )
        for resampling in args.resampling:
            bench(skus, args.reps, warm=False, resampling=resampling)
            if args.warm:
                bench(skus, args.reps, warm=True, resampling=resampling)
        if args.encoder:
            encoder_study(skus, args.reps)
        if args.filters:
            filter_study(args.reps)


if __name__ == "__main__":
    main()
