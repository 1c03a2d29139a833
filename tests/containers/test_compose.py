"""The local stack of compose.yml + compose.local.yml, brought up from a clean clone, no .env.

A SKU goes through it as in production: photos in MinIO, a row in PostgreSQL, the worker
(LISTEN through the session pool, queries through the transaction pool) builds the collage,
and the collage_url it writes opens from the host.
"""

from __future__ import annotations

import io
import os
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from PIL import Image

from dev import sandbox
from dev.photos import solid_jpeg
from tests.containers import engine
from tests.containers.conftest import Figure
from tests.support.pictures import BLUE, RED

FILES = ("-f", "compose.yml", "-f", "compose.local.yml")


@dataclass
class Stack:
    """One compose project of the local stack, in its own clone, on free host ports."""

    folder: Path
    project: str
    s3_port: int
    metrics_port: int
    web_port: int

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "LOCAL_S3_PORT": str(self.s3_port),
            "LOCAL_METRICS_PORT": str(self.metrics_port),
            "WEB_PUBLISH_PORT": str(self.web_port),
            "EXTRA_CA_CERTS": engine.extra_ca_certs(),
        }

    def compose(self, *args: str, timeout: float = 120, check: bool = True):
        result = subprocess.run(
            ["docker", "compose", "-p", self.project, *FILES, *args],
            cwd=self.folder,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise engine.DockerError(
                f"docker compose {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
            )
        return result

    def sql(self, query: str) -> str:
        """Run one statement in the stack's PostgreSQL; return its unaligned output."""
        return self.compose(
            "exec",
            "-T",
            "postgres",
            "psql",
            "-U",
            "collage",
            "-d",
            "staging",
            "-v",
            "ON_ERROR_STOP=1",
            "-qtAX",
            "-c",
            query,
        ).stdout.strip()

    def address(self, service: str) -> str:
        container = self.compose("ps", "-q", service).stdout.strip()
        return engine.docker(
            "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", container
        ).stdout.strip()


@pytest.fixture
def stack(compose: str, tmp_path: Path) -> Iterator[Stack]:
    """A clean clone of this checkout's HEAD; the stack is taken down with its volumes after."""
    folder = tmp_path / "clone"
    subprocess.run(
        ["git", "clone", "--quiet", str(engine.ROOT), str(folder)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert not (folder / ".env").exists()
    made = Stack(
        folder,
        f"collage-test-{uuid.uuid4().hex[:8]}",
        s3_port=sandbox.free_port(),
        metrics_port=sandbox.free_port(),
        web_port=sandbox.free_port(),
    )
    yield made
    logs = made.compose("logs", "--no-color", "--tail", "40", check=False)
    print(logs.stdout[-6000:])
    made.compose("down", "-v", "--remove-orphans", "--timeout", "30", check=False)


@pytest.mark.slow
def test_the_local_stack_builds_a_sku_through_both_pools(stack: Stack, figure: Figure) -> None:
    started = time.monotonic()
    stack.compose("up", "-d", "--build", "--wait", timeout=900)
    up_s = time.monotonic() - started
    states = stack.compose("ps", "-a", "--format", "{{.Service}} {{.State}} {{.ExitCode}}").stdout
    assert {"migrate exited 0", "bucket exited 0", "worker running 0"} <= set(states.splitlines())

    s3 = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{stack.s3_port}",
        aws_access_key_id="collage",
        aws_secret_access_key="collage-secret",
        region_name="us-east-1",
    )
    photos = {
        "originals/stack/red.jpg": solid_jpeg(40, 30, RED),
        "originals/stack/blue.jpg": solid_jpeg(20, 60, BLUE),
    }
    for key, data in photos.items():
        s3.put_object(Bucket="unde-images", Key=key, Body=data)
    urls = ", ".join(f'"s3://unde-images/{key}"' for key in photos)
    product_id = stack.sql(
        "INSERT INTO raw_products (external_id, brand, image_urls, image_status)"
        f" VALUES ('STACK-1', 'compose', '[{urls}]', 'uploaded') RETURNING id"
    )
    inserted = time.monotonic()
    engine.wait_for(
        lambda: (
            stack.sql(f"SELECT image_status FROM raw_products WHERE id = {product_id}")
            != "uploaded"
        ),
        timeout=60,
        what="the stack's worker to build the SKU",
    )
    ready_s = time.monotonic() - inserted
    row = stack.sql(
        f"SELECT image_status, coalesce(error_message, ''), collage_url FROM raw_products"
        f" WHERE id = {product_id}"
    )
    status, error, url = row.split("|")
    assert (status, error) == ("collage_ready", ""), row
    assert url == f"http://localhost:{stack.s3_port}/unde-images/collages/compose/STACK-1.jpg"

    # The worker reaches PostgreSQL only through the pools, and both carry its connections;
    # a pickup this fast came from a NOTIFY, which only the session pool delivers.
    session = stack.address("pgbouncer-session")
    transaction = stack.address("pgbouncer-transaction")
    peers = set(
        stack.sql(
            "SELECT DISTINCT host(client_addr) FROM pg_stat_activity"
            " WHERE datname = 'staging' AND client_addr IS NOT NULL"
        ).splitlines()
    )
    assert peers == {session, transaction}, (peers, session, transaction)
    pickup_s = float(
        stack.sql(
            "SELECT extract(epoch FROM max(e.at) FILTER (WHERE e.type = 'started')"
            " - min(e.at) FILTER (WHERE e.type = 'deferred')) FROM procrastinate_events e"
            f" JOIN procrastinate_jobs j ON j.id = e.job_id WHERE j.lock = 'product:{product_id}'"
        )
    )
    listening = stack.sql(
        "SELECT DISTINCT host(client_addr) FROM pg_stat_activity"
        " WHERE datname = 'staging' AND query LIKE 'LISTEN%'"
    )
    assert listening == session, (listening, session)  # the LISTEN goes through the session pool
    figure(f"compose stack: pickup {pickup_s * 1000:.0f} ms (woken by NOTIFY)")

    # From the host, with no keys (url is the http://localhost one asserted above).
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310
        assert response.headers["Content-Type"] == "image/jpeg"
        jpeg = response.read()
    with Image.open(io.BytesIO(jpeg)) as image:
        assert image.size == (100, 60)
        assert max(abs(a - b) for a, b in zip(image.getpixel((40, 30)), RED, strict=True)) < 16
        assert max(abs(a - b) for a, b in zip(image.getpixel((90, 30)), BLUE, strict=True)) < 16
    metrics_url = f"http://127.0.0.1:{stack.metrics_port}/metrics"
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        assert 'collage_builds_total{outcome="built"} 1.0' in response.read().decode()

    down_started = time.monotonic()
    stack.compose("down", "-v", "--timeout", "90")
    down_s = time.monotonic() - down_started
    assert stack.compose("ps", "-a", "-q").stdout.strip() == ""
    volumes = engine.docker("volume", "ls", "-q", "--filter", f"name={stack.project}_").stdout
    assert volumes.strip() == ""
    images = stack.compose("config", "--images").stdout.split()
    standins = sorted({i for i in images if not i.startswith("collage") and engine.standin_for(i)})
    base = engine.standin_for("collage-worker:latest")  # the worker inherits its base's label
    standins += [f"{base} (the worker's base)"] if base else []
    figure(
        f"compose: up --build --wait {up_s:.0f}s (all healthy), SKU ready {ready_s:.1f}s after"
        f" its INSERT (pickup {pickup_s * 1000:.0f} ms), collage_url fetched from the host,"
        f" down -v {down_s:.1f}s"
    )
    figure(f"compose: stand-ins used: {', '.join(standins) or 'none (real images)'}")
