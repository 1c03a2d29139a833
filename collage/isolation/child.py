"""The child process a Builder starts: it builds collages it is sent, one at a time, bounded.

Run as `python -m collage.build_child`; frames go both ways as a length and a pickle, and both
ends are this package, so the pickles are trusted.
"""

from __future__ import annotations

import os
import pickle
import re
import select
import struct
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from collage.errors import CollageError, PhotoUnreadable

MIB = 1024 * 1024
# A header: the pickled frame's length.
HEADER = struct.Struct(">Q")


def write_frame(pipe: IO[bytes] | None, obj: object) -> None:
    assert pipe is not None
    body = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    pipe.write(HEADER.pack(len(body)))
    pipe.write(body)
    pipe.flush()


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


def main() -> None:
    """Serve build requests on stdin until it closes, each under the CPU and memory budget."""
    import resource

    from collage import imaging

    _die_with_parent()
    imaging.load_resampler()
    cpu_s = float(os.environ["COLLAGE_CHILD_CPU_S"])
    memory = int(os.environ["COLLAGE_CHILD_MEMORY_BYTES"])
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash leaves no core file behind
    # The imports are the child's own; a job may add `memory` to them, and no more.
    address_space = _status("VmSize") + memory
    resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print must not corrupt the frames
    write_frame(stdout, ("ready",))
    while (header := stdin.read(HEADER.size)) and len(header) == HEADER.size:
        job = pickle.loads(stdin.read(HEADER.unpack(header)[0]))  # noqa: S301 - from our parent
        _serve(job, stdout, cpu_s, resource)


def _serve(job: dict[str, Any], stdout: IO[bytes], cpu_s: float, resource: Any) -> None:
    from collage import imaging

    usage = resource.getrusage(resource.RUSAGE_SELF)
    start = usage.ru_utime + usage.ru_stime
    # RLIMIT_CPU counts the process's whole life: past start + budget the kernel sends SIGXCPU,
    # whose default action ends the child even inside a C decoder. The hard limit stays open
    # so that the next job can be given its own budget.
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    resource.setrlimit(resource.RLIMIT_CPU, (int(start + cpu_s) + 1, hard))
    Path("/proc/self/clear_refs").write_text("5")  # the peak below is this job's
    current: list[str] = []
    lock = threading.Lock()  # photos are reported decoded from the decoding threads

    def send(frame: tuple[Any, ...]) -> None:
        with lock:
            write_frame(stdout, frame)

    def on_photo(index: int, label: str) -> None:
        current[:] = [label]
        send(("photo", (index, label)))

    def spent() -> float:
        now = resource.getrusage(resource.RUSAGE_SELF)
        return now.ru_utime + now.ru_stime - start

    try:
        built = imaging.build(
            job["photos"],
            quality=job["quality"],
            names=job["names"],
            limits=job["limits"],
            on_photo=on_photo,
            on_decode=lambda index, done: send(("decoded" if done else "decoding", index)),
            max_bytes=job["max_bytes"],
            min_quality=job["min_quality"],
            ahead_pixels=job["ahead_pixels"],
        )
    except MemoryError as exc:  # PhotoOutOfMemory says which photo
        _out_of_memory(send, getattr(exc, "label", None) or _last(current), spent())
    except PhotoUnreadable as exc:
        # libwebp reports a failed allocation as a decoder it could not create: if the photo's
        # canvas could not fit in what is left of the budget, that is what happened.
        found = re.match(r"photo (\d+)", exc.message)
        index = int(found[1]) - 1 if found else 0
        size = imaging.webp_size(job["photos"][index]) if index < len(job["photos"]) else None
        left = resource.getrlimit(resource.RLIMIT_AS)[0] - _status("VmSize")
        if size is not None and size[0] * size[1] * 4 > left:
            _out_of_memory(send, exc.message.split(" cannot ")[0], spent())
        send(("failed", type(exc).__name__, exc.message))
    except CollageError as exc:
        send(("failed", type(exc).__name__, exc.message))
    except Exception as exc:  # OpenCV says "Insufficient memory" in its own exception type
        if "memory" in str(exc).lower():
            _out_of_memory(send, _last(current), spent())
        from collage.errors import one_line

        send(("bug", f"{type(exc).__name__}: {one_line(exc)}"))
    else:
        send(("built", built.jpeg, built.quality, spent(), _status("VmHWM")))


def _last(current: list[str]) -> str | None:
    return current[0] if current else None


def _out_of_memory(
    send: Callable[[tuple[Any, ...]], None], label: str | None, cpu_s: float
) -> None:
    send(("memory", label, cpu_s, _status("VmHWM")))
    os._exit(3)  # whatever failed to allocate may have left the heap in pieces: start afresh


def _status(field: str) -> int:
    """Return a memory figure of this process from /proc/self/status, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise LookupError(field)


def _die_with_parent() -> None:
    """Ask Linux to end this child when the worker that started it dies.

    A worker SIGKILLed would otherwise leave its build running, bounded only by the CPU limit.
    """
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the CPU limit still bounds an orphan
        return
    # The parent died before the request took effect. Not `getppid() == 1`: in a container the
    # worker itself is PID 1.
    if os.getppid() != int(os.environ.get("COLLAGE_CHILD_PARENT_PID", os.getppid())):
        os._exit(0)


if __name__ == "__main__":
    main()
