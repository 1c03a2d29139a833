"""Hostile photos against real child processes: each ends in one line, the pool lives on."""

from __future__ import annotations

import dataclasses
import io
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from collage import imaging
from collage.errors import OverBudget, PhotoUnreadable, TooLarge, Transient
from collage.imaging import Limits
from collage.isolation.pool import BuildPool
from collage.isolation.process import Budget
from collage.isolation.protocol import MIB
from dev import collages, sandbox
from dev.collages import build_collage, build_in
from dev.photos import jpeg, noisy_jpeg, scan_bomb

NAMES = ["s3://bucket/a.jpg", "s3://bucket/b.jpg"]


@pytest.fixture
def builder() -> Iterator[BuildPool]:
    with collages.pool() as built:
        yield built


def children() -> list[int]:
    """Return the pids of this process's collage children."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines())
            cmdline = (status.parent / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if int(fields.get("PPid", "0")) == os.getpid() and b"collage.isolation.child" in cmdline:
            found.append(int(status.parent.name))
    return found


def still_builds(builder: BuildPool) -> None:
    photo = jpeg(40, 30, seed=1)
    assert build_in(builder, [photo, photo], quality=90).jpeg.startswith(b"\xff\xd8")


def test_collage_is_the_one_build_collage_makes(builder: BuildPool) -> None:
    photos = [jpeg(300, 400, seed=2), jpeg(200, 300, seed=3)]
    built = build_in(builder, photos, quality=90, names=NAMES)
    assert built.jpeg == build_collage(photos, quality=90, names=NAMES)
    assert built.cpu_s > 0
    assert built.peak_rss > 0


def test_errors_come_back_as_build_collage_raises_them(builder: BuildPool) -> None:
    with pytest.raises(PhotoUnreadable, match=r"^photo 2 \(s3://bucket/b.jpg\) is not a JPEG"):
        build_in(builder, [jpeg(20, 20), b"<html>"], names=NAMES)
    with pytest.raises(ValueError, match="quality"):
        build_in(builder, [jpeg(20, 20)], quality=0)
    still_builds(builder)


@pytest.mark.slow
def test_scan_bomb_past_the_cpu_budget_is_stopped() -> None:
    bomb = scan_bomb(6000, 6000, repeats=600)  # 609 scans, 27 MB: about 3.5 s of CPU here
    limits = Limits(max_scans=10**6)  # let the bomb past the structural check, to the budget
    with collages.pool(
        limits=limits, budget=Budget(cpu_s=1, memory_bytes=Budget.of().memory_bytes), processes=1
    ) as builder:
        started = time.monotonic()
        with pytest.raises(OverBudget) as raised:
            # Photo 1 as tall as the bomb: scaled, a thumbnail would spend the budget itself
            # (40x30 to 8000x6000 is 0.7 s of CPU).
            build_in(builder, [jpeg(40, 6000), bomb], names=NAMES)
        elapsed = time.monotonic() - started
        message = raised.value.message
        print(f"\nscan bomb: {message} after {elapsed:.1f} s")
        assert message.startswith(
            "photo 2 (s3://bucket/b.jpg) took over 1 s of CPU to decode, the limit per collage;"
        )
        assert " s CPU, " in message and "MiB peak" in message and "\n" not in message
        still_builds(builder)
    # The structural check alone refuses it in milliseconds, without a child.
    with pytest.raises(TooLarge, match="is a JPEG of 609 scans; at most 100 are allowed"):
        build_collage([bomb])


@pytest.mark.slow
def test_lossless_webp_past_the_memory_budget_is_refused() -> None:
    image = Image.open(io.BytesIO(noisy_jpeg(5000, 4000)))  # 20 MP: 80 MB decoded, 24 MB coded
    webp = io.BytesIO()
    image.save(webp, "WEBP", lossless=True, method=0, quality=0)
    with collages.pool(
        budget=Budget(cpu_s=Budget.of().cpu_s, memory_bytes=150 * MIB), processes=1
    ) as builder:
        with pytest.raises(OverBudget) as raised:
            build_in(builder, [jpeg(40, 30), webp.getvalue()], names=NAMES)
        message = raised.value.message
        print(f"\nlossless WebP: {message}")
        assert message.startswith(
            "photo 2 (s3://bucket/b.jpg) needs more than 150 MiB to build, the limit per collage"
        )
        still_builds(builder)


def _build_in_thread(
    builder: BuildPool, photos: list[bytes], decoding: threading.Event | None = None
) -> tuple[threading.Thread, list]:
    """Build in a thread; set `decoding` once the child starts decoding the last photo."""
    outcome: list = []
    told: list[int] = []

    def on_photo(index: int, label: str) -> None:
        told.append(index)
        if decoding is not None and len(told) == 2 * len(photos):  # read all, then decode
            decoding.set()

    def run() -> None:
        try:
            outcome.append(build_in(builder, photos, names=NAMES[: len(photos)], on_photo=on_photo))
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _busy_child() -> int:
    """Return the child that is spending CPU now."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        before = {pid: _cpu_ticks(pid) for pid in children()}
        time.sleep(0.2)
        grew = {pid: _cpu_ticks(pid) - ticks for pid, ticks in before.items()}
        if grew and max(grew.values()) >= 5:
            return max(grew, key=grew.__getitem__)
    raise AssertionError("no child started building")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "error", "expected"),
    [
        (signal.SIGSEGV, PhotoUnreadable, "cannot be decoded: the decoder crashed (SIGSEGV) while"),
        (signal.SIGKILL, Transient, "the build process was killed (SIGKILL) while"),
    ],
)
def test_a_child_that_dies_fails_its_own_job_only(
    sig: signal.Signals, error: type[Exception], expected: str
) -> None:
    slow = scan_bomb(6000, 6000, repeats=300)  # seconds to decode: time to kill it mid-way
    with collages.pool(limits=Limits(max_scans=10**6), processes=2) as builder:
        still_builds(builder)
        decoding = threading.Event()
        victim_thread, victim = _build_in_thread(builder, [jpeg(40, 30), slow], decoding)
        assert decoding.wait(30)  # photo 2, the slow one, is decoding: its seconds start
        pid = _busy_child()
        bystander_thread, bystander = _build_in_thread(builder, [noisy_jpeg(2000, 3000)])
        os.kill(pid, sig)
        victim_thread.join(60)
        bystander_thread.join(60)
        assert isinstance(victim[0], error), victim
        print(f"\n{sig.name}: {victim[0]}")
        assert expected in str(victim[0]) and "\n" not in str(victim[0])
        assert str(victim[0]).startswith("photo 2 (s3://bucket/b.jpg)") or sig == signal.SIGKILL
        assert bystander[0].jpeg.startswith(b"\xff\xd8"), bystander  # the other job: unharmed
        assert pid not in children()
        still_builds(builder)


@pytest.mark.slow
def test_a_child_that_hangs_is_stopped_at_the_wall_clock_limit() -> None:
    slow = scan_bomb(6000, 6000, repeats=300)
    with collages.pool(
        limits=Limits(max_scans=10**6),
        budget=dataclasses.replace(Budget.of(), wall_s=2),
        processes=1,
    ) as builder:
        still_builds(builder)
        decoding = threading.Event()
        thread, outcome = _build_in_thread(builder, [jpeg(40, 30), slow], decoding)
        assert decoding.wait(30)
        pid = _busy_child()
        os.kill(pid, signal.SIGSTOP)  # alive, spending nothing: only the wall clock can tell
        thread.join(30)
        assert isinstance(outcome[0], OverBudget), outcome
        assert str(outcome[0]).startswith("photo 2 (s3://bucket/b.jpg) took over 2 s to build")
        still_builds(builder)


def test_closed_builder_refuses_work() -> None:
    builder = collages.pool()
    builder.close()
    with pytest.raises(Transient, match="shutting down"):
        build_in(builder, [jpeg(10, 10)])
    assert not children()


@pytest.mark.slow
@pytest.mark.parametrize("kills", [1, 2])
def test_a_crash_while_two_photos_decode_is_built_again_one_at_a_time(kills: int) -> None:
    # Two slow photos of 9 MP decode at the same time (18 MP together, under the pair limit):
    # a crash then could be either's, so the build runs again, one photo at a time.
    slow = [scan_bomb(3000, 3000, repeats=1200, seed=seed) for seed in (1, 2)]
    told: list[tuple[int, str]] = []

    def on_photo(index: int, label: str) -> None:
        told.append((index, label))
        # The 4th report: photo 2 starts decoding while photo 1 still is. The 7th: photo 1
        # starts decoding in the second build, alone.
        if len(told) == 4 or (kills == 2 and len(told) == 7):
            (pid,) = children()
            os.kill(pid, signal.SIGSEGV)

    with collages.pool(limits=Limits(max_scans=10**6), processes=1) as builder:
        started = time.monotonic()
        if kills == 1:
            built = build_in(builder, slow, names=NAMES[:2], on_photo=on_photo)
            assert built.jpeg.startswith(b"\xff\xd8")
            elapsed = time.monotonic() - started
            print(f"\nbuilt again after a crash with two photos decoding: {elapsed:.1f} s")
        else:
            with pytest.raises(PhotoUnreadable) as raised:
                build_in(builder, slow, names=NAMES[:2], on_photo=on_photo)
            print(f"\n{raised.value.message}")
            assert raised.value.message.startswith(
                "photo 1 (s3://bucket/a.jpg) cannot be decoded: the decoder crashed (SIGSEGV)"
            )
        assert [index for index, _ in told] == [1, 2, 1, 2, 1, 2, 1, 2][: len(told)]
        still_builds(builder)


def test_a_size_limit_comes_back_with_the_quality_used(builder: BuildPool) -> None:
    photos = [noisy_jpeg(600, 800, seed=1), noisy_jpeg(500, 800, seed=2)]
    full = build_in(builder, photos)
    assert full.quality == 95
    limited = build_in(builder, photos, max_bytes=len(full.jpeg) * 2 // 3, min_quality=50)
    assert 50 <= limited.quality < 95
    assert len(limited.jpeg) <= len(full.jpeg) * 2 // 3
    assert limited.jpeg == build_collage(photos, quality=limited.quality)
    with pytest.raises(
        TooLarge, match=r"even at JPEG quality 90, the lowest allowed; at most 1,000"
    ):
        build_in(builder, photos, max_bytes=1000, min_quality=90)
    still_builds(builder)


def test_photos_decode_ahead_only_while_a_core_is_free(monkeypatch: pytest.MonkeyPatch) -> None:
    from collage.isolation.process import ChildProcess
    from collage.isolation.protocol import BuildRequest, Built

    seen: list[int] = []
    real_run = ChildProcess.run

    def run(self: ChildProcess, request: BuildRequest, **kwargs: object) -> Built:
        seen.append(request.ahead_pixels)
        return real_run(self, request, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ChildProcess, "run", run)
    slow = scan_bomb(2000, 2000, repeats=300)  # a second or so: time to start another build
    with collages.pool(limits=Limits(max_scans=10**6), processes=2) as builder:
        builder._cores = 2
        first, outcome = _build_in_thread(builder, [slow, jpeg(40, 30)])
        deadline = time.monotonic() + 30
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
        still_builds(builder)  # while the first builds: no core to spare for decoding ahead
        first.join(60)
        still_builds(builder)  # alone again
    assert seen == [imaging.AHEAD_PIXELS, 0, imaging.AHEAD_PIXELS]
    assert outcome[0].jpeg.startswith(b"\xff\xd8")


@pytest.mark.slow
def test_collage_make_forks_its_child_and_a_crash_there_is_one_line(tmp_path: Path) -> None:
    # One interpreter: the child is forked from the command, not started afresh; a crash in it
    # still ends as the one line the worker's children give.
    import subprocess

    from tests.support.workers import collage_command

    big = tmp_path / "big.jpg"
    big.write_bytes(noisy_jpeg(6000, 6000))
    command = subprocess.Popen(
        [*collage_command(), "make", str(big), "-o", str(tmp_path / "out.jpg")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    children_of = Path(f"/proc/{command.pid}/task/{command.pid}/children")

    def forked() -> list[int]:
        found = [int(pid) for pid in children_of.read_text().split()]
        assert command.poll() is None, "collage make ended before its child was seen"
        return found

    sandbox.wait_until(lambda: forked(), timeout=30, what="the forked build child")
    [child] = forked()
    cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
    assert b"collage.isolation.child" not in cmdline  # the same program: forked, not started
    time.sleep(0.3)  # into the decoding
    os.kill(child, signal.SIGSEGV)
    out, err = command.communicate(timeout=60)
    assert command.returncode == 1, (out, err)
    assert err.count("\n") == 1 and "the decoder crashed (SIGSEGV)" in err, err
    assert not (tmp_path / "out.jpg").exists()


def test_a_child_reuses_its_memory_from_one_build_to_the_next(builder: BuildPool) -> None:
    # glibc mapped each large buffer afresh: ~6,000 page faults (23 MB zeroed) per small SKU.
    sku = [noisy_jpeg(1200, 1800, seed=1), noisy_jpeg(1000, 1500, seed=2)]
    for _ in range(3):  # the heap grows to what a build of this SKU needs
        build_in(builder, sku)
    [child] = children()

    def minor_faults() -> int:
        return int(Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[7])

    before = minor_faults()
    for _ in range(3):
        build_in(builder, sku)
    per_build = (minor_faults() - before) / 3
    print(f"\npage faults per build, warm: {per_build:,.0f}")
    assert per_build < 2_000
