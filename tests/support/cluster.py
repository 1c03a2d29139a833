"""A PostgreSQL cluster of the tests' own, which the fault tests may stop, restart and break."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dev import sandbox

PG_BINDIRS = ("/usr/lib/postgresql/15/bin", *sorted(glob.glob("/usr/lib/postgresql/*/bin")))


def pg_bindir() -> Path | None:
    """Find initdb and pg_ctl (Debian keeps them off PATH)."""
    for folder in (os.environ.get("PG_BINDIR", ""), *PG_BINDIRS):
        if folder and os.access(Path(folder) / "initdb", os.X_OK):
            return Path(folder)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _as_postgres(command: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root.
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@dataclass
class Cluster:
    """A PostgreSQL cluster of the tests' own, on a free loopback port, trust auth."""

    bindir: Path
    folder: Path
    port: int

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _pg_ctl(self, *args: str, timeout: float = 60) -> None:
        command = [str(self.bindir / "pg_ctl"), "-D", str(self.folder / "data"), "-w", *args]
        try:
            result = subprocess.run(
                _as_postgres(command), capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            processes = subprocess.run(
                ["ps", "-u", "postgres", "-o", "pid,stat,wchan:20,etime,args"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout
            raise RuntimeError(
                f"pg_ctl {args[-1]} did not finish in {timeout:.0f} s;"
                f" the server's processes:\n{processes}\n{self.log()}"
            ) from None
        if result.returncode != 0:
            raise RuntimeError(f"pg_ctl {args[-1]} failed: {result.stderr}\n{self.log()}")

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            " -c max_connections=200"
            # A connection opened during a shutdown waits this long for its startup packet,
            # and holds the fast shutdown as long (60 s by default: seen in CI).
            " -c authentication_timeout=5s"
        )
        self._pg_ctl("-l", str(self.folder / "server.log"), "-o", options, "start")

    def restart(self) -> None:
        """Stop with -m fast (every session is terminated) and start again."""
        self.shut_down()
        self.start()

    def shut_down(self) -> None:
        """Stop with -m fast, as an operator or a failover would; start() brings it back.

        On a loaded machine a fast shutdown has hung for a minute: the processes and the log
        are printed (pytest shows them with a failure) and the server is stopped at once
        instead, which is an outage for the worker all the same.
        """
        try:
            self._pg_ctl("-m", "fast", "stop")
        except RuntimeError as exc:
            print(f"fast stop failed; stopping at once:\n{exc}")
            self._pg_ctl("-m", "immediate", "stop", timeout=30)

    def stop(self) -> None:
        """Stop at once; the data is thrown away anyway."""
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self._pg_ctl("-m", "immediate", "stop", timeout=30)

    def log(self) -> str:
        """Return the server's log, for failure messages."""
        path = self.folder / "server.log"
        return path.read_text(errors="replace")[-5000:] if path.exists() else ""


@contextlib.contextmanager
def throwaway_cluster(bindir: Path) -> Iterator[Cluster]:
    """Create, start and finally delete a cluster run by the `postgres` OS user."""
    folder = Path(tempfile.mkdtemp(prefix="collage-pg-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    cluster = Cluster(bindir, folder, sandbox.free_port())
    try:
        subprocess.run(
            _as_postgres(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(folder / "data"),
                    "--auth=trust",
                    "-U",
                    "postgres",
                    "--no-sync",
                    "--no-locale",
                    "-E",
                    "UTF8",
                ]
            ),
            check=True,
            capture_output=True,
            timeout=120,
        )
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)
