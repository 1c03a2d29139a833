"""What the worker and a build child say to each other: one typed request, typed frames back.

A frame is its length, a pickle, and the raw bytes it carries (the photos of a request, the
JPEG of a Built) after it: megabytes are never copied into and out of a pickle. Both ends are
this package, so the pickles are trusted; the frames are frozen dataclasses, so that each end
names what it reads instead of indexing tuples.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import select
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import IO

from collage.imaging import JpegTarget, Limits

MIB = 1024 * 1024
HEADER = struct.Struct(">QI")  # the pickle's length, and how many raw payloads follow it
PAYLOAD = struct.Struct(">Q")  # each payload's length, after the header
# Pipes of 1 MiB (Linux's default ceiling for an unprivileged process) instead of 64 KiB: a
# photo crosses in a few reads, not dozens.
PIPE_BYTES = MIB


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
    """Send one request or frame: its pickle without its photos or JPEG, then those, raw."""
    payloads: list[bytes] = []
    if isinstance(message, BuildRequest):
        payloads, message = list(message.photos), replace(message, photos=())
    elif isinstance(message, Built):
        payloads, message = [message.jpeg], replace(message, jpeg=b"")
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    sizes = b"".join(PAYLOAD.pack(len(payload)) for payload in payloads)
    pipe.write(HEADER.pack(len(body), len(payloads)) + sizes + body)
    for payload in payloads:
        pipe.write(payload)
    pipe.flush()


def read_request(pipe: IO[bytes]) -> BuildRequest | None:
    """Wait for the next request (in the child); None once the worker closes the pipe."""
    header = pipe.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    length, count = HEADER.unpack(header)
    sizes = [PAYLOAD.unpack(pipe.read(PAYLOAD.size))[0] for _ in range(count)]
    request = pickle.loads(pipe.read(length))  # noqa: S301 - from our parent
    assert isinstance(request, BuildRequest)
    return replace(request, photos=[pipe.read(size) for size in sizes])


def read_frame(pipe: IO[bytes], deadline: float) -> Frame | None:
    """Read the child's next frame before the deadline (TimeoutError); None if it has exited."""
    header = read_exact(pipe, HEADER.size, deadline)
    if header is None:
        return None
    length, count = HEADER.unpack(header)
    sizes = read_exact(pipe, PAYLOAD.size * count, deadline) if count else b""
    body = read_exact(pipe, length, deadline)
    if body is None or sizes is None:
        return None
    frame: Frame = pickle.loads(body)  # noqa: S301 - written by this package's own child
    for (size,) in PAYLOAD.iter_unpack(sizes):
        payload = read_exact(pipe, size, deadline)
        if payload is None:
            return None
        assert isinstance(frame, Built)
        frame = replace(frame, jpeg=payload)
    return frame


def widen(*pipes: IO[bytes]) -> None:
    """Give these pipes PIPE_BYTES of buffer where the kernel allows it."""
    for pipe in pipes:
        with contextlib.suppress(OSError, AttributeError):
            fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)


def read_exact(pipe: IO[bytes], size: int, deadline: float) -> bytes | None:
    """Read exactly `size` bytes before the deadline; None at end of file."""
    fd, buffer, done = pipe.fileno(), bytearray(size), 0
    view = memoryview(buffer)
    while done < size:
        wait = deadline - time.monotonic()
        if wait <= 0 or not select.select([fd], [], [], wait)[0]:
            raise TimeoutError
        got = os.readv(fd, [view[done:]])
        if not got:
            return None
        done += got
    view.release()
    return bytes(buffer)
