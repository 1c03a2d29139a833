"""The Docker CLI as the tests drive it: builds, containers, compose projects, with deadlines."""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dev import sandbox

ROOT = Path(__file__).resolve().parents[2]
HOST_CA_GLOB = "/usr/local/share/ca-certificates/*.crt"
SCRATCH = "/tmp/collage"
# How production should run the image by hand; compose.yml says the same in its own words.
HARDENED = (
    "--read-only",
    "--tmpfs",
    f"{SCRATCH}:uid=10001,gid=10001,mode=0700",
    "--security-opt",
    "no-new-privileges",
    "--cap-drop",
    "ALL",
    "--stop-timeout",
    "110",  # longer than collage.constants.DRAIN_S
)


def wait_for(check: Callable[[], bool], *, timeout: float, what: str) -> float:
    """sandbox.wait_until at a pace fit for docker commands: each poll starts a process."""
    return sandbox.wait_until(check, timeout=timeout, what=what, every=0.1)


class DockerError(RuntimeError):
    """A docker command failed; the message carries its output."""


def docker(
    *args: str, timeout: float = 120, check: bool = True, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `docker ARGS` and return what it printed; raise DockerError when it fails."""
    result = subprocess.run(
        ["docker", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(env) if env is not None else None,
        check=False,
    )
    if check and result.returncode != 0:
        raise DockerError(
            f"docker {' '.join(args[:3])} ... exited {result.returncode}:\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


def engine_version() -> str | None:
    """The daemon's version, or None when no Docker daemon answers."""
    try:
        result = docker("version", "--format", "{{.Server.Version}}", timeout=15, check=False)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def compose_version() -> str | None:
    """Docker Compose's version when it is v2 (the compose files need it), else None."""
    try:
        result = docker("compose", "version", "--short", timeout=15, check=False)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    version = result.stdout.strip().lstrip("v")
    return version if result.returncode == 0 and version.startswith("2.") else None


def extra_ca_certs() -> str:
    """PEM text of the CA certificates builds must trust: EXTRA_CA_CERTS, else the host's own."""
    if os.environ.get("EXTRA_CA_CERTS"):
        return os.environ["EXTRA_CA_CERTS"]
    return "".join(Path(p).read_text() for p in sorted(glob.glob(HOST_CA_GLOB)))


def standin_for(image: str) -> str | None:
    """Which pinned image a local image stands in for (bin/setup-docker labels them)."""
    result = docker(
        "image", "inspect", "-f", '{{index .Config.Labels "collage.standin-for"}}', image
    )
    return result.stdout.strip() or None


@dataclass(frozen=True)
class Build:
    """One `docker build`: how long it took and which steps ran instead of coming from cache."""

    seconds: float
    ran: list[str]
    output: str


def build(context: Path, tag: str, *args: str, timeout: float = 900) -> Build:
    """Build `context` with the legacy builder's step log (DOCKER_BUILDKIT=0), as CI has it."""
    env = {**os.environ, "DOCKER_BUILDKIT": "0", "EXTRA_CA_CERTS": extra_ca_certs()}
    started = time.monotonic()
    result = docker(
        "build",
        "--force-rm",  # a failed step leaves no stopped container behind
        "--build-arg",
        "EXTRA_CA_CERTS",
        "-t",
        tag,
        *args,
        str(context),
        timeout=timeout,
        env=env,
    )
    return Build(time.monotonic() - started, _steps_run(result.stdout), result.stdout)


def _steps_run(log: str) -> list[str]:
    # "Step 7/21 : RUN ..." then " ---> Using cache" when the layer came from the cache.
    ran = []
    for step in re.split(r"^Step \d+/\d+ : ", log, flags=re.M)[1:]:
        instruction, _, after = step.partition("\n")
        # FROM, and an ARG before the first FROM, make no layer: no "--->" line follows them.
        made_layer = after.lstrip().startswith("--->") and not instruction.startswith("FROM")
        if made_layer and not after.lstrip().startswith("---> Using cache"):
            ran.append(instruction.strip())
    return ran


def image_size_mb(tag: str) -> float:
    return int(docker("image", "inspect", "-f", "{{.Size}}", tag).stdout) / 1e6


@dataclass
class Container:
    """A container started by a test; `containers` removes it afterwards."""

    name: str
    started: float = field(default_factory=time.monotonic)

    def inspect(self) -> dict[str, Any]:
        return json.loads(docker("inspect", self.name).stdout)[0]

    def state(self) -> dict[str, Any]:
        return self.inspect()["State"]

    def running(self) -> bool:
        return bool(self.state()["Running"])

    def logs(self) -> str:
        result = docker("logs", self.name, check=False)
        return result.stdout + result.stderr

    def logged(self, message: str) -> bool:
        """Whether the worker wrote a JSON log line with this message."""
        for line in self.logs().splitlines():
            try:
                if json.loads(line).get("message") == message:
                    return True
            except ValueError:
                continue
        return False

    def exec(self, *command: str) -> subprocess.CompletedProcess[str]:
        return docker("exec", self.name, *command, check=False)

    def wait_healthy(self, *, timeout: float) -> float:
        """Wait until Docker's health check says healthy; return seconds since the start."""

        def healthy() -> bool:
            state = self.state()
            if not state["Running"]:
                raise AssertionError(f"{self.name} exited:\n{self.logs()[-3000:]}")
            return bool(state["Health"]["Status"] == "healthy")

        wait_for(healthy, timeout=timeout, what=f"{self.name} to be healthy")
        return time.monotonic() - self.started

    def remove(self) -> None:
        docker("rm", "-f", "-v", self.name, check=False)


def run_detached(image: str, *, env: Mapping[str, str], args: Sequence[str] = ()) -> Container:
    """`docker run -d` the image hardened as production runs it, on the host's network."""
    container = Container(f"collage-test-{uuid.uuid4().hex[:10]}")
    docker(
        "run",
        "-d",
        "--name",
        container.name,
        "--network",
        "host",
        *HARDENED,
        *_env_flags(env),
        image,
        *args,
    )
    return container


def run_once(
    image: str, *args: str, env: Mapping[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`docker run --rm` one command in the image; return its result whatever the exit code."""
    return docker(
        "run",
        "--rm",
        "--network",
        "host",
        *HARDENED,
        *_env_flags(env),
        image,
        *args,
        timeout=timeout,
        check=False,
    )


def _env_flags(env: Mapping[str, str]) -> list[str]:
    return [flag for name, value in env.items() for flag in ("-e", f"{name}={value}")]
