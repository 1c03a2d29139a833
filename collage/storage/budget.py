"""What one SKU's downloads may still take, in bytes and in time, shared by their threads."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from collage.errors import TooLarge, Transient


class ByteBudget:
    """The bytes and the time one SKU's downloads may still take, shared by their threads.

    A server may trickle a body a byte at a time, never idle long enough for a read timeout:
    past the deadline every body still open is shut down, which wakes its blocked read.
    """

    def __init__(self, limit: int, *, deadline_s: float | None = None) -> None:
        self.limit = limit
        self.deadline_s = deadline_s
        self._left = limit
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._expired = False
        self._over = False
        self._bodies: set[Any] = set()
        self._timer: threading.Timer | None = None
        if deadline_s is not None:
            self._timer = threading.Timer(deadline_s, self._expire)
            self._timer.daemon = True
            self._timer.start()

    @property
    def stopped(self) -> bool:
        """Whether the downloads still running must give up."""
        return self._stopped.is_set()

    def take(self, size: int) -> None:
        """Count a chunk; raise when the SKU is over its budget or its build has given up."""
        if self._stopped.is_set():
            raise self.why_stopped()
        with self._lock:
            self._left -= size
            if self._left < 0:
                self._over = True
                self.stop()
                raise self.why_stopped()

    def why_stopped(self) -> Exception:
        """The error a download stopped by this budget ends with.

        Every download stopped by the bytes going over says so: whichever of them ends first
        is the SKU's error (the others' results are never awaited).
        """
        if self._over:  # first: a deadline that passes afterwards changes nothing
            return TooLarge(f"the photos add up to over {self.limit:,} bytes")
        if self._expired:
            return Transient(f"downloading the photos took over {self.deadline_s:g} s")
        return Abandoned("the build stopped this download")

    @contextlib.contextmanager
    def holding(self, body: Any) -> Iterator[None]:
        """Let `stop` reach this body's socket while it is being read."""
        with self._lock:
            self._bodies.add(body)
        try:
            if self._stopped.is_set():
                _shut(body)
            yield
            if self._stopped.is_set():
                raise self.why_stopped()  # the read ended early because the socket was shut
        finally:
            with self._lock:
                self._bodies.discard(body)

    def stop(self) -> None:
        """Make every download still running stop now, even one blocked in a read."""
        self._stopped.set()
        for body in list(self._bodies):
            _shut(body)

    def close(self) -> None:
        """Stop the downloads and drop the deadline's timer."""
        if self._timer is not None:
            self._timer.cancel()
        self.stop()

    def _expire(self) -> None:
        self._expired = True
        self.stop()


def _shut(body: Any) -> None:
    """Shut a response's socket for reading, so that a read blocked on it returns at once."""
    raw: Any = getattr(body, "_raw_stream", None)  # botocore's StreamingBody, urllib3 inside
    with contextlib.suppress(Exception):  # already released or closed: nothing blocks on it
        raw.shutdown()


class Abandoned(Exception):
    """A download stopped because its SKU's build gave up on it; nobody waits for its result."""
