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

logger = logging.getLogger(__name__)

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
ERROR_CLASSES = frozenset(
    {
        "Transient",
        "Permanent",
        "NoPhotos",
        "BadImageUrls",
        "ForeignUrl",
        "UnsafeKey",
        "OriginalMissing",
        "PhotoUnreadable",
        "TooLarge",
    }
)

_PICKUP_SQL = """
SELECT extract(epoch FROM now() - greatest(e.at, j.scheduled_at))
  FROM procrastinate_jobs j JOIN procrastinate_events e ON e.job_id = j.id
 WHERE j.id = %s AND e.type = 'deferred'
"""


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
        async with context.app.connector.pool.connection() as conn:  # type: ignore[attr-defined]
            row = await (await conn.execute(_PICKUP_SQL, [context.job.id])).fetchone()
        if row and row[0] is not None:
            PICKUP_SECONDS.labels(context.job.task_name).observe(max(float(row[0]), 0.0))
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
            with (
                psycopg.connect(
                    self.dsn, connect_timeout=3, prepare_threshold=None, autocommit=True
                ) as conn,
                conn.transaction(),
            ):
                # SET LOCAL: a plain SET would stay on a transaction-pool server connection.
                conn.execute("SET LOCAL statement_timeout = '3s'")
                row = conn.execute(
                    "SELECT waiting, retry_later, running, stalled,"
                    " coalesce(extract(epoch FROM oldest_waiting_for), 0)"
                    " FROM collage_queue_summary"
                ).fetchone()
        except psycopg.Error:
            up.add_metric([], 0)
            yield up
            return
        assert row is not None
        for state, value in zip(
            ("waiting", "retry_later", "running", "stalled"), row, strict=False
        ):
            depth.add_metric([state], value)
        oldest.add_metric([], float(row[4]))
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
