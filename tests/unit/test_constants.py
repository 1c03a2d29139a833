"""The names and timings SQL and Python share are spelled the same in every SQL file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from collage import constants
from collage.db import migrate
from collage.errors import CollageError, error_classes
from collage.queue.metrics import ERROR_CLASSES

ROOT = Path(__file__).resolve().parents[2]
SQL = {
    **{m.name: m.sql() for m in migrate.project_migrations()},
    "schema.sql": (ROOT / "schema.sql").read_text(),
}
TASKS = {
    constants.BUILD_TASK,
    constants.SWEEP_TASK,
    constants.RETRY_ERRORS_TASK,
    constants.RESCUE_TASK,
    constants.CLEANUP_TASK,
}


def found(pattern: str) -> dict[str, list[str]]:
    """Every match of a regex's first group, by migration file."""
    matches = {name: re.findall(pattern, text) for name, text in SQL.items()}
    return {name: values for name, values in matches.items() if values}


def test_the_sku_lock_is_built_with_the_same_prefix_everywhere() -> None:
    prefixes = found(r"'(\w+:)'\s*\|\|")
    assert prefixes, "no lock expression found in the migrations"
    assert {p for values in prefixes.values() for p in values} == {constants.LOCK_PREFIX}
    assert constants.sku_lock(42) == "product:42"


def test_task_and_queue_names_in_sql_are_the_ones_python_registers() -> None:
    settings = found(r"current_setting\('([\w.]+)'")
    assert {s for values in settings.values() for s in values} == {constants.HOURLY_RETRY_SETTING}
    # Not a setting read back (current_setting) nor a setting's prefix ('collage.tag_' || ...).
    tasks = found(r"(?<!current_setting\()'(collage\.\w+)'(?!\s*\|\|)")
    assert {t for values in tasks.values() for t in values} <= TASKS
    queues = found(r"queue_name\s*=\s*'(\w+)'") | found(r"VALUES\s*\(\s*'(\w+)',\s*'collage\.")
    assert queues and {q for values in queues.values() for q in values} == {constants.QUEUE}

    from collage.queue import build, periodic
    from collage.queue.app import app

    assert build.build.name in app.tasks and periodic.sweep.name in app.tasks
    registered = {name for name in app.tasks if name.startswith("collage.")}
    assert registered == TASKS


def test_heartbeat_ages_in_the_views_match_the_rescue_and_health_check() -> None:
    stalled = found(r"last_heartbeat\s*<\s*now\(\)\s*-\s*interval\s*'(\d+) seconds'")
    alive = found(r"last_heartbeat\s*>\s*now\(\)\s*-\s*interval\s*'(\d+) seconds'")
    assert stalled and alive
    assert {int(v) for values in stalled.values() for v in values} == {constants.STALLED_WORKER_S}
    assert {int(v) for values in alive.values() for v in values} == {constants.HEARTBEAT_MAX_AGE_S}


@pytest.mark.parametrize("name", ["Dockerfile", "compose.yml"])
def test_the_deploy_files_give_the_worker_the_grace_python_expects(name: str) -> None:
    text = (ROOT / name).read_text()
    given = re.findall(r'--graceful-timeout"?,?\s*"?(\d+)', text)
    assert all(int(value) == constants.GRACEFUL_TIMEOUT_S for value in given)
    assert constants.GRACEFUL_TIMEOUT_S < constants.STALLED_WORKER_S


def test_metric_error_classes_are_derived_from_the_error_hierarchy() -> None:
    assert error_classes() == ERROR_CLASSES
    assert "OriginalMissing" in ERROR_CLASSES and "CollageError" not in ERROR_CLASSES

    class Invented(CollageError):
        """Defined here: the derived list must see it."""

    assert "Invented" in error_classes()
