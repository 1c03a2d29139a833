"""Real processes for the fault tests: a throwaway PostgreSQL, worker subprocesses, stalls."""

from __future__ import annotations

import contextlib
import functools
import glob
import io
import itertools
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from PIL import Image
from psycopg.types.json import Jsonb

from dev import sandbox

S3_KEY = sandbox.S3_KEY
PG_BINDIRS = ("/usr/lib/postgresql/15/bin", *sorted(glob.glob("/usr/lib/postgresql/*/bin")))


def pg_bindir() -> Path | None:
    """Find initdb and pg_ctl (Debian keeps them off PATH)."""
    for folder in (os.environ.get("PG_BINDIR", ""), *PG_BINDIRS):
        if folder and os.access(Path(folder) / "initdb", os.X_OK):
            return Path(folder)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def s3_client(endpoint: str, **config: Any) -> Any:
    """A boto3 client on the test S3 server (or a proxy in front of it)."""
    return sandbox.s3_client(endpoint, **config)


def _as_postgres(command: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root.
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@dataclass
class Cluster:
    """A PostgreSQL cluster of the tests' own, on a free loopback port, trust auth."""

    bindir: Path
    folder: Path
    port: int

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _pg_ctl(self, *args: str, timeout: float = 60) -> None:
        command = [str(self.bindir / "pg_ctl"), "-D", str(self.folder / "data"), "-w", *args]
        result = subprocess.run(
            _as_postgres(command), capture_output=True, text=True, timeout=timeout
        )
        if result.returncode != 0:
            raise RuntimeError(f"pg_ctl {args[-1]} failed: {result.stderr}\n{self.log()}")

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            " -c max_connections=200"
        )
        self._pg_ctl("-l", str(self.folder / "server.log"), "-o", options, "start")

    def restart(self) -> None:
        """Stop with -m fast (every session is terminated) and start again."""
        self._pg_ctl("-l", str(self.folder / "server.log"), "-m", "fast", "restart")

    def shut_down(self) -> None:
        """Stop with -m fast, as an operator or a failover would; start() brings it back."""
        self._pg_ctl("-m", "fast", "stop")

    def stop(self) -> None:
        """Stop at once; the data is thrown away anyway."""
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self._pg_ctl("-m", "immediate", "stop", timeout=30)

    def log(self) -> str:
        """Return the server's log, for failure messages."""
        path = self.folder / "server.log"
        return path.read_text(errors="replace")[-5000:] if path.exists() else ""


@contextlib.contextmanager
def throwaway_cluster(bindir: Path) -> Iterator[Cluster]:
    """Create, start and finally delete a cluster run by the `postgres` OS user."""
    folder = Path(tempfile.mkdtemp(prefix="collage-pg-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    cluster = Cluster(bindir, folder, sandbox.free_port())
    try:
        subprocess.run(
            _as_postgres(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(folder / "data"),
                    "--auth=trust",
                    "-U",
                    "postgres",
                    "--no-sync",
                    "--no-locale",
                    "-E",
                    "UTF8",
                ]
            ),
            check=True,
            capture_output=True,
            timeout=120,
        )
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)


class Db:
    """The test's own autocommit connection; it reconnects after an outage on its next use."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._conn: psycopg.Connection | None = None

    def rows(self, query: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> list:
        """Run one statement and return its rows (reconnecting once if the server went away)."""
        for attempt in (1, 2):
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=3)
            try:
                cur = self._conn.execute(query, params)
                return cur.fetchall() if cur.description else []
            except (psycopg.OperationalError, psycopg.InterfaceError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def value(self, query: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> Any:
        """Run one statement and return the first column of its first row."""
        return self.rows(query, params)[0][0]

    @property
    def pid(self) -> int:
        return int(self.value("SELECT pg_backend_pid()"))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def worker_env(
    *,
    db_url: str,
    db_session_url: str,
    s3_endpoint: str,
    s3_key: str,
    bucket: str,
    public_url: str,
    temp_dir: Path,
) -> dict[str, str]:
    """The environment `collage worker` reads, on top of this process's own (PATH and such)."""
    inherited = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("STAGING_", "S3_", "WORKER_", "METRICS_"))
    }
    return {
        **inherited,
        "STAGING_DB_URL": db_url,
        "STAGING_DB_SESSION_URL": db_session_url,
        "S3_ENDPOINT": s3_endpoint,
        "S3_ACCESS_KEY": s3_key,
        "S3_SECRET_KEY": s3_key,
        "S3_BUCKET": bucket,
        "S3_PUBLIC_URL": public_url,
        "TEMP_DIR": str(temp_dir),
        "LOG_FORMAT": "json",
    }


def collage_command() -> list[str]:
    """`collage` as installed next to this interpreter (the console script)."""
    script = Path(sys.executable).with_name("collage")
    return [str(script)] if script.exists() else [sys.executable, "-m", "collage"]


class WorkerProcess:
    """`collage worker` in a subprocess, logging JSON lines to a file."""

    def __init__(self, env: Mapping[str, str], log_path: Path, args: Sequence[str] = ()) -> None:
        self.log_path = log_path
        self.args = list(args)
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                [*collage_command(), "worker", *self.args],
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        self.started = time.monotonic()
        self.peak_rss_kb = 0

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def records(self) -> list[dict[str, Any]]:
        """Every JSON log line written so far (other lines, e.g. a crash, as {'raw': line})."""
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"raw": line})
        return out

    def logged(self, message: str) -> list[dict[str, Any]]:
        return [r for r in self.records() if r.get("message") == message]

    def tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def sample_rss(self) -> int:
        """Read the process's peak resident set (VmHWM) in kB while it is alive."""
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.peak_rss_kb = max(self.peak_rss_kb, int(line.split()[1]))
        return self.peak_rss_kb

    def send(self, sig: signal.Signals) -> None:
        self.sample_rss()
        if self.alive():
            self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in time; reap it either way."""
        if self.alive():
            self.send(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        return self.process.returncode


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims `width` x `height` in its header and has no pixel data at all."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def mean_rgb(jpeg_bytes: bytes) -> tuple[float, float, float]:
    """The average colour of an image."""
    with Image.open(io.BytesIO(jpeg_bytes)) as image:
        small = image.convert("RGB").resize((1, 1), Image.Resampling.BOX)
        r, g, b = small.getpixel((0, 0))  # type: ignore[misc]
    return (r, g, b)


def unsettled(db: Db, ids: Sequence[int]) -> int:
    """How many of these SKUs are still 'uploaded' or have a build job waiting or running."""
    return int(
        db.value(
            "SELECT count(*) FROM raw_products p WHERE p.id = ANY(%(ids)s) AND ("
            " p.image_status = 'uploaded' OR EXISTS (SELECT 1 FROM procrastinate_jobs j"
            " WHERE j.lock = 'product:' || p.id AND j.status IN ('todo', 'doing')))",
            {"ids": list(ids)},
        )
    )


def describe_unsettled(db: Db, ids: Sequence[int]) -> str:
    """The SKUs not settled yet, each with its status and its jobs: what a timeout should say."""
    rows = db.rows(
        "SELECT p.id, p.image_status, coalesce(json_agg(json_build_object('job', j.id,"
        " 'status', j.status, 'worker', j.worker_id, 'args', j.args) ORDER BY j.id)"
        " FILTER (WHERE j.id IS NOT NULL), '[]') FROM raw_products p"
        " LEFT JOIN procrastinate_jobs j ON j.lock = 'product:' || p.id"
        " WHERE p.id = ANY(%(ids)s) GROUP BY p.id ORDER BY p.id",
        {"ids": list(ids)},
    )
    lines = [
        f"  SKU {pid} '{status}', jobs {jobs}"
        for pid, status, jobs in rows
        if status == "uploaded" or any(j["status"] in ("todo", "doing") for j in jobs)
    ]
    return "\n".join(["unsettled:", *lines]) if lines else "every SKU settled"


def wait_settled(db: Db, ids: Sequence[int], *, timeout: float, what: str = "") -> float:
    """Wait until every SKU has settled; return how long it took."""
    started = time.monotonic()
    try:
        sandbox.wait_until(
            lambda: unsettled(db, ids) == 0,
            timeout=timeout,
            what=what or f"{len(ids)} SKU(s) to settle",
        )
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}\n{describe_unsettled(db, ids)}") from None
    return time.monotonic() - started


def first_true(
    checks: Mapping[str, Callable[[], bool]],
    *,
    timeout: float,
    explain: Callable[[], str] = lambda: "",
) -> dict[str, float]:
    """Poll several conditions at once; return how many seconds each took to become true."""
    started = time.monotonic()
    took: dict[str, float] = {}
    while True:
        for name, check in checks.items():
            if name not in took:
                with contextlib.suppress(Exception):
                    if check():
                        took[name] = time.monotonic() - started
        if len(took) == len(checks):
            return took
        if time.monotonic() - started > timeout:
            missing = sorted(set(checks) - set(took))
            raise TimeoutError(
                f"timed out after {timeout:.0f}s waiting for {missing}; got {took}\n{explain()}"
            )
        time.sleep(0.02)


def listen_pids(db: Db) -> set[int]:
    """Backends of this database whose last statement was a LISTEN (Procrastinate's)."""
    return {
        row[0]
        for row in db.rows(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND query LIKE 'LISTEN%%'"
        )
    }


def build_jobs_in(db: Db, *statuses: str) -> list[tuple]:
    """Build jobs in these states: (id, lock, status)."""
    return db.rows(
        "SELECT id, lock, status::text FROM procrastinate_jobs"
        " WHERE task_name = 'collage.build' AND status::text = ANY(%s) ORDER BY id",
        [list(statuses)],
    )


def pickup_delay_s(db: Db, product_id: int) -> float:
    """Seconds from a SKU's newest build job being queued to it starting (procrastinate_events)."""
    return float(
        db.value(
            "SELECT extract(epoch FROM max(e.at) FILTER (WHERE e.type = 'started')"
            " - min(e.at) FILTER (WHERE e.type = 'deferred'))"
            " FROM procrastinate_events e WHERE e.job_id = ("
            " SELECT max(id) FROM procrastinate_jobs WHERE lock = %s)",
            [f"product:{product_id}"],
        )
    )


def overlapping_builds(db: Db) -> list[tuple]:
    """Pairs of build jobs of one SKU whose runs overlapped in time (should be none)."""
    runs = db.rows(
        "SELECT j.lock, j.id, min(e.at) FILTER (WHERE e.type = 'started'),"
        " max(e.at) FILTER (WHERE e.type IN ('succeeded', 'failed', 'aborted'))"
        " FROM procrastinate_jobs j JOIN procrastinate_events e ON e.job_id = j.id"
        " WHERE j.task_name = 'collage.build' GROUP BY j.id"
        " HAVING min(e.at) FILTER (WHERE e.type = 'started') IS NOT NULL ORDER BY j.lock, 3"
    )
    clashes = []
    for before, after in itertools.pairwise(runs):
        if before[0] == after[0] and (before[3] is None or after[2] < before[3]):
            clashes.append((before, after))
    return clashes


def defer_rescue(db: Db) -> None:
    """Queue the stalled-job rescue now instead of at the next minute's cron tick."""
    with contextlib.suppress(psycopg.errors.UniqueViolation):  # one is waiting already
        db.rows(
            "SELECT procrastinate_defer_jobs_v1(ARRAY[ROW('collage', 'collage.rescue', 0, NULL,"
            " 'collage.rescue', '{\"timestamp\": 0}'::jsonb, NULL)"
            "::procrastinate_job_to_defer_v1])"
        )


RED, BLUE, GREEN = (220, 30, 30), (30, 30, 220), (30, 200, 30)
# Procrastinate polls every POLLING_INTERVAL_S (1 s); a pickup this fast came from LISTEN.
LISTEN_PICKUP_S = 0.2


@dataclass
class Rig:
    """One test's database, bucket and worker processes (all stopped at teardown)."""

    dsn: str
    s3_endpoint: str
    bucket: str
    folder: Path
    workers: list[WorkerProcess] = field(default_factory=list)

    @functools.cached_property
    def s3(self) -> Any:
        return s3_client(self.s3_endpoint)

    @property
    def public_url(self) -> str:
        return f"{self.s3_endpoint}/{self.bucket}"

    def upload(self, photos: dict[str, bytes]) -> list[str]:
        """Put photos under originals/ as the downloader does; return their s3:// URLs."""
        client = self.s3
        for key, data in photos.items():
            client.put_object(Bucket=self.bucket, Key=f"originals/{key}", Body=data)
        return [f"s3://{self.bucket}/originals/{key}" for key in photos]

    def spawn(
        self,
        *args: str,
        s3_endpoint: str | None = None,
        db_url: str | None = None,
        db_session_url: str | None = None,
        ready_timeout: float = 30,
    ) -> WorkerProcess:
        """Start `collage worker ARGS` and wait until it is registered and listening."""
        env = worker_env(
            db_url=db_url or self.dsn,
            db_session_url=db_session_url or db_url or self.dsn,
            s3_endpoint=s3_endpoint or self.s3_endpoint,
            s3_key=S3_KEY,
            bucket=self.bucket,
            public_url=self.public_url,
            temp_dir=self.folder / "scratch",
        )
        number = len(self.workers) + 1
        worker = WorkerProcess(env, self.folder / f"worker-{number}.log", args)
        self.workers.append(worker)
        alive = sum(1 for w in self.workers if w.alive())
        with psycopg.connect(self.dsn, autocommit=True) as conn:

            def ready() -> bool:
                if not worker.alive():
                    raise AssertionError(f"worker {number} exited:\n{worker.tail()}")
                registered = conn.execute("SELECT count(*) FROM procrastinate_workers")
                return bool(worker.logged("listening for new jobs")) and (
                    registered.fetchone()[0] >= alive  # type: ignore[index]
                )

            sandbox.wait_until(ready, timeout=ready_timeout, what=f"worker {number} to start")
        return worker

    def collage(self, brand: str, external_id: str) -> bytes:
        key = f"collages/{brand}/{external_id}.jpg"
        return bytes(self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def keys(self) -> set[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        return {obj["Key"] for page in pages for obj in page.get("Contents", [])}


def add_products(
    db: Db,
    image_urls: list[object],
    *,
    brands: list[str] | None = None,
    external_ids: list[str] | None = None,
    status: str = "uploaded",
) -> list[int]:
    """Insert SKUs in one statement (one transaction); return their ids in order."""
    count = len(image_urls)
    ids = external_ids or [f"sku-{uuid.uuid4().hex[:10]}" for _ in range(count)]
    rows = db.rows(
        "INSERT INTO raw_products (external_id, brand, image_urls, image_status)"
        " SELECT e, b, u, %s"
        " FROM unnest(%s::text[], %s::text[], %s::jsonb[]) AS t(e, b, u) RETURNING id, external_id",
        [
            status,
            ids,
            brands or ["faults"] * count,
            [
                urls if urls is None or isinstance(urls, Jsonb) else Jsonb(urls)
                for urls in image_urls
            ],
        ],
    )
    by_external = {external_id: product_id for product_id, external_id in rows}
    return [by_external[e] for e in ids]


def doing_jobs(db: Db) -> list[tuple]:
    return db.rows(
        "SELECT id, lock, worker_id FROM procrastinate_jobs"
        " WHERE task_name = 'collage.build' AND status = 'doing' ORDER BY id"
    )


def statuses(db: Db, ids: list[int]) -> dict[int, tuple]:
    rows = db.rows(
        "SELECT id, image_status, error_message, collage_url FROM raw_products WHERE id = ANY(%s)",
        [ids],
    )
    return {row[0]: row[1:] for row in rows}
