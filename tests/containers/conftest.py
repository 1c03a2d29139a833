"""Fixtures for the image and compose tests: the Docker engine, the image, figures to print."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.conftest import missing_service
from tests.containers import engine

FIGURES = pytest.StashKey[list[str]]()
Figure = Callable[[str], None]


@pytest.fixture(scope="session")
def docker_engine() -> str:
    """The version of the Docker daemon that answers; skip (fail in CI) when none does."""
    version = engine.engine_version()
    if version is None:
        missing_service("a Docker daemon (bin/setup-docker installs and starts one)")
    assert version
    return version


@pytest.fixture(scope="session")
def compose(docker_engine: str) -> str:
    """The version of Docker Compose v2 (the compose files' top-level `name:` needs v2)."""
    version = engine.compose_version()
    if version is None:
        missing_service("Docker Compose v2 (bin/setup-docker installs it)")
    assert version
    return version


@pytest.fixture(scope="session")
def figure(request: pytest.FixtureRequest) -> Figure:
    """Record one line of measurements: printed now (-s) and again in the run's summary."""
    lines = request.config.stash.setdefault(FIGURES, [])

    def record(line: str) -> None:
        print(line)
        lines.append(line)

    return record


@pytest.fixture(scope="session")
def worker_image(docker_engine: str, figure: Figure) -> str:
    """The project's image, built from this checkout as `collage-worker:test`."""
    tag = "collage-worker:test"
    built = engine.build(engine.ROOT, tag)
    base = engine.standin_for(tag)  # labels are inherited from the base image
    figure(
        f"image: built in {built.seconds:.1f}s ({len(built.ran)} steps not cached),"
        f" {engine.image_size_mb(tag):.0f} MB, engine {docker_engine}"
        + (f", on a stand-in for {base}" if base else "")
    )
    return tag


@pytest.fixture
def containers() -> Iterator[list[engine.Container]]:
    """Containers a test starts; each is removed afterwards, its last logs printed."""
    started: list[engine.Container] = []
    yield started
    for container in started:
        print(f"--- {container.name} ---\n{container.logs()[-3000:]}")
        container.remove()


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    lines = config.stash.get(FIGURES, [])
    if lines:
        terminalreporter.section("container figures")
        for line in lines:
            terminalreporter.write_line(line)
