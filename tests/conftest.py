"""Fixtures for the real services every test stands on: PostgreSQL, PgBouncer and S3."""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from collage.db import migrate
from collage.settings import Settings
from dev import sandbox
from dev.s3proxy import FaultRule, FaultyProxy
from tests.support.cluster import Cluster, pg_bindir, throwaway_cluster
from tests.support.db import Db
from tests.support.workers import Rig

DEFAULT_TEST_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
S3_KEY = sandbox.S3_KEY


def missing_service(what: str) -> None:
    """Skip on a laptop; fail in CI, where a missing service is a broken set-up."""
    message = f"{what} is not available"
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI must provide it; see bin/test)", pytrace=False)
    pytest.skip(message)


def _docker_answers() -> bool:
    try:
        import docker

        return bool(docker.from_env(timeout=3).ping())
    except Exception:
        return False


@pytest.fixture(scope="session")
def admin_dsn() -> Iterator[str]:
    """A superuser DSN: TEST_DATABASE_URL, else the local server, else a testcontainer."""
    dsn = os.environ.get("TEST_DATABASE_URL", DEFAULT_TEST_DSN)
    if sandbox.can_connect(dsn):
        yield dsn
        return
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:15", driver=None) as container:
            yield container.get_connection_url()
        return
    missing_service(f"PostgreSQL at {dsn} (set TEST_DATABASE_URL, or run Docker)")


@pytest.fixture(scope="session")
def template_db(admin_dsn: str) -> Iterator[str]:
    """Name of a database migrated once per run, cloned by every test that commits."""
    dsn = sandbox.create_database(admin_dsn, prefix="collage_template")
    migrate.apply(dsn)
    yield str(conninfo_to_dict(dsn)["dbname"])
    sandbox.drop_database(admin_dsn, dsn)


@pytest.fixture
def db_dsn(admin_dsn: str, template_db: str) -> Iterator[str]:
    """A fresh, migrated database of the test's own, dropped afterwards."""
    dsn = sandbox.create_database(admin_dsn, template=template_db, prefix="collage_test")
    yield dsn
    sandbox.drop_database(admin_dsn, dsn)


@pytest.fixture
def empty_db(admin_dsn: str) -> Iterator[str]:
    """A database with nothing in it, for migration tests."""
    dsn = sandbox.create_database(admin_dsn, prefix="collage_empty")
    yield dsn
    sandbox.drop_database(admin_dsn, dsn)


@pytest.fixture
def db(db_dsn: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to the test's database."""
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        yield conn


def _bouncer(admin_dsn: str, mode: sandbox.PoolMode) -> Iterator[sandbox.PgBouncer]:
    if sandbox.pgbouncer_binary() is None:
        missing_service("pgbouncer (apt-get install pgbouncer)")
    bouncer = sandbox.start_pgbouncer(admin_dsn, mode=mode)
    yield bouncer
    bouncer.stop()


@pytest.fixture(scope="session")
def session_bouncer(admin_dsn: str) -> Iterator[sandbox.PgBouncer]:
    """PgBouncer in session mode: what Procrastinate's LISTEN connection goes through."""
    yield from _bouncer(admin_dsn, "session")


@pytest.fixture(scope="session")
def transaction_bouncer(admin_dsn: str) -> Iterator[sandbox.PgBouncer]:
    """PgBouncer in transaction mode: what the app's queries go through in production."""
    yield from _bouncer(admin_dsn, "transaction")


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """An S3-compatible server on loopback for the whole run."""
    try:
        with sandbox.s3_server() as server:
            yield server.endpoint
    except ImportError:
        missing_service("moto's S3 server (pip install 'moto[server]')")


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A new, empty bucket for one test."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    sandbox.s3_client(s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3(s3_endpoint: str):
    """A boto3 client on the test S3 server."""
    return sandbox.s3_client(s3_endpoint)


@pytest.fixture
def settings(db_dsn: str, s3_endpoint: str, s3_bucket: str, tmp_path: Path) -> Settings:
    """Settings pointing at the test's own database, bucket and scratch folder."""
    return Settings(
        db_url=db_dsn,
        db_session_url=db_dsn,
        s3_endpoint=s3_endpoint,
        s3_access_key=S3_KEY,
        s3_secret_key=S3_KEY,
        s3_bucket=s3_bucket,
        s3_public_url=f"{s3_endpoint}/{s3_bucket}",
        temp_dir=tmp_path / "scratch",
    )


class WorkerThread:
    """`collage worker`'s supervisor running in a thread, stopped like SIGTERM would."""

    def __init__(self, settings: Settings, **options: Any) -> None:
        self.settings = settings
        self.options = options
        self.exit_code: int | None = None
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="collage-worker", daemon=True)

    def _run(self) -> None:
        from collage.queue.worker import supervise

        async def main() -> int:
            self._stop = asyncio.Event()
            return await supervise(self.settings, stop=self._stop, **self.options)

        try:
            self.exit_code = self._loop.run_until_complete(main())
        finally:
            self._loop.close()

    def start(self) -> WorkerThread:
        self._thread.start()
        with psycopg.connect(self.settings.db_url, autocommit=True) as conn:
            sandbox.wait_until(
                lambda: conn.execute("SELECT count(*) FROM procrastinate_workers").fetchone()[0],
                timeout=20,
                what="the worker to register",
            )
        return self

    def stop(self, timeout: float = 90) -> int | None:
        if not self._thread.is_alive():
            return self.exit_code  # stopped already
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the worker did not stop"
        return self.exit_code


@pytest.fixture
def start_worker() -> Iterator[Callable[..., WorkerThread]]:
    """Start a real worker for the test; every one started is stopped afterwards."""
    started: list[WorkerThread] = []

    def start(settings: Settings, **options: Any) -> WorkerThread:
        worker = WorkerThread(settings, **options).start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


FaultyS3 = Callable[[FaultRule], FaultyProxy]


@pytest.fixture
def faulty_s3(settings: Settings) -> Iterator[FaultyS3]:
    """Put a fault-injecting proxy in front of the test's S3; closed after the test."""
    proxies: list[FaultyProxy] = []

    def make(rule: FaultRule) -> FaultyProxy:
        proxies.append(FaultyProxy(settings.s3_endpoint, rule))
        return proxies[-1]

    yield make
    for proxy in proxies:
        proxy.close()


# --- a PostgreSQL cluster of the tests' own, for the fault and load tests -----------------


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """A PostgreSQL cluster these tests may restart; shared by the run, deleted after."""
    bindir = pg_bindir()
    if bindir is None:
        missing_service("PostgreSQL's initdb and pg_ctl (apt-get install postgresql-15)")
    assert bindir is not None
    with throwaway_cluster(bindir) as made:
        yield made


@pytest.fixture(scope="session")
def cluster_template(cluster: Cluster) -> str:
    """A migrated database in the throwaway cluster, cloned by every test."""
    dsn = sandbox.create_database(cluster.dsn, prefix="collage_tpl")
    migrate.apply(dsn)
    return str(conninfo_to_dict(dsn)["dbname"])


@pytest.fixture
def fault_dsn(cluster: Cluster, cluster_template: str) -> Iterator[str]:
    dsn = sandbox.create_database(cluster.dsn, template=cluster_template, prefix="collage_fault")
    yield dsn
    sandbox.drop_database(cluster.dsn, dsn)


@pytest.fixture
def fdb(fault_dsn: str) -> Iterator[Db]:
    db = Db(fault_dsn)
    yield db
    db.close()


@pytest.fixture
def rig(fault_dsn: str, s3_endpoint: str, s3_bucket: str, tmp_path: Path) -> Iterator[Rig]:
    made = Rig(fault_dsn, s3_endpoint, s3_bucket, tmp_path)
    yield made
    for number, worker in enumerate(made.workers, start=1):
        code = worker.stop()
        # Shown by pytest when the test failed: what each worker said last.
        print(f"--- worker {number} (exit {code}) ---\n{worker.tail(30)}")
