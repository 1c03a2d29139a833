"""One build child process seen from the worker: its pipes, its job, and what its death means.

The child (build_child.py) tells which photos it starts and finishes decoding; when it dies,
the photo it was decoding is the one named, with what the child had spent.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, Any

from collage.build_child import HEADER, MIB, read_exact, write_frame
from collage.errors import CollageError, OverBudget, PhotoUnreadable, Transient
from collage.imaging import Limits

# Signals a decoder raises on itself when its input breaks it (SIGKILL is another story).
_CRASHES = {signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGILL, signal.SIGFPE}


@dataclass(frozen=True)
class Collage:
    """A collage built in a child process, with what it cost there."""

    jpeg: bytes
    cpu_s: float
    peak_rss: int  # bytes: the child's peak resident memory during this job
    quality: int = 95  # the JPEG quality used: lower than asked only to fit max_bytes


@dataclass(frozen=True)
class Budget:
    """What one build may use; past it the child is stopped and the SKU gets 'error'."""

    # The slowest real collage at the limits (150 MP canvas, 64 MP photos, ICC conversions)
    # costs about 6 s of CPU here: 30 s stops a decoding bomb long before a worker notices.
    cpu_s: float = 30.0
    # Address space a job may add to a child's own (imports, about 280 MiB). The worst accepted
    # job at the limits, a 64 MP lossless WebP on a 150 MP canvas, peaks at 1.6 GiB RSS
    # (docs/imaging.md: Pillow's WebP decoder holds 3 copies of the photo): two fit in 4 GB.
    memory_bytes: int = 1792 * MIB
    # Wall clock per job, for a child that hangs without spending CPU; generous under load.
    wall_s: float = 120.0


class TwoDecoding(Exception):
    """The child crashed while decoding two photos at once: which one did it is unknown."""


class BuildProcess:
    """One child process and the pipes to it."""

    def __init__(self, process: subprocess.Popen[bytes], stderr: IO[bytes], budget: Budget):
        self.process, self.stderr, self.budget = process, stderr, budget
        self.jobs = 0
        self.ready = False
        self.told: tuple[int, str] | None = None  # the last photo the child started on
        self.decoding: dict[int, str] = {}  # photos started and not decoded yet, by index

    @classmethod
    def start(cls, budget: Budget) -> BuildProcess:
        env = {
            **os.environ,
            # One job, one core: numpy's OpenBLAS and OpenCV would start a thread per core.
            "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            # One malloc arena for the decoding threads too: glibc would reserve 64 MiB of
            # address space per thread's arena, which RLIMIT_AS counts against the budget.
            "MALLOC_ARENA_MAX": "1",
            # Keep freed canvas memory for the next job (docs/imaging.md: the warm worker).
            "PILLOW_BLOCKS_MAX": os.environ.get("PILLOW_BLOCKS_MAX", "32"),
            "COLLAGE_CHILD_CPU_S": repr(budget.cpu_s),
            "COLLAGE_CHILD_MEMORY_BYTES": str(budget.memory_bytes),
            "COLLAGE_CHILD_PARENT_PID": str(os.getpid()),
        }
        # libtiff and libjpeg print warnings straight to file descriptor 2: keep them out of the
        # worker's log stream, and at hand for a crash report.
        stderr = tempfile.TemporaryFile(prefix="collage-child-")  # noqa: SIM115 - the child's
        process = subprocess.Popen(
            [sys.executable, "-m", "collage.build_child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
            close_fds=True,
        )
        return cls(process, stderr, budget)

    def alive(self) -> bool:
        return self.process.poll() is None

    def run(
        self,
        photos: Sequence[bytes],
        *,
        options: dict[str, Any],
        limits: Limits,
        on_photo: Callable[[int, str], object] | None = None,
    ) -> Collage:
        """Build one collage with imaging.build's `options`; raise what the child's end means."""
        deadline = time.monotonic() + self.budget.wall_s
        if not self.ready:
            self._expect("ready", time.monotonic() + 60)
            self.ready = True
        self.jobs += 1
        self.told, self.decoding = None, {}
        job = {"photos": list(photos), "limits": limits, **options}
        try:
            write_frame(self.process.stdin, job)
        except (BrokenPipeError, OSError):
            self._died(deadline)
        while True:
            frame = self._read(deadline)
            kind = frame[0]
            if kind == "photo":
                self.told = frame[1]
                if on_photo is not None:
                    on_photo(*frame[1])
            elif kind == "decoding" and self.told is not None:
                self.decoding[frame[1]] = self.told[1]
            elif kind == "decoded":
                self.decoding.pop(frame[1], None)
            elif kind == "built":
                _, jpeg, quality, cpu_s, peak = frame
                return Collage(jpeg=jpeg, cpu_s=cpu_s, peak_rss=peak, quality=quality)
            elif kind == "failed":
                _, error_class, message = frame
                raise _error_class(error_class)(message)
            elif kind == "bug":
                raise RuntimeError(frame[1])
            elif kind == "memory":
                _, label, cpu_s, peak = frame
                raise OverBudget(
                    f"{label or 'the collage'} needs more than {self.budget.memory_bytes // MIB:,}"
                    f" MiB to build, the limit per collage ({cpu_s:.1f} s CPU, "
                    f"{peak / MIB:,.0f} MiB peak)"
                )

    def _where(self) -> tuple[str, str]:
        """Name the photo the child was on, and what it was doing with it."""
        if self.decoding:  # the earlier of two decoding photos has been at it longer
            return self.decoding[min(self.decoding)], "decoding"
        if self.told is not None:
            return self.told[1], "decoding"
        return "the collage", "building"

    def _expect(self, kind: str, deadline: float) -> None:
        frame = self._read(deadline)
        if frame[0] != kind:
            raise RuntimeError(f"collage child said {frame[0]!r}, not {kind!r}")

    def _read(self, deadline: float) -> tuple[Any, ...]:
        stdout = self.process.stdout
        assert stdout is not None
        try:
            header = read_exact(stdout, HEADER.size, deadline)
            if header is None:
                self._died(deadline)
            body = read_exact(stdout, HEADER.unpack(header)[0], deadline)
            if body is None:
                self._died(deadline)
        except TimeoutError:
            self.kill()
            raise OverBudget(
                f"{self._where()[0]} took over {self.budget.wall_s:.0f} s to build, the limit per"
                " collage; it was stopped"
            ) from None
        return pickle.loads(body)  # noqa: S301 - written by this module's own child

    def _died(self, deadline: float) -> None:
        """Raise the error a child's death means, with what it had spent."""
        try:
            _, status, usage = os.wait4(self.process.pid, 0)
        except ChildProcessError:
            status, usage = 0, None
        self.process.returncode = os.waitstatus_to_exitcode(status)
        cpu = f"{usage.ru_utime + usage.ru_stime:.1f} s CPU" if usage else "CPU unknown"
        peak = f"{usage.ru_maxrss * 1024 / MIB:,.0f} MiB peak" if usage else "peak unknown"
        where, doing = self._where()
        code = self.process.returncode
        self.stderr.close()
        if code < 0 and (-code in _CRASHES or code == -signal.SIGXCPU) and len(self.decoding) > 1:
            raise TwoDecoding(f"{' or '.join(self.decoding.values())} ({code})")
        if code == -signal.SIGXCPU:
            raise OverBudget(
                f"{where} took over {self.budget.cpu_s:.0f} s of CPU to decode, the limit per"
                f" collage; it was stopped ({cpu}, {peak})"
            )
        if code < 0 and -code in _CRASHES:
            name = signal.Signals(-code).name
            raise PhotoUnreadable(
                f"{where} cannot be decoded: the decoder crashed ({name}) while {doing} it"
                f" ({cpu}, {peak})"
            )
        if code == -signal.SIGKILL:
            # Killed from outside (the kernel's OOM killer, an operator): maybe not this SKU's
            # fault, so retried like an outage, a bounded number of times.
            raise Transient(f"the build process was killed (SIGKILL) while {doing} {where}")
        raise Transient(f"the build process exited ({code}) while {doing} {where}")

    def kill(self) -> None:
        """End the child now, whatever it is doing."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._close_pipes()

    def stop(self) -> None:
        """Let an idle child finish: end of input, then a kill if it lingers."""
        try:
            if self.process.stdin:
                self.process.stdin.close()
            self.process.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        self._close_pipes()

    def _close_pipes(self) -> None:
        for pipe in (self.process.stdin, self.process.stdout, self.stderr):
            if pipe and not pipe.closed:
                pipe.close()


def _error_class(name: str) -> type[CollageError]:
    """Return the CollageError subclass of that name."""
    from collage import errors

    found = getattr(errors, name, None)
    if isinstance(found, type) and issubclass(found, CollageError):
        return found
    raise RuntimeError(f"collage child raised an unknown error class {name!r}")
