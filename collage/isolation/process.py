"""The worker's handle on one build child: its pipes, its build, and what its death means.

The child (isolation/child.py) tells which photos it starts and finishes decoding; when it dies,
the photo it was decoding is the one named, with what the child had spent.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, NoReturn

from collage import errors
from collage.errors import CollageError, OverBudget, PhotoUnreadable, Transient
from collage.isolation.forked import Forked, Process
from collage.isolation.protocol import (
    MIB,
    BuildRequest,
    Built,
    Decoding,
    Failed,
    Frame,
    OutOfMemory,
    PhotoStarted,
    Ready,
    read_frame,
    widen,
    write_frame,
)
from collage.settings import DEFAULT_BUILD_CPU_S, DEFAULT_BUILD_MEMORY_MB

OnPhoto = Callable[[int, str], object]
STARTUP_S = 60.0  # imports on a loaded machine; a child that takes longer is broken

# Signals a decoder raises on itself when its input breaks it (SIGKILL is another story).
_CRASHES = {signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGILL, signal.SIGFPE}


@dataclass(frozen=True, kw_only=True)
class Budget:
    """What one build may use; past it the child is stopped and the SKU gets 'error'."""

    cpu_s: float  # COLLAGE_CPU_LIMIT_S
    memory_bytes: int  # COLLAGE_MEMORY_LIMIT_MB: what a build may add to the child's imports
    # Wall clock per build, for a child that hangs without spending CPU; generous under load.
    wall_s: float = 120.0

    @classmethod
    def of(
        cls, *, cpu_s: int = DEFAULT_BUILD_CPU_S, memory_mb: int = DEFAULT_BUILD_MEMORY_MB
    ) -> Budget:
        """A budget in the settings' units (the defaults are the settings' own)."""
        return cls(cpu_s=float(cpu_s), memory_bytes=memory_mb * MIB)


class TwoDecoding(Exception):
    """The child crashed while decoding two photos at once: which one did it is unknown."""


class ChildProcess:
    """One build child and the pipes to it."""

    def __init__(self, process: Process, stderr: IO[bytes], budget: Budget):
        self.process, self.stderr, self.budget = process, stderr, budget
        self.jobs = 0
        self.ready = False
        self.told: tuple[int, str] | None = None  # the last photo the child started on
        self.decoding: dict[int, str] = {}  # photos started and not decoded yet, by index

    @classmethod
    def start(cls, budget: Budget) -> ChildProcess:
        """Start a child; it imports what it needs while the worker goes on."""
        env = {**os.environ, **_child_environment(budget)}
        # libtiff and libjpeg print warnings straight to file descriptor 2: keep them out of the
        # worker's log stream, and at hand for a crash report.
        stderr = tempfile.TemporaryFile(prefix="collage-child-")  # noqa: SIM115 - the child's
        process = subprocess.Popen(
            [sys.executable, "-m", "collage.isolation.child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
            close_fds=True,
        )
        assert process.stdin is not None and process.stdout is not None
        widen(process.stdin, process.stdout)
        return cls(process, stderr, budget)

    @classmethod
    def fork(cls, budget: Budget) -> ChildProcess:
        """Fork a child from this process: one interpreter, its imports shared, same bounds.

        For a one-shot command with a single thread (`collage make`); the worker, with its
        threads and event loop, starts fresh interpreters instead.
        """
        from collage.isolation import child

        requests, to_child = os.pipe()
        from_child, frames = os.pipe()
        stderr = tempfile.TemporaryFile(prefix="collage-child-")  # noqa: SIM115 - the child's
        environment = _child_environment(budget)
        pid = os.fork()
        if pid == 0:  # the child: serve on the pipes, never return into the command
            code = 1
            try:
                os.environ.update(environment)
                os.close(to_child)
                os.close(from_child)
                os.dup2(stderr.fileno(), 2)
                with os.fdopen(requests, "rb") as stdin, os.fdopen(frames, "wb") as stdout:
                    child.main(stdin, stdout)
                code = 0
            finally:
                os._exit(code)
        os.close(requests)
        os.close(frames)
        forked = Forked(pid, os.fdopen(to_child, "wb"), os.fdopen(from_child, "rb"))
        assert forked.stdin is not None and forked.stdout is not None
        widen(forked.stdin, forked.stdout)
        return cls(forked, stderr, budget)

    def alive(self) -> bool:
        """Whether the child still runs."""
        return self.process.poll() is None

    def run(self, request: BuildRequest, *, on_photo: OnPhoto | None = None) -> Built:
        """Build one collage; raise what the child's answer, or its end, means."""
        deadline = time.monotonic() + self.budget.wall_s
        if not self.ready:
            if not isinstance(self._read(time.monotonic() + STARTUP_S), Ready):
                raise RuntimeError("the collage child did not start as expected")
            self.ready = True
        self.jobs += 1
        self.told, self.decoding = None, {}
        assert self.process.stdin is not None
        try:
            write_frame(self.process.stdin, request)
        except OSError:  # BrokenPipeError: it died before reading the request
            self._died()
        while True:
            frame = self._read(deadline)
            if isinstance(frame, Built):
                return frame
            self._follow(frame, on_photo)

    def _follow(self, frame: Frame, on_photo: OnPhoto | None) -> None:
        """Keep track of the photos in hand; raise what a final frame other than Built means."""
        match frame:
            case PhotoStarted(index, label):
                self.told = (index, label)
                if on_photo is not None:
                    on_photo(index, label)
            case Decoding(index, done=False) if self.told is not None:
                self.decoding[index] = self.told[1]
            case Decoding(index, done=True):
                self.decoding.pop(index, None)
            case Failed(None, message):
                raise RuntimeError(message)  # a bug in the child
            case Failed(str(error_class), message):
                raise _error_class(error_class)(message)
            case OutOfMemory(label, cpu_s, peak):
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

    def _read(self, deadline: float) -> Frame:
        assert self.process.stdout is not None
        try:
            frame = read_frame(self.process.stdout, deadline)
        except TimeoutError:
            self.kill()
            raise OverBudget(
                f"{self._where()[0]} took over {self.budget.wall_s:.0f} s to build, the limit per"
                " collage; it was stopped"
            ) from None
        if frame is None:
            self._died()
        return frame

    def _died(self) -> NoReturn:
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


def _child_environment(budget: Budget) -> dict[str, str]:
    """What a child reads from its environment: its budget, its parent, and its libraries."""
    return {
        # One job, one core: numpy's OpenBLAS and OpenCV would start a thread per core.
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        # One malloc arena for the decoding threads too: glibc would reserve 64 MiB of
        # address space per thread's arena, which RLIMIT_AS counts against the budget
        # (a forked child, whose glibc has read this already, sets it with mallopt).
        "MALLOC_ARENA_MAX": "1",
        # Keep freed canvas memory for the next job (docs/imaging.md: the warm worker).
        "PILLOW_BLOCKS_MAX": os.environ.get("PILLOW_BLOCKS_MAX", "32"),
        "COLLAGE_CHILD_CPU_S": repr(budget.cpu_s),
        "COLLAGE_CHILD_MEMORY_BYTES": str(budget.memory_bytes),
        "COLLAGE_CHILD_PARENT_PID": str(os.getpid()),
    }


def _error_class(name: str) -> type[CollageError]:
    """Return the CollageError subclass of that name."""
    found = getattr(errors, name, None)
    if isinstance(found, type) and issubclass(found, CollageError):
        return found
    raise RuntimeError(f"collage child raised an unknown error class {name!r}")
