"""Health checks for Docker's HEALTHCHECK and monitoring: each says ok or what is wrong.

The worker check is about the worker on this host (in this container): `collage worker`
writes a beat file in TEMP_DIR every few seconds while it runs and reaches its database, and
the check reads it. `--fleet` asks instead whether any worker anywhere sends heartbeats.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from collage.constants import HEARTBEAT_MAX_AGE_S
from collage.db import connect, connect_dicts, jobs, ping
from collage.errors import one_line
from collage.settings import Settings, redact
from collage.storage import Bucket

# Docker's HEALTHCHECK gives 20 s: every check answers, or is reported hung, well before.
CHECK_TIMEOUT_S = 12.0


@dataclass(frozen=True)
class Check:
    """One line of `collage health`."""

    name: str
    ok: bool
    detail: str


def run_checks(
    settings: Settings, *, fleet: bool = False, timeout_s: float = CHECK_TIMEOUT_S
) -> list[Check]:
    """Run every check at once, each bounded by `timeout_s`; none raises."""
    worker: tuple[str, Callable[[], str]] = (
        ("worker heartbeat (fleet)", lambda: _heartbeat(settings.db_url))
        if fleet
        else ("worker here", lambda: _beat(settings.temp_dir))
    )
    probes: list[tuple[str, Callable[[], str]]] = [
        ("database", lambda: _database(settings.db_url)),
        ("database (session)", lambda: _database(settings.db_session_url)),
        ("bucket", lambda: _bucket(settings)),
        worker,
    ]
    results: dict[str, Check] = {}
    # Daemon threads: a check stuck in a socket must not keep the command from exiting.
    threads = [
        threading.Thread(target=_check, args=(name, probe, results), daemon=True)
        for name, probe in probes
    ]
    deadline = time.monotonic() + timeout_s
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [
        results.get(name) or Check(name, False, f"no answer within {timeout_s:.0f}s")
        for name, _ in probes
    ]


def _check(name: str, probe: Callable[[], str], results: dict[str, Check]) -> None:
    try:
        results[name] = Check(name, True, probe())
    except Exception as exc:  # any failure is the answer to the check
        results[name] = Check(name, False, one_line(exc))


def write_beat(folder: Path, *, held: str | None = None) -> None:
    """Say, in a file only this process writes, that this worker is alive right now.

    `held` says why it builds nothing although alive (S3 refuses it).
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = _beat_path(folder, os.getpid())
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps({"pid": os.getpid(), "at": time.time(), "held": held}))
    partial.replace(path)


def forget_beat(folder: Path) -> None:
    """Remove this process's beat as it stops."""
    _beat_path(folder, os.getpid()).unlink(missing_ok=True)


def _beat_path(folder: Path, pid: int) -> Path:
    return folder / f"worker-{pid}.beat"


def _beat(folder: Path) -> str:
    """Check the workers of this host; raise unless one runs and each that runs is fresh."""
    fresh: list[str] = []
    stale: list[str] = []
    held: list[str] = []
    for path in sorted(folder.glob("worker-*.beat")):
        try:
            beat = json.loads(path.read_text())
            pid, age = int(beat["pid"]), time.time() - float(beat["at"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not _running(pid):
            path.unlink(missing_ok=True)  # a worker that was killed left it behind
            continue
        (fresh if age <= HEARTBEAT_MAX_AGE_S else stale).append(f"pid {pid}, {age:.0f}s ago")
        if beat.get("held"):
            held.append(f"pid {pid}: {beat['held']}")
    if stale:
        raise RuntimeError(f"worker silent: {'; '.join(stale)} (stuck, or its database is away)")
    if held:
        raise RuntimeError("; ".join(held))
    if not fresh:
        raise RuntimeError(f"no worker runs here (no beat in {folder})")
    return "; ".join(fresh)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _database(dsn: str) -> str:
    with connect(dsn) as conn:
        ping(conn)
    return redact(dsn)


def _bucket(settings: Settings) -> str:
    Bucket.from_settings(settings).ping()
    return f"{settings.s3_bucket} at {settings.s3_endpoint}"


def _heartbeat(dsn: str) -> str:
    with connect_dicts(dsn) as conn:
        age = jobs.heartbeat_age_s(conn)
    if age is None:
        raise RuntimeError("no worker has registered")
    if age > HEARTBEAT_MAX_AGE_S:
        raise RuntimeError(f"freshest heartbeat is {age:.0f}s old")
    return f"{age:.1f}s ago"
