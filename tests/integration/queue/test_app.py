"""The module-level app, as `procrastinate --app=collage.queue.app.app worker` uses it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg

from collage.constants import MAINTENANCE_PRIORITY, MAINTENANCE_QUEUE
from collage.queue.app import app
from collage.settings import Settings
from dev.photos import jpeg
from tests.support.skus import add_product, final_state, upload
from tests.support.workers import env_of


def test_importing_the_app_connects_to_nothing_and_reads_no_environment() -> None:
    code = (
        "import os; os.environ.clear();"
        " import collage.queue.app, collage.queue.build, collage.queue.periodic;"
        " print(sorted(collage.queue.app.app.tasks))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert "collage.build" in result.stdout and "collage.sweep" in result.stdout


def test_periodic_tasks_are_registered_with_their_schedules() -> None:
    import collage.queue.build
    import collage.queue.periodic  # noqa: F401

    schedules = {
        task.task.name: task.cron for task in app.periodic_registry.periodic_tasks.values()
    }
    assert schedules == {
        "collage.sweep": "*/15 * * * *",
        "collage.retry_errors": "30 * * * *",
        "collage.rescue": "* * * * *",
        "collage.cleanup": "0 4 * * *",
    }
    for name in schedules:  # on their own queue, ahead of builds anyway, one waiting at most
        assert app.tasks[name].queue == MAINTENANCE_QUEUE != app.tasks["collage.build"].queue
        assert (
            app.tasks[name].priority == MAINTENANCE_PRIORITY > app.tasks["collage.build"].priority
        )
        assert app.tasks[name].queueing_lock == name


def test_maintenance_has_a_queue_of_its_own_that_no_backlog_of_builds_holds_up(
    db: psycopg.Connection,
) -> None:
    db.execute(
        "INSERT INTO procrastinate_jobs (queue_name, task_name, lock, args)"
        " SELECT 'collage', 'collage.build', 'product:' || n, '{}' FROM generate_series(1, 50) n"
    )
    db.execute(
        "INSERT INTO procrastinate_jobs (queue_name, task_name, priority, args)"
        " VALUES (%s, 'collage.rescue', %s, '{}')",
        [MAINTENANCE_QUEUE, MAINTENANCE_PRIORITY],
    )
    worker = db.execute("INSERT INTO procrastinate_workers DEFAULT VALUES RETURNING id").fetchone()
    fetched = db.execute(
        "SELECT task_name FROM procrastinate_fetch_job_v2(%s::varchar[], %s)",
        [[MAINTENANCE_QUEUE], worker[0]],
    ).fetchone()
    assert fetched == ("collage.rescue",)


def test_procrastinate_cli_runs_the_same_worker(
    db: psycopg.Connection, settings: Settings, s3
) -> None:
    urls = upload(s3, settings, {"a.jpg": jpeg(40, 50)})
    binary = Path(sys.executable).parent / "procrastinate"
    worker = subprocess.Popen(
        [str(binary), "--app=collage.queue.app.app", "worker", "-c", "2"],
        env={**os.environ, **env_of(settings)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        pid = add_product(db, urls, external_id="CLI-1")
        status, url, _ = final_state(db, pid, timeout=60)
    finally:
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=60)
    assert status == "collage_ready", stderr.decode()[-2000:]
    assert url.endswith("/collages/zara/CLI-1.jpg")
    assert worker.returncode == 0


def test_the_views_use_the_same_stalled_threshold_as_the_rescue(db: psycopg.Connection) -> None:
    from collage.constants import STALLED_WORKER_S

    view = db.execute("SELECT pg_get_viewdef('collage_queue_summary'::regclass)").fetchone()[0]
    assert f"'00:{STALLED_WORKER_S // 60:02d}:00'::interval" in view
