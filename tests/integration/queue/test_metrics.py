"""The metrics endpoint scraped after real jobs ran, and the one log line per job outcome."""

from __future__ import annotations

import io
import json
import logging
import urllib.request

import psycopg
import pytest

from collage.cli import logs
from collage.queue import metrics
from collage.settings import Settings
from dev import sandbox
from dev.photos import jpeg
from tests.support.skus import StartWorker, add_product, final_state, upload


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_metrics_after_real_jobs(
    db: psycopg.Connection, settings: Settings, s3, start_worker: StartWorker
) -> None:
    urls = upload(s3, settings, {"a.jpg": jpeg(40, 50), "b.jpg": jpeg(30, 50)})
    port = sandbox.free_port()
    exporter = metrics.serve(port, dsn=settings.db_url, addr="127.0.0.1")
    try:
        before = scrape(port)
        start_worker(settings, middleware=exporter.middleware)
        good = add_product(db, urls)
        bad = add_product(db, ["s3://elsewhere/a.jpg"])
        final_state(db, good)
        final_state(db, bad)
        after = scrape(port)
    finally:
        exporter.close()

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    assert delta('collage_builds_total{outcome="built"}') == 1
    assert delta('collage_builds_total{outcome="error"}') == 1
    assert delta('collage_failures_total{error_class="ForeignUrl"}') == 1
    assert delta("collage_build_seconds_count") == 1
    assert delta('collage_pickup_seconds_count{task="collage.build"}') == 2
    assert delta("collage_downloaded_bytes_total") == len(jpeg(40, 50)) + len(jpeg(30, 50))
    assert delta("collage_uploaded_bytes_total") > 0
    assert after["collage_queue_up"] == 1
    assert after['collage_queue_jobs{state="waiting"}'] == 0
    assert after['collage_queue_jobs{state="running"}'] == 0
    assert "collage_oldest_waiting_seconds" in after


def test_the_queue_gauges_say_when_the_database_is_down() -> None:
    collector = metrics.QueueCollector("postgresql://postgres@127.0.0.1:1/none")
    families = {family.name: family for family in collector.collect()}
    assert [s.value for s in families["collage_queue_up"].samples] == [0]


def test_error_classes_outside_the_hierarchy_share_one_label() -> None:
    before = metrics.FAILURES.labels("internal")._value.get()
    metrics.record_outcome("error", error_class="KeyError", duration_s=0.1)
    assert metrics.FAILURES.labels("internal")._value.get() == before + 1


@pytest.fixture
def json_logs() -> io.StringIO:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    logs.configure("json")
    root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
    yield stream
    root.handlers[:], level = saved
    root.setLevel(level)


def test_one_json_line_per_job_outcome(
    db: psycopg.Connection,
    settings: Settings,
    s3,
    start_worker: StartWorker,
    json_logs: io.StringIO,
) -> None:
    urls = upload(s3, settings, {"a.jpg": jpeg(40, 50)})
    start_worker(settings)
    pid = add_product(db, urls, brand="zara", external_id="LOG-1")
    final_state(db, pid)
    lines = [json.loads(line) for line in json_logs.getvalue().splitlines()]
    outcomes = [line for line in lines if line.get("action") == "build_collage"]
    assert len(outcomes) == 1
    line = outcomes[0]
    assert line["message"] == "collage built" and line["level"] == "INFO"
    assert (line["product_id"], line["brand"], line["external_id"]) == (pid, "zara", "LOG-1")
    assert line["outcome"] == "built" and line["photos"] == 1
    assert line["bytes_out"] > 0 and line["duration_s"] >= 0
    assert "time" in line and "logger" in line


def test_text_logs_show_the_fields() -> None:
    record = logging.LogRecord(
        "collage.queue.settle", logging.INFO, "", 0, "collage built", None, None
    )
    record.product_id = 7
    assert logs.TextFormatter().format(record).endswith("collage built product_id=7")
