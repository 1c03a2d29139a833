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

from collage import allocator, imaging
from collage.imaging import RESAMPLING, compose, plan_layout
from dev import collages, photos
from dev.collages import build_collage

QUALITY = 95
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
# Pillow keeps up to this many freed 16 MB blocks for reuse (--warm): a worker that sets it stops
# paying the kernel for a fresh canvas on every job.
WARM_BLOCKS = "32"
USAGE = (
    "Full run (--warm --resampler --ipc --fit --encoder --filters): about 30 minutes on 2 cores."
)


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


# The floor; the collage one photo at a time (the path before decode-ahead); the collage with
# the next photo decoding while one is pasted (today's). "pillow" (Pillow's resampler instead of
# OpenCV's, one photo at a time) can be asked for with --kinds.
KINDS = ("floor", "one", "ahead")
LABELS = {
    "one": "one photo at a time",
    "ahead": "decode-ahead (today)",
    "pillow": "Pillow BICUBIC, one at a time",
}


def measure(kinds: Sequence[str], sku: Path, *, warm: bool) -> dict[str, dict[str, float]]:
    """Run each kind of job on a SKU in this process; warm, each runs once unmeasured first."""
    photos = load(sku)
    if resampling := os.environ.get("BENCH_RESAMPLING"):
        compose.RESAMPLING = Image.Resampling[resampling]
    canvas = None
    if any(kind == "floor" or kind.startswith("encode") for kind in kinds):
        canvas = Image.open(io.BytesIO(build_collage(photos, quality=QUALITY)))
        canvas.load()
    if any(kind in ("one", "ahead") for kind in kinds):
        compose.RESAMPLER = "opencv"
        imaging.load_resampler()  # as a worker's child process does when it starts

    def job(kind: str) -> int:
        if kind in ("one", "ahead", "pillow"):
            compose.RESAMPLER = "pillow" if kind == "pillow" else "opencv"
            ahead = imaging.AHEAD_PIXELS if kind == "ahead" else 0
            return len(build_collage(photos, quality=QUALITY, ahead_pixels=ahead))
        if kind == "floor":
            return floor(photos, canvas)
        option = kind.partition(":")[2]  # encode:optimize, encode:progressive, encode:baseline
        return len(encode(canvas, **({option: True} if option != "baseline" else {})))

    if warm:
        allocator.reuse_freed_memory(one_arena=True)  # as a worker's build child does
        for kind in kinds:
            job(kind)
    results = {}
    for kind in kinds:
        # Pillow allocates outside Python's allocator, where tracemalloc cannot see: reset the
        # kernel's peak-RSS mark instead, and read it after the job.
        Path("/proc/self/clear_refs").write_text("5")
        rss_before = _proc_status("VmRSS")
        wall, cpu = time.perf_counter(), time.process_time()
        size = job(kind)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        peak = _proc_status("VmHWM") - rss_before
        results[kind] = {"cpu": cpu, "wall": wall, "peak": peak, "size": size}
    # What the floor leaves out and a collage cannot: a canvas of fresh memory, the kernel zeroes.
    alloc = time.process_time()
    layout = plan_layout([Image.open(io.BytesIO(p)).size for p in photos])
    Image.new("RGB", (layout.width, layout.height), 0)
    results[kinds[0]]["alloc"] = time.process_time() - alloc
    return results


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


def child(
    kinds: Sequence[str], sku: Path, *, warm: bool, resampling: str
) -> dict[str, dict[str, float]]:
    """Measure in a fresh process, so that a cold job's peak RSS is its own and nothing else's."""
    env = dict(os.environ, BENCH_RESAMPLING=resampling, OPENBLAS_NUM_THREADS="1")
    if warm:
        env["PILLOW_BLOCKS_MAX"] = WARM_BLOCKS
    command = [sys.executable, "-m", "dev.bench_imaging", "--child", ",".join(kinds), str(sku)]
    command += ["--warm"] if warm else []
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def rounds(
    skus: Sequence[Path], kinds: Sequence[str], reps: int, *, warm: bool, resampling: str
) -> dict[str, dict[str, list[dict[str, float]]]]:
    """Measure every kind on every SKU `reps` times, interleaved, each in a fresh process.

    Cold, each kind has its own process (its own peak RSS); warm, one process runs every kind
    once unmeasured then once measured. The order of kinds rotates from round to round, so that
    a noisy neighbour hurts every kind alike.
    """
    samples: dict[str, dict[str, list[dict[str, float]]]] = {
        sku.name: {kind: [] for kind in kinds} for sku in skus
    }
    for rep in range(reps):
        for sku in skus:
            order = [kinds[(i + rep) % len(kinds)] for i in range(len(kinds))]
            if warm:
                measured = child(order, sku, warm=True, resampling=resampling)
            else:
                measured = {}
                for kind in order:
                    measured.update(child([kind], sku, warm=False, resampling=resampling))
            for kind, figures in measured.items():
                samples[sku.name][kind].append(figures)
    return samples


def median(samples: Sequence[dict[str, float]], key: str) -> float:
    """Return the median of one figure over the rounds."""
    return statistics.median(s[key] for s in samples if key in s)


def geomean(values: Sequence[float]) -> float:
    """Return the geometric mean."""
    return math.exp(statistics.fmean(math.log(v) for v in values)) if values else float("nan")


def bench(
    skus: Sequence[Path], reps: int, *, warm: bool, resampling: str, kinds: Sequence[str] = KINDS
) -> dict[str, Any]:
    """Print one markdown row per SKU, each path against the floor, then the geometric means."""
    mib = 1024 * 1024
    title = f"warm (PILLOW_BLOCKS_MAX={WARM_BLOCKS}, each job's second run)" if warm else "cold"
    samples = rounds(skus, kinds, reps, warm=warm, resampling=resampling)
    paths = [kind for kind in kinds if kind != "floor"]
    last = paths[-1]
    print(f"\n### {title}: CPU seconds, and ratios to the floor measured in the same run\n")
    header = "| SKU | photos | upscaled | collage px | out MB | floor CPU s |"
    header += "".join(f" {LABELS[k]}: CPU s | ratio | wall s |" for k in paths)
    columns = 6 + 3 * len(paths)
    if not warm:
        header += " fresh canvas s |" + "".join(f" {LABELS[k]}: peak MiB |" for k in paths)
        columns += 1 + len(paths)
    print(header + "\n" + "|---" * columns + "|")
    ratios: dict[str, dict[bool, list[float]]] = {k: {True: [], False: []} for k in paths}
    spreads = []
    for sku in skus:
        photos = load(sku)
        sizes = [Image.open(io.BytesIO(p)).size for p in photos]
        layout = plan_layout(sizes)
        upscaled = sum(h < layout.height for _, h in sizes)
        got = samples[sku.name]
        base = median(got["floor"], "cpu")
        cpu = {kind: median(got[kind], "cpu") for kind in paths}
        for kind in paths:
            ratios[kind][upscaled > 0].append(cpu[kind] / base)
        # Noise: how far one round's ratio strays from the median, for the last path.
        per_round = [n["cpu"] / f["cpu"] for n, f in zip(got[last], got["floor"], strict=True)]
        spreads.append((max(per_round) - min(per_round)) / statistics.median(per_round))
        row = (
            f"| {sku.name} | {len(photos)} | {upscaled} | {layout.width}x{layout.height} "
            f"| {median(got[last], 'size') / 1e6:.1f} | {base:.3f} |"
        )
        row += "".join(
            f" {cpu[k]:.3f} | {cpu[k] / base:.2f} | {median(got[k], 'wall'):.3f} |" for k in paths
        )
        if not warm:
            row += f" {median(got['floor'], 'alloc'):.3f} |"
            row += "".join(f" {median(got[k], 'peak') / mib:.0f} |" for k in paths)
        print(row)
    print(
        "\n| CPU / floor, geometric mean | all | no upscaling | with upscaling |\n|---|---|---|---|"
    )
    means = {}
    for kind in paths:
        by = ratios[kind]
        means[kind] = (geomean(by[True] + by[False]), geomean(by[False]), geomean(by[True]))
        print(f"| {LABELS[kind]} | " + " | ".join(f"{v:.2f}" for v in means[kind]) + " |")
    if {"one", "ahead"} <= set(paths):
        walls = {k: geomean([median(samples[s.name][k], "wall") for s in skus]) for k in paths}
        print(
            f"\nWall time, geometric mean over SKUs: {walls['one']:.3f} s one photo at a time, "
            f"{walls['ahead']:.3f} s with decode-ahead ({walls['ahead'] / walls['one'] - 1:+.0%})."
        )
    print(
        f"\n{len(ratios[last][False])} SKUs without upscaling, "
        f"{len(ratios[last][True])} with. Noise: a round's {last}/floor ratio strays "
        f"{statistics.median(spreads):.0%} from its median (median over SKUs; worst "
        f"{max(spreads):.0%}), {reps} interleaved rounds."
    )
    return means


def resampler_study(reps: int) -> None:
    """Print the resampler alone, upscaling 1600x2400 to 2000x3000, in ms per output megapixel."""
    import cv2
    import numpy as np

    compose.RESAMPLER = "opencv"
    imaging.load_resampler()
    source = photos.product(random.Random(7), 1600, 2400)
    size, output_mp = (2000, 3000), 6.0
    array = np.frombuffer(source.tobytes("raw", "RGBX"), np.uint8).reshape(2400, 1600, 4)

    def pillow(name: str) -> None:
        source.resize(size, Image.Resampling[name])

    def opencv_panel() -> None:
        imaging.scale(source.copy(), size)

    def copy_only() -> None:
        source.copy()

    cases = {
        "Pillow BICUBIC (before OpenCV)": lambda: pillow("BICUBIC"),
        "Pillow LANCZOS": lambda: pillow("LANCZOS"),
        "OpenCV INTER_CUBIC, cv2.resize alone": lambda: cv2.resize(
            array, size, interpolation=cv2.INTER_CUBIC
        ),
        "OpenCV INTER_CUBIC, imaging.scale (with the copies in and out)": opencv_panel,
    }
    spent = {name: [] for name in cases}
    base = []
    for _ in range(max(reps, 5)):
        for name, case in cases.items():
            cpu = time.process_time()
            case()
            spent[name].append(time.process_time() - cpu)
        cpu = time.process_time()
        copy_only()
        base.append(time.process_time() - cpu)
    print("\n| resampler, 1600x2400 to 2000x3000 | ms per output MP |\n|---|---|")
    for name, values in spent.items():
        extra = statistics.median(base) if "imaging.scale" in name else 0.0
        print(f"| {name} | {(statistics.median(values) - extra) * 1000 / output_mp:.2f} |")


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
        kind = f"encode:{option}"
        got = rounds(skus, [kind], reps, warm=False, resampling=RESAMPLING.name)
        cpu = sum(median(got[sku.name][kind], "cpu") for sku in skus)
        size = sum(median(got[sku.name][kind], "size") for sku in skus)
        peak = median(got[skus[-1].name][kind], "peak") / 1024 / 1024
        print(f"| {option} | {cpu:.2f} | {size / 1e6:.1f} | {peak:.0f} |")


def _warm_child(mode: str, sku: Path, *extra: str) -> dict[str, Any]:
    """Run one of the studies below in a fresh warm process (as a worker's child is)."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PILLOW_BLOCKS_MAX=WARM_BLOCKS)
    command = [sys.executable, "-m", "dev.bench_imaging", f"--{mode}-child", str(sku), *extra]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def measure_ipc(sku: Path, reps: int) -> dict[str, Any]:
    """Build a SKU in this process and in a build pool's child, interleaved, both warm."""

    photos = load(sku)
    imaging.load_resampler()
    got: dict[str, list[float]] = {"here": [], "child": [], "parent_cpu": [], "child_cpu": []}
    with collages.pool() as builder:
        build_collage(photos, quality=QUALITY)
        collages.build_in(builder, photos, quality=QUALITY)  # each side warm: one unmeasured
        for _ in range(reps):
            wall = time.perf_counter()
            build_collage(photos, quality=QUALITY)
            got["here"].append(time.perf_counter() - wall)
            wall, cpu = time.perf_counter(), time.process_time()
            built = collages.build_in(builder, photos, quality=QUALITY)
            got["child"].append(time.perf_counter() - wall)
            got["parent_cpu"].append(time.process_time() - cpu)
            got["child_cpu"].append(built.cpu_s)
    moved = sum(map(len, photos)) + len(built.jpeg)
    return {key: statistics.median(values) for key, values in got.items()} | {"bytes": moved}


def ipc_study(skus: Sequence[Path], reps: int) -> None:
    """Print what a build pool's child adds to each build: pickles, pipes, frames."""
    print(
        "\n| SKU | MB in + out | in-process wall s | in a child wall s | added ms "
        "| parent CPU ms |\n|---|---|---|---|---|---|"
    )
    added = []
    for sku in skus:
        got = _warm_child("ipc", sku, str(max(reps, 5)))
        extra = (got["child"] - got["here"]) * 1000
        added.append(extra / (got["bytes"] / 1e6))
        print(
            f"| {sku.name} | {got['bytes'] / 1e6:.1f} | {got['here']:.3f} | {got['child']:.3f} "
            f"| {extra:.0f} | {got['parent_cpu'] * 1000:.0f} |"
        )
    print(f"\nAdded wall time: a median {statistics.median(added):.1f} ms per MB moved.")


def make_study(skus: Sequence[Path], reps: int) -> None:
    """Print a cold `collage make` (its whole process tree) against the floor, interleaved."""
    print(
        "\n| SKU | upscaled | floor CPU s (cold / warm) | `collage make` CPU s |"
        " make / cold floor | make / warm floor |\n|---|---|---|---|---|---|"
    )
    ratios: list[float] = []
    for sku in skus:
        sizes = [Image.open(io.BytesIO(data)).size for data in load(sku)]
        upscaled = sum(h < max(h for _, h in sizes) for _, h in sizes)
        cold, warm, made = [], [], []
        for _ in range(reps):
            cold.append(child(["floor"], sku, warm=False, resampling="BICUBIC")["floor"]["cpu"])
            warm.append(child(["floor"], sku, warm=True, resampling="BICUBIC")["floor"]["cpu"])
            made.append(_make_cpu(sku))
        floor_cold, floor_warm = statistics.median(cold), statistics.median(warm)
        make_cpu = statistics.median(made)
        if upscaled:
            ratios.append(make_cpu / floor_warm)
        print(
            f"| {sku.name} | {upscaled} | {floor_cold:.3f} / {floor_warm:.3f} | {make_cpu:.3f} |"
            f" {make_cpu / floor_cold:.2f}x | {make_cpu / floor_warm:.2f}x |",
            flush=True,
        )
    if ratios:
        mean = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
        print(f"\nUpscaling SKUs, cold `collage make` / warm floor, geometric mean: {mean:.2f}x")


def _make_cpu(sku: Path) -> float:
    """CPU seconds of `collage make` on a SKU, the command and its build child together."""
    with tempfile.TemporaryDirectory(prefix="bench-make-") as scratch:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "collage",
                "make",
                *map(str, sorted(sku.glob("*.jpg"))),
                "-o",
                f"{scratch}/out.jpg",
            ],
            stdout=subprocess.DEVNULL,
        )
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            raise RuntimeError(f"collage make failed on {sku.name}")
    return usage.ru_utime + usage.ru_stime


def measure_fit(sku: Path, limits: Sequence[int], reps: int) -> list[dict[str, Any]]:
    """Build a SKU with each byte limit; count the full encodes and the sampled ones."""
    from collage.imaging import encode as encoding

    photos = load(sku)
    imaging.load_resampler()
    calls: list[int] = []
    original = encoding.encode

    def counted(image: Image.Image, **options: Any) -> bytes:
        calls.append(image.height)
        return original(image, **options)

    encoding.encode = counted  # type: ignore[assignment]
    full_height = Image.open(io.BytesIO(build_collage(photos))).height
    rows = []
    for max_bytes in [None, *limits]:
        cpu_s, built = [], None
        for _ in range(reps):
            calls.clear()
            cpu = time.process_time()
            try:
                built = collages.build(photos, quality=QUALITY, max_bytes=max_bytes)
            except imaging.TooLarge as exc:
                built = exc
            cpu_s.append(time.process_time() - cpu)
        fulls = sum(height == full_height for height in calls)
        rows.append(
            {
                "max_bytes": max_bytes,
                "cpu": statistics.median(cpu_s),
                "quality": getattr(built, "quality", None),
                "size": len(built.jpeg) if isinstance(built, imaging.Encoded) else None,
                "error": str(built) if isinstance(built, Exception) else "",
                "full": fulls,
                "sampled": len(calls) - fulls,
            }
        )
    return rows


def fit_study(skus: Sequence[Path], limits: Sequence[int], reps: int) -> None:
    """Print the quality each byte limit ends at, and what the search costs, warm."""
    print(
        "\n| SKU | max bytes | quality | bytes | CPU s | + CPU | full encodes | sampled encodes "
        "|\n|---|---|---|---|---|---|---|---|"
    )
    for sku in skus:
        rows = _warm_child("fit", sku, str(reps), *map(str, limits))
        base = rows[0]["cpu"]
        for row in rows:
            limit = f"{row['max_bytes']:,}" if row["max_bytes"] else "none"
            size = f"{row['size']:,}" if row["size"] else row["error"][:70]
            print(
                f"| {sku.name} | {limit} | {row['quality'] or '-'} | {size} | {row['cpu']:.3f} "
                f"| {row['cpu'] / base - 1:+.0%} | {row['full']} | {row['sampled']} |"
            )


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
    parser.add_argument("--resampler", action="store_true", help="also time the resamplers alone")
    parser.add_argument(
        "--kinds", nargs="*", default=list(KINDS[1:]), help=f"paths to compare: {list(LABELS)}"
    )
    parser.add_argument("--ipc", action="store_true", help="also time a pool child's overhead")
    parser.add_argument(
        "--make", action="store_true", help="also time a cold `collage make` against the floor"
    )
    parser.add_argument(
        "--fit", nargs="*", type=int, help="also build the large SKU under these byte limits"
    )
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--ipc-child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--fit-child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kinds, sku = args.child
        print(json.dumps(measure(kinds.split(","), Path(sku), warm=args.warm)))
        return
    if args.ipc_child:
        print(json.dumps(measure_ipc(Path(args.ipc_child[0]), int(args.ipc_child[1]))))
        return
    if args.fit_child:
        sku, reps, *limits = args.fit_child
        print(json.dumps(measure_fit(Path(sku), [int(v) for v in limits], int(reps))))
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
            f"per 6 MP; output JPEG q{QUALITY} 4:4:4; medians of {args.reps} interleaved rounds"
        )
        kinds = ("floor", *args.kinds)
        for resampling in args.resampling if args.kinds else ():
            bench(skus, args.reps, warm=False, resampling=resampling, kinds=kinds)
            if args.warm:
                bench(skus, args.reps, warm=True, resampling=resampling, kinds=kinds)
        if args.ipc:
            ipc_study(skus, args.reps)
        if args.make:
            make_study(skus, args.reps)
        if args.fit is not None:
            large = [sku for sku in skus if sku.name == "large"] or skus[-1:]
            fit_study(large, args.fit or [10_000_000, 10 * 1024 * 1024, 5_000_000], args.reps)
        if args.resampler:
            resampler_study(args.reps)
        if args.encoder:
            encoder_study(skus, args.reps)
        if args.filters:
            filter_study(args.reps)


if __name__ == "__main__":
    main()
