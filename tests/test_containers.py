"""What can be checked of the Dockerfile and compose files without a Docker engine."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from click.testing import CliRunner

from collage.cli import main

ROOT = Path(__file__).resolve().parent.parent


def dockerfile() -> dict[str, list[str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    instructions: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            instructions.setdefault(word.upper(), []).append(rest.strip())
    return instructions


def compose(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def assert_collage_command(args: list[str]) -> None:
    """The command exists and accepts these options (checked with --help, nothing runs)."""
    result = CliRunner().invoke(main, [*args, "--help"])
    assert result.exit_code == 0, f"collage {' '.join(args)}: {result.output}"


def test_dockerfile_base_user_entrypoint_and_healthcheck() -> None:
    d = dockerfile()
    assert re.fullmatch(r"python:3\.12\.\d+-slim-bookworm", d["FROM"][0])
    assert d["USER"] == ["collage"]
    entrypoint = json.loads(d["ENTRYPOINT"][0])  # exec form: SIGTERM reaches the worker
    command = json.loads(d["CMD"][0])
    assert entrypoint == ["collage"]
    assert_collage_command(command)
    health = d["HEALTHCHECK"][0]
    assert json.loads(health.split("CMD", 1)[1]) == ["collage", "health"]
    assert any("-c constraints.txt" in run for run in d["RUN"])  # dependencies from the pins


def test_compose_production_shape() -> None:
    worker = compose("compose.yml")["services"]["worker"]
    assert worker["restart"] == "unless-stopped"
    assert worker["env_file"] == ".env"
    assert worker["deploy"]["resources"]["limits"]["memory"] == "4g"
    assert worker["deploy"]["resources"]["reservations"]["memory"] == "1g"
    grace = int(worker["stop_grace_period"].rstrip("s"))
    drain = float(worker["command"][worker["command"].index("--graceful-timeout") + 1])
    assert grace > drain
    assert_collage_command(worker["command"])
    assert worker["healthcheck"]["test"][1:] == ["collage", "health"]


def test_compose_local_stack_is_complete_pinned_and_gated() -> None:
    services = compose("compose.local.yml")["services"]
    every = {*services, *compose("compose.yml")["services"]}
    for name, service in services.items():
        image = service.get("image", "")
        if "build" not in service and name != "worker":
            assert ":" in image and not image.endswith(":latest"), f"{name} is not pinned"
        for dependency, rule in (service.get("depends_on") or {}).items():
            assert dependency in every, f"{name} depends on unknown {dependency}"
            assert rule["condition"] in {"service_healthy", "service_completed_successfully"}
    modes = {services[n]["environment"]["POOL_MODE"] for n in services if "pgbouncer" in n}
    assert modes == {"session", "transaction"}
    assert_collage_command(services["migrate"]["command"])
    env = services["worker"]["environment"]
    assert "pgbouncer-transaction" in env["STAGING_DB_URL"]
    assert "pgbouncer-session" in env["STAGING_DB_SESSION_URL"]


def test_env_example_lists_every_setting() -> None:
    source = (ROOT / "collage" / "settings.py").read_text()
    names = set(re.findall(r'env, "([A-Z0-9_]+)"', source))
    example = (ROOT / ".env.example").read_text()
    assert names, "no variable names found in settings.py"
    missing = [n for n in sorted(names) if not re.search(rf"^#? ?{n}=", example, re.M)]
    assert missing == []
    assert ".env" in (ROOT / ".gitignore").read_text().split()
