"""Prometheus metrics served by the worker on METRICS_PORT; every label has bounded values."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIServer

import psycopg
from procrastinate import JobContext
from procrastinate.middleware import AsyncCallNext, WorkerMiddleware
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from collage.db import connect_dicts, jobs
from collage.errors import error_classes
from collage.queue.app import pool_of

logger = logging.getLogger(__name__)

SCRAPE_TIMEOUT_S = 3.0  # a scrape that waits longer on the database says the queue is down

REGISTRY = CollectorRegistry()
OUTCOMES = ("built", "error", "retry", "superseded", "skipped", "interrupted")
_SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
_PICKUP = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 15, 60, 300)

BUILDS = Counter("collage_builds", "Build attempts by outcome.", ["outcome"], registry=REGISTRY)
FAILURES = Counter(
    "collage_failures", "Failed build attempts by error class.", ["error_class"], registry=REGISTRY
)
BUILD_SECONDS = Histogram(
    "collage_build_seconds",
    "Time to download, join and upload one collage.",
    buckets=_SECONDS,
    registry=REGISTRY,
)
PICKUP_SECONDS = Histogram(
    "collage_pickup_seconds",
    "Time from a job being due to a worker starting it.",
    ["task"],
    buckets=_PICKUP,
    registry=REGISTRY,
)
BYTES_DOWNLOADED = Counter(
    "collage_downloaded_bytes", "Bytes of original photos downloaded.", registry=REGISTRY
)
BYTES_UPLOADED = Counter("collage_uploaded_bytes", "Bytes of collages uploaded.", registry=REGISTRY)
ERROR_CLASSES = error_classes()


def record_outcome(outcome: str, *, error_class: str | None = None, duration_s: float) -> None:
    """Count one finished build attempt."""
    BUILDS.labels(outcome if outcome in OUTCOMES else "other").inc()
    if error_class:
        FAILURES.labels(error_class if error_class in ERROR_CLASSES else "internal").inc()
    if outcome in {"built", "superseded"}:
        BUILD_SECONDS.observe(duration_s)


async def pickup_middleware(call_next: AsyncCallNext, context: JobContext, worker: Any) -> Any:
    """Observe how long each job waited after it was due, then run it."""
    try:
        async with pool_of(context.app).connection() as conn:
            job_id = context.job.id
            assert job_id is not None
            waited = await jobs.pickup_delay_s(conn, job_id)
        if waited is not None:
            PICKUP_SECONDS.labels(context.job.task_name).observe(max(waited, 0.0))
    except psycopg.Error:
        logger.debug("pickup latency not measured", exc_info=True)
    return await call_next()


class QueueCollector(Collector):
    """Read queue depth and the oldest waiting job's age from the database at scrape time."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily(
            "collage_queue_jobs", "Build and maintenance jobs by state.", labels=["state"]
        )
        oldest = GaugeMetricFamily(
            "collage_oldest_waiting_seconds", "Age of the oldest job due and not yet started."
        )
        up = GaugeMetricFamily("collage_queue_up", "1 if the queue could be read.")
        try:
            with connect_dicts(self.dsn) as conn:
                row = jobs.summary(conn, timeout_s=SCRAPE_TIMEOUT_S)
        except psycopg.Error:
            up.add_metric([], 0)
            yield up
            return
        for state in ("waiting", "retry_later", "running", "stalled"):
            depth.add_metric([state], row[state])
        waited = row["oldest_waiting_for"]
        oldest.add_metric([], waited.total_seconds() if waited is not None else 0.0)
        up.add_metric([], 1)
        yield from (depth, oldest, up)


@dataclass
class Exporter:
    """The /metrics HTTP server and the worker middleware that feeds it."""

    server: WSGIServer
    collector: QueueCollector | None
    middleware: tuple[WorkerMiddleware, ...] = (pickup_middleware,)

    def close(self) -> None:
        """Stop serving and forget the queue collector (tests start several)."""
        self.server.shutdown()
        self.server.server_close()
        if self.collector is not None:
            REGISTRY.unregister(self.collector)


def serve(port: int, *, dsn: str | None = None, addr: str = "0.0.0.0") -> Exporter:  # noqa: S104
    """Serve /metrics on `port` (all interfaces: Prometheus scrapes the container)."""
    collector = QueueCollector(dsn) if dsn else None
    if collector is not None:
        REGISTRY.register(collector)
    server, _ = start_http_server(port, addr=addr, registry=REGISTRY)
    logger.info("metrics served", extra={"action": "metrics", "port": port})
    return Exporter(server=server, collector=collector)
