"""Build collages in child processes bounded in CPU time and memory, so no photo can take a worker.

A photo that decodes for minutes, allocates past its budget or crashes its decoder ends its
child process, never the worker: the job gets a one-line error naming the photo and the limit,
the child is replaced, and the other jobs go on in their own children. Photos go in and the JPEG
comes out through the child's stdin and stdout (bin/bench-imaging --ipc measures what it costs).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence

from collage.build_child import MIB
from collage.build_process import Budget, BuildProcess, Collage, TwoDecoding
from collage.errors import Transient
from collage.imaging import AHEAD_PIXELS, MIN_QUALITY, Limits, check_arguments

__all__ = ["MIB", "Budget", "Builder", "Collage"]


class Builder:
    """Run build_collage in up to `processes` child processes, one job per child at a time."""

    def __init__(
        self,
        *,
        limits: Limits | None = None,
        budget: Budget | None = None,
        processes: int = 2,
        jobs_per_child: int = 200,
        ahead_pixels: int = AHEAD_PIXELS,
    ) -> None:
        self.limits, self.budget = limits or Limits(), budget or Budget()
        self.jobs_per_child, self.ahead_pixels = jobs_per_child, ahead_pixels
        self._idle: list[BuildProcess] = []
        self._lock = threading.Lock()
        self._running, self._cores = 0, len(os.sched_getaffinity(0))
        self._slots = threading.BoundedSemaphore(processes)
        self._closed = False
        for _ in range(processes):  # started now, so the first jobs do not wait for imports
            self._idle.append(BuildProcess.start(self.budget))

    def build(
        self,
        photos: Sequence[bytes],
        *,
        quality: int = 95,
        names: Sequence[str] | None = None,
        on_photo: Callable[[int, str], object] | None = None,
        max_bytes: int | None = None,
        min_quality: int = MIN_QUALITY,
    ) -> Collage:
        """Build one collage in a child; raise what build_collage would, or OverBudget.

        `on_photo(index, label)` is called in this thread as the child starts on each photo.
        With `max_bytes`, the collage is encoded again at the highest quality down to
        `min_quality` that fits; Collage.quality says which. The child decodes the next photo
        while one is pasted (imaging.build's `ahead_pixels`) only while a core is free.
        """
        check_arguments(
            photos, quality=quality, names=names, max_bytes=max_bytes, min_quality=min_quality
        )
        with self._lock:
            self._running += 1
            # Decode ahead only with a core to spare: it saves wall time, not CPU (it costs a
            # few percent more), so with every core building it would only slow the others.
            spare = self._running < self._cores
        options = {
            "quality": quality,
            "names": names,
            "max_bytes": max_bytes,
            "min_quality": min_quality,
            "ahead_pixels": self.ahead_pixels if spare else 0,
        }
        try:
            return self._run(photos, options, on_photo)
        except TwoDecoding:
            # A crash with two photos decoding names neither: build again one photo at a
            # time, in a new child, so that the error (or the collage) is the right one.
            return self._run(photos, {**options, "ahead_pixels": 0}, on_photo)
        finally:
            with self._lock:
                self._running -= 1

    def close(self) -> None:
        """Stop every child; builds still running end with Transient."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for child in idle:
            child.stop()

    def __enter__(self) -> Builder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(
        self,
        photos: Sequence[bytes],
        options: dict[str, object],
        on_photo: Callable[[int, str], object] | None,
    ) -> Collage:
        with self._slots:
            child = self._take()
            try:
                result = child.run(photos, options=options, limits=self.limits, on_photo=on_photo)
            except BaseException:
                child.kill()
                raise
            self._give_back(child)
            return result

    def _take(self) -> BuildProcess:
        with self._lock:
            if self._closed:
                raise Transient("the collage builder is shutting down")
            while self._idle:
                child = self._idle.pop()
                if child.alive():
                    return child
                child.kill()
        return BuildProcess.start(self.budget)

    def _give_back(self, child: BuildProcess) -> None:
        with self._lock:
            if not self._closed and child.jobs < self.jobs_per_child and child.alive():
                self._idle.append(child)
                return
        child.stop()
