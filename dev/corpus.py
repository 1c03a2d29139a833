"""Run every image of a real corpus (Pillow's own test images) through the bounded build pool.

    python -m dev.corpus [--dir DIR]     # without --dir: pip downloads Pillow's sdist first

Each file is one single-photo collage in a child process under the production budget. Prints the
counts: files, built, refused by error class and reason, and the failures that must never happen
(an unexpected error, a hang, a partial JPEG), with the peak RSS of the children.
"""

from __future__ import annotations

import argparse
import collections
import io
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from PIL import Image

from collage.errors import CollageError
from collage.isolation.protocol import MIB
from dev import collages

PILLOW = "pillow==13.0.0"


def fetch_pillow_images(into: Path) -> Path:
    """Download Pillow's source distribution and unpack its Tests/images folder."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-binary", ":all:", "--no-deps",
         "-d", str(into), PILLOW],
        check=True,
    )  # fmt: skip
    archive = next(into.glob("pillow-*.tar.gz"))
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if "/Tests/images/" in m.name and m.isfile()]
        tar.extractall(into, members=members, filter="data")
    return next(into.glob("pillow-*/Tests/images"))


def reason_of(message: str) -> str:
    """Turn a one-line message into its class: the words without the photo's own numbers."""
    text = re.sub(r"^photo \d+( \([^)]*\))?", "photo", message)
    text = re.sub(r"\b[\d,.]+\b", "N", text)
    text = re.sub(r"starting b'.*", "starting ...", text)
    return text[:90]


def main() -> None:
    """Build every file and print the counts as markdown."""
    parser = argparse.ArgumentParser(prog="dev.corpus", description=__doc__)
    parser.add_argument("--dir", type=Path, help="a folder of images (default: Pillow's)")
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="corpus-"))
    folder = args.dir or fetch_pillow_images(scratch)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    outcomes: collections.Counter[str] = collections.Counter()
    reasons: collections.Counter[tuple[str, str]] = collections.Counter()
    bad: list[str] = []
    peak, slowest, started = 0, (0.0, ""), time.monotonic()
    with collages.pool(processes=args.processes) as builder:
        for path in files:
            began = time.monotonic()
            try:
                built = collages.build_in(builder, [path.read_bytes()], names=[path.name])
            except CollageError as exc:
                outcomes["refused"] += 1
                reasons[(type(exc).__name__, reason_of(exc.message))] += 1
                if "\n" in exc.message:
                    bad.append(f"{path.name}: message of several lines")
            except Exception as exc:  # never expected: a bug in the imaging path
                outcomes["unexpected error"] += 1
                bad.append(f"{path.name}: {type(exc).__name__}: {exc}")
            else:
                outcomes["built"] += 1
                peak = max(peak, built.peak_rss)
                try:
                    with Image.open(io.BytesIO(built.jpeg)) as out:
                        out.load()  # a partial JPEG would raise here
                except Exception as exc:
                    bad.append(f"{path.name}: partial output: {exc}")
            slowest = max(slowest, (time.monotonic() - began, path.name))
    print(f"| {folder.parent.parent.name} Tests/images | count |\n|---|---|")
    print(f"| files | {len(files)} |")
    for outcome, count in outcomes.most_common():
        print(f"| {outcome} | {count} |")
    print(f"| never expected (traceback, hang, partial JPEG, several lines) | {len(bad)} |")
    print(
        f"\nPeak RSS of a build: {peak / MIB:,.0f} MiB; slowest file {slowest[1]} "
        f"{slowest[0]:.1f} s; all in {time.monotonic() - started:.0f} s.\n"
    )
    print("| refused as | reason | files |\n|---|---|---|")
    for (kind, reason), count in reasons.most_common():
        print(f"| {kind} | {reason.replace('|', '/')} | {count} |")
    for line in bad:
        print(f"- {line}")


if __name__ == "__main__":
    main()
