"""A soak: two workers and the console, for minutes, under good SKUs and hostile ones.

Through a proxy in front of the S3 server: photos that trickle a byte at a time, photos S3
refuses, decoding bombs and broken files beside good SKUs, while forty clients hammer the
console. At the end: every good SKU ready, every hostile one 'error' with one line (or still
being retried as designed), /healthz's worst answer, and each worker's RSS over the run.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import psycopg
from psycopg.types.json import Jsonb

from collage.db import migrate
from collage.settings import Settings
from dev import photos, sandbox
from dev.s3proxy import Fault, FaultyProxy

DEFAULT_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
KEY = sandbox.S3_KEY
# Hostile SKUs, one in this many; the rest are good.
HOSTILE_EVERY = 5
KINDS = ("slow", "refused", "bomb", "broken", "not-a-photo", "empty")


@dataclass
class Run:
    """What the soak saw."""

    skus: dict[int, str] = field(default_factory=dict)  # product id -> kind ('good', ...)
    health_ms: list[float] = field(default_factory=list)
    health_failures: int = 0
    pages: dict[int, int] = field(default_factory=dict)  # status -> count
    rss: dict[str, list[tuple[float, int]]] = field(default_factory=dict)


def main() -> None:
    parser = argparse.ArgumentParser(prog="bin/soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=40)
    parser.add_argument("--every-s", type=float, default=1.0, help="a new SKU this often")
    parser.add_argument("--deadline-s", type=int, default=20, help="S3_DOWNLOAD_DEADLINE_S")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    admin = os.environ.get("STAGING_DB_URL") or DEFAULT_ADMIN_DSN
    dsn = sandbox.create_database(admin, prefix="collage_soak")
    folder = Path(os.environ.get("TMPDIR", "/tmp")) / f"collage-soak-{os.getpid()}"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        migrate.apply(dsn)
        with sandbox.s3_server() as s3:
            figures = soak(dsn, s3.endpoint, folder, args)
    finally:
        sandbox.drop_database(admin, dsn)
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


def soak(dsn: str, s3_endpoint: str, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    bucket = "soak"
    client = sandbox.s3_client(s3_endpoint)
    client.create_bucket(Bucket=bucket)
    urls = _upload(client, bucket)
    proxy = FaultyProxy(s3_endpoint, _rule)
    settings = Settings(
        db_url=dsn,
        db_session_url=dsn,
        s3_endpoint=proxy.endpoint,
        s3_access_key=KEY,
        s3_secret_key=KEY,
        s3_bucket=bucket,
        s3_public_url=f"{proxy.endpoint}/{bucket}",
        temp_dir=folder / "scratch",
        download_deadline_s=args.deadline_s,
    )
    run = Run()
    stop = threading.Event()
    with contextlib.ExitStack() as stack:
        workers = [stack.enter_context(_process(settings, folder, "worker")) for _ in range(2)]
        port = sandbox.free_port()
        stack.enter_context(_process(settings, folder, "web", WEB_PORT=str(port)))
        console = f"http://127.0.0.1:{port}"
        sandbox.wait_until(lambda: _answers(console), timeout=60, what="the console")
        threads = [
            threading.Thread(target=_health, args=(console, run, stop), daemon=True),
            threading.Thread(target=_rss, args=(workers, run, stop), daemon=True),
            *(
                threading.Thread(target=_hammer, args=(console, run, stop, n), daemon=True)
                for n in range(args.clients)
            ),
        ]
        for thread in threads:
            thread.start()
        started = time.monotonic()
        with psycopg.connect(dsn, autocommit=True) as db:
            feed_until = started + args.minutes * 60 - 90  # the last 90 s: let them settle
            for n in itertools.count():
                if time.monotonic() >= feed_until:
                    break
                kind = (
                    KINDS[(n // HOSTILE_EVERY) % len(KINDS)] if n % HOSTILE_EVERY == 4 else "good"
                )
                run.skus[_add(db, kind, urls, n)] = kind
                time.sleep(args.every_s)
            good = [pid for pid, kind in run.skus.items() if kind == "good"]
            with contextlib.suppress(TimeoutError):
                sandbox.wait_until(
                    lambda: _count(db, good, "collage_ready") == len(good),
                    timeout=max(30.0, started + args.minutes * 60 - time.monotonic()),
                    what="every good SKU",
                )
            # The clients go on to the end: the hostile SKUs' retries run meanwhile.
            stop.wait(max(0.0, started + args.minutes * 60 - time.monotonic()))
            elapsed = time.monotonic() - started
            states = _states(db, run.skus)
        stop.set()
        for thread in threads:
            thread.join(10)
    proxy.close()
    return _figures(run, states, elapsed, args)


def _upload(client: Any, bucket: str) -> dict[str, list[str]]:
    """The photos of each kind, uploaded once; SKUs share them."""
    rng = random.Random(7)
    made = {
        "good": [photos.jpeg(600 + 40 * i, 800, seed=i) for i in range(3)],
        "slow": [photos.jpeg(400, 500, seed=9)],
        "refused": [photos.jpeg(400, 500, seed=10)],
        "bomb": [photos.scan_bomb(256, 256, repeats=3000)],
        "broken": [photos.jpeg(400, 500, seed=11)[:2000]],
        "not-a-photo": [bytes(rng.randrange(256) for _ in range(4096))],
    }
    urls: dict[str, list[str]] = {}
    for kind, blobs in made.items():
        urls[kind] = []
        for i, blob in enumerate(blobs):
            key = f"originals/{kind}/{i}.jpg"
            client.put_object(Bucket=bucket, Key=key, Body=blob)
            urls[kind].append(f"s3://{bucket}/{key}")
    urls["empty"] = []
    return urls


def _rule(method: str, path: str) -> Fault | None:
    if "/originals/slow/" in path:
        return Fault(trickle_s=600)  # 50 pieces, 12 s apart: no read ever times out
    if "/originals/refused/" in path:
        return Fault(status=403, code="AccessDenied")
    return None


def _add(db: psycopg.Connection, kind: str, urls: dict[str, list[str]], n: int) -> int:
    row = db.execute(
        "INSERT INTO raw_products (external_id, brand, image_urls, image_status)"
        " VALUES (%s, %s, %s, 'uploaded') RETURNING id",
        [f"{kind}-{n}", "soak" if kind == "good" else "hostile", Jsonb(urls[kind])],
    ).fetchone()
    assert row is not None
    return int(row[0])


def _count(db: psycopg.Connection, ids: list[int], status: str) -> int:
    row = db.execute(
        "SELECT count(*) FROM raw_products WHERE id = ANY(%s) AND image_status = %s", [ids, status]
    ).fetchone()
    return int(row[0]) if row else 0


def _states(db: psycopg.Connection, skus: dict[int, str]) -> list[tuple[str, str, str | None, int]]:
    """Each SKU's kind, status, error message and attempts so far."""
    rows = db.execute(
        "SELECT p.id, p.image_status, p.error_message,"
        " (SELECT count(*) FROM collage_outcomes o WHERE o.product_id = p.id)"
        " FROM raw_products p WHERE p.id = ANY(%s)",
        [list(skus)],
    ).fetchall()
    return [(skus[pid], status, message, int(tries)) for pid, status, message, tries in rows]


@contextlib.contextmanager
def _process(settings: Settings, folder: Path, command: str, **env: str) -> Iterator[int]:
    """`collage COMMAND` as a subprocess; yield its pid; SIGTERM at the end."""
    log = (folder / f"{command}-{time.monotonic_ns()}.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "collage", command],
        env={**os.environ, **sandbox.env_of(settings, LOG_FORMAT="json"), **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield process.pid
    finally:
        sandbox.terminate(process, timeout=120)
        log.close()


def _answers(console: str) -> bool:
    with contextlib.suppress(httpx2.HTTPError):
        return httpx2.get(f"{console}/healthz", timeout=2).status_code == 200
    return False


def _health(console: str, run: Run, stop: threading.Event) -> None:
    with httpx2.Client(timeout=10) as client:
        while not stop.is_set():
            started = time.monotonic()
            try:
                ok = client.get(f"{console}/healthz").status_code == 200
            except httpx2.HTTPError:
                ok = False
            run.health_ms.append((time.monotonic() - started) * 1000)
            run.health_failures += not ok
            stop.wait(0.5)


def _hammer(console: str, run: Run, stop: threading.Event, n: int) -> None:
    rng = random.Random(n)
    with httpx2.Client(base_url=console, timeout=30) as client:
        while not stop.is_set():
            ids = list(run.skus) or [1]
            pid = rng.choice(ids)
            path = rng.choice(
                [
                    "/",
                    f"/sku/{pid}",
                    f"/preview/{pid}/photo-1",
                    f"/preview/{pid}/collage",
                    "/gallery",
                    f"/search?q={pid}",
                ]
            )
            try:
                status = client.get(path).status_code
            except httpx2.HTTPError:
                status = 0
            run.pages[status] = run.pages.get(status, 0) + 1


def _rss(workers: list[int], run: Run, stop: threading.Event) -> None:
    started = time.monotonic()
    while not stop.is_set():
        for pid in workers:
            run.rss.setdefault(str(pid), []).append((time.monotonic() - started, _tree_rss(pid)))
        stop.wait(10)


def _tree_rss(pid: int) -> int:
    """Resident bytes of a process and its children (the build children)."""
    total = 0
    pids = [pid]
    with contextlib.suppress(OSError):
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    for each in pids:
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def _figures(
    run: Run,
    states: list[tuple[str, str, str | None, int]],
    elapsed: float,
    args: argparse.Namespace,
) -> dict[str, Any]:
    by_kind: dict[str, dict[str, int]] = {}
    messages: dict[str, set[str]] = {}
    attempts: dict[str, list[int]] = {}
    for kind, status, message, tries in states:
        by_kind.setdefault(kind, {}).setdefault(status, 0)
        by_kind[kind][status] += 1
        attempts.setdefault(kind, []).append(tries)
        if message:
            messages.setdefault(kind, set()).add(message[:100])
    health = sorted(run.health_ms)
    rss = {
        pid: {
            "first_mib": round(samples[min(2, len(samples) - 1)][1] / 2**20),
            "max_mib": round(max(s[1] for s in samples) / 2**20),
            "last_mib": round(samples[-1][1] / 2**20),
        }
        for pid, samples in run.rss.items()
        if samples
    }
    return {
        "minutes": round(elapsed / 60, 1),
        "clients": args.clients,
        "skus": by_kind,
        "attempts_max": {kind: max(found) for kind, found in attempts.items()},
        "errors_say": {kind: sorted(found) for kind, found in messages.items()},
        "healthz": {
            "checks": len(health),
            "failed": run.health_failures,
            "p50_ms": round(health[len(health) // 2], 1) if health else None,
            "max_ms": round(health[-1], 1) if health else None,
        },
        "console_answers": dict(sorted(run.pages.items())),
        "worker_rss": rss,
    }


if __name__ == "__main__":
    sys.exit(main())
