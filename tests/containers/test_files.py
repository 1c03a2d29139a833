"""What can be checked of the Dockerfile, the compose files and the stand-ins without an engine."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from collage.cli import main
from collage.constants import DRAIN_S, STALLED_WORKER_S
from tests.containers import engine

ROOT = engine.ROOT
STANDINS = ROOT / "tests" / "containers" / "standins"


class ComposeLoader(yaml.SafeLoader):
    """YAML as Compose reads it: `!reset` (drop what the base file set) is a tag of its own."""


ComposeLoader.add_constructor("!reset", lambda loader, node: "!reset")


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions, (WORD, rest), grouped by stage; [0] is before any FROM."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    stages: list[list[tuple[str, str]]] = [[]]
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            if word.upper() == "FROM":
                stages.append([])
            stages[-1].append((word.upper(), rest.strip()))
    return stages


def compose(name: str) -> dict:
    return yaml.load((ROOT / name).read_text(), Loader=ComposeLoader)  # noqa: S506 (safe loader)


def assert_collage_command(args: list[str]) -> None:
    """The command exists and accepts these options (checked with --help, nothing runs)."""
    result = CliRunner().invoke(main, [*args, "--help"])
    assert result.exit_code == 0, f"collage {' '.join(args)}: {result.output}"


def test_the_base_image_is_a_build_argument_defaulting_to_the_pinned_official_one() -> None:
    preamble, *stages = dockerfile_stages()
    [(word, arg)] = preamble
    assert word == "ARG" and re.fullmatch(r"PYTHON_IMAGE=python:3\.12\.\d+-slim-bookworm", arg)
    assert [stage[0][1].split()[0] for stage in stages] == [
        "${PYTHON_IMAGE}",
        "deps",
        "${PYTHON_IMAGE}",
    ]


def test_the_final_stage_runs_the_worker_unprivileged_with_a_health_check() -> None:
    final = dockerfile_stages()[-1]
    words = dict(final)
    assert words["USER"] == "collage"
    assert any("--uid 10001" in rest for word, rest in final if word == "RUN")
    assert json.loads(words["ENTRYPOINT"]) == ["collage"]  # exec form: SIGTERM reaches it
    assert_collage_command(json.loads(words["CMD"]))
    assert json.loads(words["HEALTHCHECK"].split("CMD", 1)[1]) == ["collage", "health"]
    assert "TMPDIR=/tmp/collage" in words["ENV"]  # with --read-only, the tmpfs is the only /tmp


def test_dependencies_install_from_the_pins_before_any_code_or_readme() -> None:
    deps = dockerfile_stages()[1]
    copied = " ".join(rest for word, rest in deps if word == "COPY").split()
    assert set(copied) == {"pyproject.toml", "setup.cfg", "constraints.txt", "./"}
    assert any("-c constraints.txt" in rest for word, rest in deps if word == "RUN")
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert "*" in ignore and "!README.md" not in ignore  # not even in the build context
    assert "long_description = file: README.md" not in (ROOT / "setup.cfg").read_text()


def test_the_extra_ca_certificates_reach_only_the_stage_that_downloads() -> None:
    stages = dockerfile_stages()
    declared = [i for i, stage in enumerate(stages) if ("ARG", "EXTRA_CA_CERTS=") in stage]
    assert declared == [1]
    # The later stages build and install offline, from what the dependency stage fetched.
    later = [
        rest for stage in stages[2:] for word, rest in stage if word == "RUN" and "pip" in rest
    ]
    assert later and all("--no-index" in rest for rest in later)


def test_compose_production_shape() -> None:
    worker = compose("compose.yml")["services"]["worker"]
    assert worker["restart"] == "unless-stopped"
    assert worker["env_file"] == [{"path": ".env", "required": False}]
    assert worker["deploy"]["resources"]["limits"]["memory"] == "4g"
    assert worker["deploy"]["resources"]["reservations"]["memory"] == "1g"
    grace = int(worker["stop_grace_period"].rstrip("s"))
    assert worker["command"] == ["worker"]  # the drain is --graceful-timeout's default
    assert DRAIN_S < grace < STALLED_WORKER_S
    assert_collage_command(worker["command"])
    assert worker["healthcheck"]["test"][1:] == ["collage", "health"]
    assert worker["read_only"] is True
    assert [t.split(":")[0] for t in worker["tmpfs"]] == ["/tmp/collage"]
    assert "no-new-privileges:true" in worker["security_opt"]
    assert worker["build"]["args"] == ["EXTRA_CA_CERTS"]
    assert compose("compose.yml")["name"] == "collage"  # Compose v2 only: the README says so


def test_compose_local_stack_is_complete_pinned_gated_and_self_contained() -> None:
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
    worker = services["worker"]
    env = worker["environment"]
    assert "pgbouncer-transaction" in env["STAGING_DB_URL"]
    assert "pgbouncer-session" in env["STAGING_DB_SESSION_URL"]
    assert worker["env_file"] == "!reset"  # .env's production values never reach it
    assert services["migrate"]["environment"] == env
    # The collage_url written to rows opens from the host: the object store's port is published.
    public = re.fullmatch(
        r"http://localhost:(\$\{LOCAL_S3_PORT:-9000\})/unde-images", env["S3_PUBLIC_URL"]
    )
    assert public, env["S3_PUBLIC_URL"]
    assert services["minio"]["ports"] == [f"127.0.0.1:{public.group(1)}:9000"]
    assert (
        "mc anonymous set download local/unde-images/collages" in services["bucket"]["command"][0]
    )


def test_every_pinned_image_has_a_stand_in() -> None:
    """bin/setup-docker builds one for each pinned image a registry does not serve."""
    script = (ROOT / "bin" / "setup-docker").read_text()
    base = dict(dockerfile_stages()[0])["ARG"].split("=", 1)[1]
    pinned = {base} | {
        s["image"]
        for s in compose("compose.local.yml")["services"].values()
        if "image" in s and "build" not in s
    }
    for image in sorted(pinned):
        repository = image.split(":")[0]
        match = re.search(rf"^\s+{re.escape(repository)}\) echo (\w+)", script, re.M)
        assert match, f"bin/setup-docker has no stand-in for {image}"
        assert (STANDINS / match.group(1) / "Dockerfile").exists()


def test_env_example_lists_every_setting() -> None:
    source = (ROOT / "collage" / "settings.py").read_text()
    names = set(re.findall(r'env, "([A-Z0-9_]+)"', source))
    example = (ROOT / ".env.example").read_text()
    assert names, "no variable names found in settings.py"
    missing = [n for n in sorted(names) if not re.search(rf"^#? ?{n}=", example, re.M)]
    assert missing == []
    assert ".env" in (ROOT / ".gitignore").read_text().split()


@pytest.fixture
def compose_cli() -> None:
    """`docker compose config` needs only Compose v2 itself, not a daemon."""
    from tests.conftest import missing_service

    if engine.compose_version() is None:
        missing_service("Docker Compose v2 (bin/setup-docker installs it)")


@pytest.mark.usefixtures("compose_cli")
def test_the_compose_files_need_no_env_file_and_the_local_stack_ignores_one(
    tmp_path: Path,
) -> None:
    for name in ("compose.yml", "compose.local.yml", ".env.example"):
        (tmp_path / name).write_text((ROOT / name).read_text())

    def config(*files: str) -> dict:
        args = [a for f in files for a in ("-f", f)]
        result = subprocess.run(
            ["docker", "compose", *args, "config", "--format", "json"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)["services"]

    assert "worker" in config("compose.yml")  # a fresh clone: no .env at all
    (tmp_path / ".env").write_text((ROOT / ".env.example").read_text())
    production = config("compose.yml")["worker"]["environment"]
    assert production["S3_REGION"] == "fsn1"  # the production file does read .env
    local = config("compose.yml", "compose.local.yml")["worker"]["environment"]
    assert local["S3_REGION"] == "us-east-1"
    assert not set(local) - set(compose("compose.local.yml")["services"]["migrate"]["environment"])
    assert local["S3_ENDPOINT"] == "http://minio:9000"
