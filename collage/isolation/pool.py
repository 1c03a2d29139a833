"""Collages built in child processes bounded in CPU time and memory: no photo can take a worker.

A photo that decodes for minutes, allocates past its budget or crashes its decoder ends its
child process, never the worker: the job gets a one-line error naming the photo and the limit,
the child is replaced, and the other jobs go on in their own children. Photos go in and the JPEG
comes out through the child's stdin and stdout (bin/bench-imaging --ipc measures what it costs).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import replace

from collage.errors import Transient
from collage.imaging import AHEAD_PIXELS, JpegTarget, Limits, check_names
from collage.isolation.process import Budget, ChildProcess, OnPhoto, TwoDecoding
from collage.isolation.protocol import BuildRequest, Built

JOBS_PER_CHILD = 200  # a fresh child now and then returns what the allocator kept


class BuildPool:
    """Build collages in up to `processes` children, one build per child at a time."""

    def __init__(
        self,
        *,
        budget: Budget,
        processes: int,
        limits: Limits | None = None,
        jobs_per_child: int = JOBS_PER_CHILD,
        ahead_pixels: int = AHEAD_PIXELS,
        forked: bool = False,
    ) -> None:
        self.limits, self.budget = limits or Limits(), budget
        self.jobs_per_child, self.ahead_pixels = jobs_per_child, ahead_pixels
        self._idle: list[ChildProcess] = []
        self._lock = threading.Lock()
        self._running, self._cores = 0, len(os.sched_getaffinity(0))
        self._slots = threading.BoundedSemaphore(processes)
        self._closed = False
        # Forked children share this process's interpreter and imports (a one-shot command
        # with one thread); the worker's are started afresh.
        self._start = ChildProcess.fork if forked else ChildProcess.start
        for _ in range(processes):  # started now, so the first jobs do not wait for imports
            self._idle.append(self._start(self.budget))

    def build(
        self,
        photos: Sequence[bytes],
        *,
        target: JpegTarget,
        names: Sequence[str] | None = None,
        on_photo: OnPhoto | None = None,
    ) -> Built:
        """Build one collage in a child; raise what imaging.build would, or OverBudget.

        `on_photo(index, label)` is called in this thread as the child starts on each photo.
        The child decodes the next photo while one is pasted only while a core is free.
        """
        check_names(photos, names)
        with self._lock:
            self._running += 1
            # Decode ahead only with a core to spare: it saves wall time, not CPU (it costs a
            # few percent more), so with every core building it would only slow the others.
            spare = self._running < self._cores
        request = BuildRequest(
            photos=photos,
            names=names,
            target=target,
            limits=self.limits,
            ahead_pixels=self.ahead_pixels if spare else 0,
        )
        try:
            return self._run(request, on_photo)
        except TwoDecoding:
            # A crash with two photos decoding names neither: build again one photo at a
            # time, in a new child, so that the error (or the collage) is the right one.
            return self._run(replace(request, ahead_pixels=0), on_photo)
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

    def __enter__(self) -> BuildPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, request: BuildRequest, on_photo: OnPhoto | None) -> Built:
        with self._slots:
            child = self._take()
            try:
                result = child.run(request, on_photo=on_photo)
            except BaseException:
                child.kill()
                raise
            self._give_back(child)
            return result

    def _take(self) -> ChildProcess:
        with self._lock:
            if self._closed:
                raise Transient("the collage builder is shutting down")
            while self._idle:
                child = self._idle.pop()
                if child.alive():
                    return child
                child.kill()
        return self._start(self.budget)

    def _give_back(self, child: ChildProcess) -> None:
        with self._lock:
            if not self._closed and child.jobs < self.jobs_per_child and child.alive():
                self._idle.append(child)
                return
        child.stop()
