"""`collage worker` in subprocesses, with the environment it reads, and a test's rig of them."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from collage.settings import Settings
from dev import sandbox
from dev.sandbox import env_of


def worker_env(settings: Settings, **changes: str) -> dict[str, str]:
    """What a `collage worker` subprocess runs with: this process's PATH and such, the settings,
    JSON logs (the tests read them)."""
    inherited = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("STAGING_", "S3_", "WORKER_", "METRICS_"))
    }
    return {**inherited, **env_of(settings, LOG_FORMAT="json", **changes)}


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
        return sandbox.s3_client(self.s3_endpoint)

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
        **changes: Any,
    ) -> WorkerProcess:
        """Start `collage worker ARGS` and wait until it is registered and listening.

        `changes` are Settings fields to change (env_of writes them to the environment).
        """
        settings = self.settings(
            db_url=db_url or self.dsn,
            db_session_url=db_session_url or db_url or self.dsn,
            s3_endpoint=s3_endpoint or self.s3_endpoint,
            **changes,
        )
        env = worker_env(settings)
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

    def settings(self, **changes: Any) -> Settings:
        """Settings for this rig's database, bucket and scratch folder, with `changes`."""
        defaults: dict[str, Any] = {
            "db_url": self.dsn,
            "db_session_url": self.dsn,
            "s3_endpoint": self.s3_endpoint,
            "s3_access_key": sandbox.S3_KEY,
            "s3_secret_key": sandbox.S3_KEY,
            "s3_bucket": self.bucket,
            "s3_public_url": self.public_url,
            "temp_dir": self.folder / "scratch",
        }
        return Settings(**{**defaults, **changes})

    def collage(self, brand: str, external_id: str) -> bytes:
        key = f"collages/{brand}/{external_id}.jpg"
        return bytes(self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def keys(self) -> set[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        return {obj["Key"] for page in pages for obj in page.get("Contents", [])}
