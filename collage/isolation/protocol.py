"""What the worker and a build child say to each other: one typed request, typed frames back.

A frame is its length and a pickle. Both ends are this package, so the pickles are trusted; the
frames are frozen dataclasses, so that each end names what it reads instead of indexing tuples.
"""

from __future__ import annotations

import os
import pickle
import select
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO

from collage.imaging import JpegTarget, Limits

MIB = 1024 * 1024
HEADER = struct.Struct(">Q")  # the pickled frame's length


@dataclass(frozen=True, kw_only=True)
class BuildRequest:
    """One collage to build: the photos, what to call them, how to encode, and the limits."""

    photos: Sequence[bytes]
    names: Sequence[str] | None
    target: JpegTarget
    limits: Limits
    ahead_pixels: int  # decode the next photo while one is pasted, under this many pixels


@dataclass(frozen=True)
class Ready:
    """The child has imported what it needs and waits for requests."""


@dataclass(frozen=True)
class PhotoStarted:
    """The child starts on a photo (reading its header, or decoding it)."""

    index: int
    label: str


@dataclass(frozen=True)
class Decoding:
    """A photo's decoding begins (a suspect, should the child die now) or has ended."""

    index: int
    done: bool


@dataclass(frozen=True)
class Built:
    """The collage, with what building it cost in the child."""

    jpeg: bytes
    quality: int  # lower than asked only to fit the target's max_bytes
    cpu_s: float
    peak_rss: int  # bytes: the child's peak resident memory during this build


@dataclass(frozen=True)
class Failed:
    """The build failed: a CollageError by class name, or None for a bug; one line."""

    error_class: str | None
    message: str


@dataclass(frozen=True)
class OutOfMemory:
    """The build needed more than its memory budget; the child exits after saying so."""

    label: str | None
    cpu_s: float
    peak_rss: int


Frame = Ready | PhotoStarted | Decoding | Built | Failed | OutOfMemory


def write_frame(pipe: IO[bytes], message: BuildRequest | Frame) -> None:
    """Send one request or frame."""
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    pipe.write(HEADER.pack(len(body)))
    pipe.write(body)
    pipe.flush()


def read_request(pipe: IO[bytes]) -> BuildRequest | None:
    """Wait for the next request (in the child); None once the worker closes the pipe."""
    header = pipe.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    request = pickle.loads(pipe.read(HEADER.unpack(header)[0]))  # noqa: S301 - from our parent
    assert isinstance(request, BuildRequest)
    return request


def read_frame(pipe: IO[bytes], deadline: float) -> Frame | None:
    """Read the child's next frame before the deadline (TimeoutError); None if it has exited."""
    header = read_exact(pipe, HEADER.size, deadline)
    if header is None:
        return None
    body = read_exact(pipe, HEADER.unpack(header)[0], deadline)
    if body is None:
        return None
    frame: Frame = pickle.loads(body)  # noqa: S301 - written by this package's own child
    return frame


def read_exact(pipe: IO[bytes], size: int, deadline: float) -> bytes | None:
    """Read exactly `size` bytes before the deadline; None at end of file."""
    fd, chunks, left = pipe.fileno(), [], size
    while left:
        wait = deadline - time.monotonic()
        if wait <= 0 or not select.select([fd], [], [], wait)[0]:
            raise TimeoutError
        chunk = os.read(fd, min(left, 16 * MIB))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
