"""Throwaway local services for the tests, the benchmarks and the demo: PgBouncer, S3, databases.

Nothing here is used by the worker in production.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

if TYPE_CHECKING:
    from collage.settings import Settings

PoolMode = Literal["session", "transaction"]
PGBOUNCER_PATHS = ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer")


def free_port() -> int:
    """Ask the kernel for a loopback port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    check: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    every: float = 0.02,
    explain: Callable[[], str] | None = None,
) -> float:
    """Poll `check` until it is true and return the seconds it took.

    An exception from `check` means "not yet" (a connection refused, a row not there yet), but
    an AssertionError ends the wait at once: the check knows it will never be true (a process
    died). Past the deadline, TimeoutError names `what`, and what `explain` says then.
    """
    started = time.monotonic()
    while True:
        try:
            if check():
                return time.monotonic() - started
        except AssertionError:
            raise
        except Exception:  # noqa: S110 - not ready yet
            pass
        if time.monotonic() - started > timeout:
            told = f"\n{explain()}" if explain is not None else ""
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{told}")
        time.sleep(every)


def with_dbname(dsn: str, dbname: str) -> str:
    """Return the same connection string pointing at another database."""
    return make_conninfo(dsn, dbname=dbname)


def can_connect(dsn: str) -> bool:
    """Say whether a PostgreSQL server answers at `dsn`."""
    try:
        with psycopg.connect(dsn, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


def create_database(admin_dsn: str, *, template: str | None = None, prefix: str = "collage") -> str:
    """Create a uniquely named database (a clone of `template` if given) and return its DSN."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template:
        query = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(template)
        )
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(query)
    return with_dbname(admin_dsn, name)


def drop_database(admin_dsn: str, dsn: str) -> None:
    """Drop the database `dsn` names, closing whatever is still connected to it."""
    name = conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(str(name)))
        )


def pgbouncer_binary() -> str | None:
    """Find Debian's PgBouncer, which is not on root's PATH."""
    found = shutil.which("pgbouncer")
    return found or next((p for p in PGBOUNCER_PATHS if os.access(p, os.X_OK)), None)


@dataclass
class PgBouncer:
    """A PgBouncer process in front of one PostgreSQL server, for any database on it."""

    mode: PoolMode
    port: int
    process: subprocess.Popen[bytes]
    folder: Path
    server_dsn: str

    def dsn(self, dbname: str) -> str:
        """Connection string for `dbname` through this pool."""
        return make_conninfo(self.server_dsn, host="127.0.0.1", port=self.port, dbname=dbname)

    def for_dsn(self, direct_dsn: str) -> str:
        """Route a direct connection string through this pool."""
        return self.dsn(str(conninfo_to_dict(direct_dsn)["dbname"]))

    def log(self) -> str:
        """Return what PgBouncer wrote, for failure messages."""
        return (self.folder / "pgbouncer.log").read_text(errors="replace")

    def stop(self) -> None:
        """Stop the process and wait for it."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def restart(self) -> None:
        """Stop and start again on the same port (clients see their connections drop)."""
        self.stop()
        self.process = _spawn_pgbouncer(self.folder)
        _wait_for_pgbouncer(self)


def start_pgbouncer(server_dsn: str, *, mode: PoolMode, port: int | None = None) -> PgBouncer:
    """Start PgBouncer on a free loopback port in `mode` in front of `server_dsn`'s server."""
    server = conninfo_to_dict(server_dsn)
    folder = Path(tempfile.mkdtemp(prefix=f"pgbouncer-{mode}-"))
    port = port or free_port()
    user = str(server.get("user") or "postgres")
    (folder / "users.txt").write_text(f'"{user}" ""\n')
    (folder / "pgbouncer.ini").write_text(
        "\n".join(
            [
                "[databases]",
                f"* = host={server.get('host') or '127.0.0.1'} port={server.get('port') or 5432}",
                "[pgbouncer]",
                "listen_addr = 127.0.0.1",
                f"listen_port = {port}",
                "unix_socket_dir =",
                "auth_type = trust",
                f"auth_file = {folder / 'users.txt'}",
                f"pool_mode = {mode}",
                "max_client_conn = 1000",
                "default_pool_size = 40",
                "ignore_startup_parameters = extra_float_digits,options",
                f"logfile = {folder / 'pgbouncer.log'}",
                "",
            ]
        )
    )
    if os.geteuid() == 0:
        # PgBouncer refuses to run as root; it drops to `postgres`, who must own its files.
        shutil.chown(folder, "postgres")
        for path in folder.iterdir():
            shutil.chown(path, "postgres")
    bouncer = PgBouncer(mode, port, _spawn_pgbouncer(folder), folder, server_dsn)
    _wait_for_pgbouncer(bouncer)
    return bouncer


def _spawn_pgbouncer(folder: Path) -> subprocess.Popen[bytes]:
    binary = pgbouncer_binary()
    if binary is None:
        raise FileNotFoundError("pgbouncer not found: install Debian's 'pgbouncer' package")
    command = [binary, str(folder / "pgbouncer.ini")]
    if os.geteuid() == 0:
        command[1:1] = ["-u", "postgres"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_for_pgbouncer(bouncer: PgBouncer) -> None:
    def answers() -> bool:
        if bouncer.process.poll() is not None:
            raise RuntimeError(f"pgbouncer exited:\n{bouncer.log()}")
        with socket.create_connection(("127.0.0.1", bouncer.port), timeout=1):
            return True

    wait_until(answers, timeout=15, what=f"pgbouncer ({bouncer.mode}) on port {bouncer.port}")


# The sandbox S3 server accepts any credentials; these are what the tests and the demo send.
S3_KEY = "sandbox"


def s3_client(endpoint: str, **options: Any) -> Any:
    """A boto3 client for the sandbox S3 server, addressed as production addresses its S3."""
    import boto3  # only the tools that start a sandbox need a bare client

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=S3_KEY,
        aws_secret_access_key=S3_KEY,
        region_name="us-east-1",
        **options,
    )


@dataclass(frozen=True)
class S3Server:
    """An S3-compatible HTTP server on loopback (moto's server mode)."""

    endpoint: str
    stop: Callable[[], None]


@contextmanager
def s3_server() -> Iterator[S3Server]:
    """Run moto's S3 server in a thread on a free port for the duration of the block."""
    from moto.server import ThreadedMotoServer  # only tests and the demo need moto

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield S3Server(endpoint=f"http://127.0.0.1:{port}", stop=server.stop)
    finally:
        server.stop()


def env_of(settings: Settings, **changes: str) -> dict[str, str]:
    """The environment variables that `collage` reads these settings from."""
    return {
        "STAGING_DB_URL": settings.db_url,
        "STAGING_DB_SESSION_URL": settings.db_session_url,
        "S3_ENDPOINT": settings.s3_endpoint,
        "S3_ACCESS_KEY": settings.s3_access_key,
        "S3_SECRET_KEY": settings.s3_secret_key,
        "S3_BUCKET": settings.s3_bucket,
        "S3_PUBLIC_URL": settings.s3_public_url,
        "TEMP_DIR": str(settings.temp_dir),
        "S3_DOWNLOAD_DEADLINE_S": str(settings.download_deadline_s),
        "COLLAGE_DEADLINE_S": str(settings.build_deadline_s),
        "LOG_FORMAT": "text",
        **changes,
    }


def terminate(process: subprocess.Popen[Any], *, timeout: float) -> int:
    """SIGTERM, then SIGKILL if it has not exited within `timeout`; reap it either way."""
    process.terminate()
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(timeout=30)
