"""Image hygiene, measured: build time cold and cached, size, what a code-only change rebuilds."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.containers import engine
from tests.containers.conftest import Figure

pytestmark = pytest.mark.slow

CONTEXT = ("Dockerfile", ".dockerignore", "pyproject.toml", "setup.cfg", "constraints.txt")


@pytest.fixture
def context(tmp_path: Path) -> Path:
    """A copy of the build context (and the README, which must not matter) to edit freely."""
    folder = tmp_path / "context"
    folder.mkdir()
    for name in (*CONTEXT, "README.md"):
        shutil.copy2(engine.ROOT / name, folder / name)
    for name in ("collage", "migrations"):
        shutil.copytree(
            engine.ROOT / name, folder / name, ignore=shutil.ignore_patterns("__pycache__")
        )
    return folder


@pytest.fixture
def tag(docker_engine: str) -> Iterator[str]:
    name = "collage-worker:hygiene"
    yield name
    engine.docker("rmi", name, check=False)


def layers(tag: str) -> dict[str, int]:
    """Each layer's id and size, as `docker history` lists them."""
    out = engine.docker(
        "history", "--no-trunc", "--human=false", "--format", "{{.ID}}\t{{.Size}}", tag
    )
    return {
        line.split("\t")[0]: int(line.split("\t")[1])
        for line in out.stdout.splitlines()
        if not line.startswith("<missing>")
    }


def short(step: str) -> str:
    """Name a build step shortly: `COPY collage`, `RUN pip wheel`."""
    pip = re.search(r"\bpip (\w+)", step)
    return (
        f"RUN pip {pip.group(1)}" if step.startswith("RUN") and pip else " ".join(step.split()[:2])
    )


def test_cold_cached_and_code_only_builds(context: Path, tag: str, figure: Figure) -> None:
    cold = engine.build(context, tag, "--no-cache")
    size_mb = engine.image_size_mb(tag)
    before = layers(tag)

    cached = engine.build(context, tag)
    assert cached.ran == [], cached.output

    (context / "README.md").write_text("# edited\n")
    readme = engine.build(context, tag)
    assert readme.ran == [], "a README edit must not rebuild anything"

    with (context / "collage" / "__init__.py").open("a") as source:
        source.write("# a code-only change\n")
    code = engine.build(context, tag)
    rebuilt = [short(step) for step in code.ran if step.startswith(("COPY", "RUN"))]
    assert not any("-c constraints.txt" in step for step in code.ran), code.ran
    assert not any(step.startswith("COPY --from=deps") for step in code.ran), code.ran
    assert any(step.startswith("COPY collage") for step in code.ran), code.ran
    new_layers = {i: size for i, size in layers(tag).items() if i not in before}
    new_kb = sum(new_layers.values()) / 1000
    assert new_kb < 2000, f"a code-only change made {new_kb:.0f} kB of new layers"

    figure(
        f"build: cold (--no-cache) {cold.seconds:.1f}s, cached {cached.seconds:.1f}s,"
        f" README edit {readme.seconds:.1f}s (nothing rebuilt), image {size_mb:.0f} MB"
    )
    figure(
        f"build: code-only change {code.seconds:.1f}s, {new_kb:.0f} kB of new layers:"
        f" {', '.join(rebuilt)} (plus metadata-only steps)"
    )


def test_the_extra_ca_certificates_stay_out_of_the_image(worker_image: str) -> None:
    pem = engine.extra_ca_certs()
    if not pem.strip():
        pytest.skip("this machine has no extra CA certificates to look for")
    history = engine.docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", worker_image)
    assert "EXTRA_CA_CERTS" not in history.stdout
    # One line of base64 from the middle of the first certificate: unique to it.
    marker = pem.split("-----BEGIN CERTIFICATE-----")[1].split()[3]
    where = ("/etc/ssl", "/opt/collage", "/usr/local/share", "/tmp")
    grep = ("run", "--rm", "--user", "root", "--entrypoint", "grep", worker_image, "-rlF", marker)
    found = engine.docker(*grep, *where, check=False)
    assert found.returncode == 1 and found.stdout == "", found.stdout
