"""Health checks for Docker's HEALTHCHECK and monitoring: each says ok or what is wrong."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from collage import db, inspection
from collage.constants import HEARTBEAT_MAX_AGE_S
from collage.errors import one_line
from collage.settings import Settings, redact
from collage.storage import Bucket


@dataclass(frozen=True)
class Check:
    """One line of `collage health`."""

    name: str
    ok: bool
    detail: str


def run_checks(settings: Settings) -> list[Check]:
    """Run every check; none raises, each reports its own failure."""
    return [
        _check("database", lambda: _database(settings.db_url)),
        _check("database (session)", lambda: _database(settings.db_session_url)),
        _check("bucket", lambda: _bucket(settings)),
        _check("worker heartbeat", lambda: _heartbeat(settings.db_url)),
    ]


def _check(name: str, probe: Callable[[], str]) -> Check:
    try:
        return Check(name, True, probe())
    except Exception as exc:  # any failure is the answer to the check
        return Check(name, False, one_line(exc))


def _database(dsn: str) -> str:
    with db.connect(dsn) as conn:
        conn.execute("SELECT 1")
    return redact(dsn)


def _bucket(settings: Settings) -> str:
    Bucket.from_settings(settings).ping()
    return f"{settings.s3_bucket} at {settings.s3_endpoint}"


def _heartbeat(dsn: str) -> str:
    with inspection.connect(dsn) as conn:
        age = inspection.heartbeat_age_s(conn)
    if age is None:
        raise RuntimeError("no worker has registered")
    if age > HEARTBEAT_MAX_AGE_S:
        raise RuntimeError(f"freshest heartbeat is {age:.0f}s old")
    return f"{age:.1f}s ago"
