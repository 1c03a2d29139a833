"""The build child's program: build the collages it is sent, one at a time, within its budget.

Run as `python -m collage.isolation.child` by isolation.process; it reads BuildRequests on
stdin and answers with frames on stdout (isolation.protocol).
"""

from __future__ import annotations

import os
import re
import resource
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO

from collage import allocator, imaging
from collage.errors import CollageError, PhotoUnreadable, one_line
from collage.isolation import protocol

Send = Callable[[protocol.Frame], None]


def main(stdin: IO[bytes] | None = None, stdout: IO[bytes] | None = None) -> None:
    """Serve build requests on stdin until it closes, each under the CPU and memory budget.

    A forked child (isolation.process.ChildProcess.fork) passes its pipes.
    """
    _die_with_parent()
    # One arena: each thread's own would reserve 64 MiB of address space, counted by RLIMIT_AS
    # (MALLOC_ARENA_MAX, for a forked child whose glibc read its environment long ago).
    allocator.reuse_freed_memory(one_arena=True)
    imaging.load_resampler()
    cpu_s = float(os.environ["COLLAGE_CHILD_CPU_S"])
    memory = int(os.environ["COLLAGE_CHILD_MEMORY_BYTES"])
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash leaves no core file behind
    # The imports are the child's own; a build may add `memory` to them, and no more.
    address_space = status("VmSize") + memory
    resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
    if stdin is None or stdout is None:
        stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print must not corrupt the frames
    protocol.write_frame(stdout, protocol.Ready())
    while (request := protocol.read_request(stdin)) is not None:
        _serve(request, stdout, cpu_s)


def _serve(request: protocol.BuildRequest, stdout: IO[bytes], cpu_s: float) -> None:
    start = _cpu_s()
    # RLIMIT_CPU counts the process's whole life: past start + budget the kernel sends SIGXCPU,
    # whose default action ends the child even inside a C decoder. The hard limit stays open
    # so that the next build can be given its own budget.
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    resource.setrlimit(resource.RLIMIT_CPU, (int(start + cpu_s) + 1, hard))
    Path("/proc/self/clear_refs").write_text("5")  # the peak below is this build's
    current: list[str] = []
    lock = threading.Lock()  # photos are reported decoded from the decoding threads

    def send(frame: protocol.Frame) -> None:
        with lock:
            protocol.write_frame(stdout, frame)

    def on_photo(index: int, label: str) -> None:
        current[:] = [label]
        send(protocol.PhotoStarted(index, label))

    def on_decode(index: int, done: bool) -> None:
        send(protocol.Decoding(index, done))

    try:
        built = imaging.build(
            request.photos,
            target=request.target,
            limits=request.limits,
            names=request.names,
            on_photo=on_photo,
            on_decode=on_decode,
            ahead_pixels=request.ahead_pixels,
        )
    except MemoryError as exc:  # PhotoOutOfMemory says which photo
        _out_of_memory(send, getattr(exc, "label", None) or _last(current), _cpu_s() - start)
    except PhotoUnreadable as exc:
        if _webp_past_budget(request, exc):
            _out_of_memory(send, exc.message.split(" cannot ")[0], _cpu_s() - start)
        send(protocol.Failed(type(exc).__name__, exc.message))
    except CollageError as exc:
        send(protocol.Failed(type(exc).__name__, exc.message))
    except Exception as exc:  # OpenCV says "Insufficient memory" in its own exception type
        if "memory" in str(exc).lower():
            _out_of_memory(send, _last(current), _cpu_s() - start)
        send(protocol.Failed(None, f"{type(exc).__name__}: {one_line(exc)}"))
    else:
        send(protocol.Built(built.jpeg, built.quality, _cpu_s() - start, status("VmHWM")))


def _webp_past_budget(request: protocol.BuildRequest, exc: PhotoUnreadable) -> bool:
    """Tell a WebP whose canvas did not fit in the budget from a broken one.

    libwebp reports a failed allocation as a decoder it could not create.
    """
    found = re.match(r"photo (\d+)", exc.message)
    index = int(found[1]) - 1 if found else 0
    size = imaging.webp_size(request.photos[index]) if index < len(request.photos) else None
    left = resource.getrlimit(resource.RLIMIT_AS)[0] - status("VmSize")
    return size is not None and size[0] * size[1] * 4 > left


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _last(current: list[str]) -> str | None:
    return current[0] if current else None


def _out_of_memory(send: Send, label: str | None, cpu_s: float) -> None:
    send(protocol.OutOfMemory(label, cpu_s, status("VmHWM")))
    os._exit(3)  # whatever failed to allocate may have left the heap in pieces: start afresh


def status(field: str) -> int:
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
