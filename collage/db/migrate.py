"""Bring a database to the current schema: Procrastinate's first, then ours, each file once.

Procrastinate ships no version table, so this runner records what it applied in
`collage_migrations`, next to the project's own files. Everything runs under one
session-level advisory lock, so two deploys migrating at once take turns.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from collage.db import preflight
from collage.db.connect import connect

logger = logging.getLogger(__name__)

PROCRASTINATE_PREFIX = "procrastinate/"
# Any constant works as long as nothing else in the database uses it for another purpose.
ADVISORY_LOCK_KEY = 7_324_019_551
NO_TRANSACTION = "-- collage: no-transaction"
QUEUEING_TRIGGERS = r"raw\_products\_upload\_%"  # LIKE: the project's triggers on raw_products
LOCK_POLL_S = 0.2

_CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS collage_migrations (
    name text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now(),
    sha256 text
);
ALTER TABLE collage_migrations ADD COLUMN IF NOT EXISTS sha256 text;
"""
_INDEX_NAME = re.compile(r"INDEX\s+CONCURRENTLY\s+IF\s+NOT\s+EXISTS\s+(\w+)", re.IGNORECASE)


class MigrationError(RuntimeError):
    """The database cannot be brought to the current schema as it is; the message says why."""


@dataclass(frozen=True)
class Migration:
    """One SQL file, named as it is recorded in the ledger."""

    name: str
    path: Path

    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")

    def sha256(self) -> str:
        """Fingerprint of the file, to notice one edited after it was applied."""
        return hashlib.sha256(self.path.read_bytes()).hexdigest()

    @property
    def transactional(self) -> bool:
        """False for a file whose first line is `-- collage: no-transaction` (CONCURRENTLY)."""
        first = self.sql().lstrip().partition("\n")[0]
        return first.strip() != NO_TRANSACTION

    def statements(self) -> list[str]:
        """Split a no-transaction file into statements, one per `;` at the end of a line.

        Only for plain DDL such as CREATE INDEX: no function bodies or quoted semicolons.
        """
        text = "\n".join(line for line in self.sql().splitlines() if not line.startswith("--"))
        return [part.strip() for part in text.split(";\n") if part.strip().rstrip(";")]


@dataclass(frozen=True)
class Status:
    """What the ledger says against what the code ships."""

    applied: list[str]
    pending: list[str]


def procrastinate_migrations() -> list[Migration]:
    """List the migration files shipped with the installed Procrastinate, oldest first."""
    folder = Path(str(resources.files("procrastinate.sql") / "migrations"))
    return [
        Migration(PROCRASTINATE_PREFIX + path.name, path) for path in sorted(folder.glob("*.sql"))
    ]


def shipped_migrations() -> Path:
    """Find the project's migration files where the package is installed (migrations/ here)."""
    return Path(str(resources.files("collage.migrations")))


def project_migrations(folder: Path | None = None) -> list[Migration]:
    """List this project's migration files, in the order their numbers give."""
    folder = folder or shipped_migrations()
    if not folder.is_dir():
        raise FileNotFoundError(f"migrations folder not found: {folder}")
    return [Migration(path.name, path) for path in sorted(folder.glob("*.sql"))]


def status(dsn: str, *, folder: Path | None = None) -> Status:
    """Compare the ledger with the shipped files without changing anything."""
    with connect(dsn) as conn:
        applied = _applied(conn)
        has_procrastinate = _has_procrastinate(conn)
    pending = [m.name for m in _pending(applied, has_procrastinate, folder)]
    if not has_procrastinate:
        pending.insert(0, _schema_name())
    return Status(applied=sorted(applied), pending=pending)


def apply(dsn: str, *, folder: Path | None = None) -> list[str]:
    """Apply whatever is pending and return the names applied (empty when up to date)."""
    with connect(dsn) as conn, migration_lock(conn):
        has_procrastinate = _has_procrastinate(conn)
        if not has_procrastinate or _pending(_applied(conn), has_procrastinate, folder):
            try:
                preflight.check(conn)  # before the first write
            except preflight.NotReady as exc:
                raise MigrationError(str(exc)) from None
        return _apply_pending(conn, folder)


@contextlib.contextmanager
def migration_lock(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """Hold the lock that makes deploys migrating (or uninstalling) at once take turns."""
    _take_lock(conn)
    try:
        yield
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", [ADVISORY_LOCK_KEY])


def _apply_pending(conn: psycopg.Connection[Any], folder: Path | None) -> list[str]:
    done: list[str] = []
    # On a first install the triggers that queue builds stay off until every migration has
    # been applied: a run that fails half way leaves nothing queueing jobs nobody would build.
    arming = not _queueing_triggers(conn)
    conn.execute(_CREATE_LEDGER)
    applied = _applied(conn)
    if not _has_procrastinate(conn):
        _install_procrastinate(conn)
        done.append(_schema_name())
        applied = _applied(conn)
    elif not any(name.startswith(PROCRASTINATE_PREFIX) for name in applied):
        logger.warning(
            "procrastinate schema found but not recorded; assuming it is current",
            extra={"action": "migrate", "version": _procrastinate_version()},
        )
        _record(conn, [m.name for m in procrastinate_migrations()])
        applied = _applied(conn)
    _refuse_edited(conn, project_migrations(folder))
    for migration in _pending(applied, True, folder):
        if migration.transactional:
            with conn.transaction():
                conn.execute(migration.sql())
                if arming:
                    _switch_queueing_triggers(conn, on=False)
                _record(conn, [migration.name], sha256=migration.sha256())
        else:
            for statement in migration.statements():
                _run_concurrently(conn, statement)
            _record(conn, [migration.name], sha256=migration.sha256())
        logger.info("migration applied", extra={"migration": migration.name})
        done.append(migration.name)
    _switch_queueing_triggers(conn, on=True)
    return done


def _queueing_triggers(conn: psycopg.Connection[Any]) -> list[tuple[str, bool]]:
    """The project's triggers on raw_products, and whether each is on."""
    rows = conn.execute(
        "SELECT t.tgname, t.tgenabled <> 'D' FROM pg_trigger t"
        " WHERE t.tgrelid = to_regclass('raw_products') AND t.tgname LIKE %s ORDER BY t.tgname",
        [QUEUEING_TRIGGERS],
    ).fetchall()
    return [(str(name), bool(on)) for name, on in rows]


def _switch_queueing_triggers(conn: psycopg.Connection[Any], *, on: bool) -> None:
    for name, is_on in _queueing_triggers(conn):
        if is_on != on:
            verb = sql.SQL("ENABLE" if on else "DISABLE")
            conn.execute(
                sql.SQL("ALTER TABLE raw_products {} TRIGGER {}").format(verb, sql.Identifier(name))
            )


def _take_lock(conn: psycopg.Connection) -> None:
    """Wait for the migration lock without sitting in a statement while waiting.

    A blocked pg_advisory_lock() is an open transaction, which CREATE INDEX CONCURRENTLY in
    the migration holding the lock would wait for: a deadlock. Polling avoids it.
    """
    waiting_logged = False
    while not _scalar(conn, "SELECT pg_try_advisory_lock(%s)", [ADVISORY_LOCK_KEY]):
        if not waiting_logged:
            logger.info("another migration is running; waiting", extra={"action": "migrate"})
            waiting_logged = True
        time.sleep(LOCK_POLL_S)


def _pending(applied: set[str], has_procrastinate: bool, folder: Path | None) -> list[Migration]:
    theirs = procrastinate_migrations() if has_procrastinate else []
    return [m for m in [*theirs, *project_migrations(folder)] if m.name not in applied]


def _install_procrastinate(conn: psycopg.Connection) -> None:
    """Create Procrastinate's schema from scratch; its migration files are then all applied."""
    schema = (resources.files("procrastinate.sql") / "schema.sql").read_text(encoding="utf-8")
    with conn.transaction():
        # No parameters: psycopg sends the text verbatim (its "%" included) as a simple query.
        conn.execute(schema)
        _record(conn, [_schema_name(), *(m.name for m in procrastinate_migrations())])
    logger.info("procrastinate schema installed", extra={"version": _procrastinate_version()})


def _run_concurrently(conn: psycopg.Connection, statement: str) -> None:
    """Run one statement of a no-transaction file; rebuild an index a failed run left INVALID.

    A CREATE INDEX CONCURRENTLY that fails leaves an invalid index behind, which IF NOT EXISTS
    would then skip for good.
    """
    found = _INDEX_NAME.search(statement)
    if found and _index_is_invalid(conn, found[1]):
        logger.warning("rebuilding an invalid index", extra={"index": found[1]})
        conn.execute(sql.SQL("DROP INDEX CONCURRENTLY {}").format(sql.Identifier(found[1])))
    conn.execute(statement)
    if found and _index_is_invalid(conn, found[1]):
        raise MigrationError(f"index {found[1]} is still INVALID after building it")


def _index_is_invalid(conn: psycopg.Connection, name: str) -> bool:
    row = conn.execute(
        "SELECT NOT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " WHERE c.relname = %s",
        [name],
    ).fetchone()
    return bool(row and row[0])


def _refuse_edited(conn: psycopg.Connection, migrations: list[Migration]) -> None:
    """Stop when an applied file has changed: its change would never reach the database."""
    recorded: dict[str, str] = dict(
        conn.execute("SELECT name, sha256 FROM collage_migrations WHERE sha256 IS NOT NULL")
    )
    edited = [m.name for m in migrations if recorded.get(m.name, m.sha256()) != m.sha256()]
    if edited:
        raise MigrationError(
            f"{', '.join(edited)} changed after being applied; put changes in a new file"
        )


def _record(conn: psycopg.Connection, names: list[str], *, sha256: str | None = None) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO collage_migrations (name, sha256) VALUES (%s, %s) ON CONFLICT DO NOTHING",
            [(name, sha256) for name in names],
        )


def _applied(conn: psycopg.Connection) -> set[str]:
    exists = conn.execute("SELECT to_regclass('collage_migrations') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return set()
    return {row[0] for row in conn.execute("SELECT name FROM collage_migrations")}


def _has_procrastinate(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT to_regclass('procrastinate_jobs') IS NOT NULL").fetchone()
    return bool(row and row[0])


def _procrastinate_version() -> str:
    return metadata.version("procrastinate")


def _schema_name() -> str:
    return f"{PROCRASTINATE_PREFIX}schema-{_procrastinate_version()}"


def _scalar(conn: psycopg.Connection[Any], query: str, params: list[object]) -> object:
    row = conn.execute(query, params).fetchone()
    return row[0] if row else None
