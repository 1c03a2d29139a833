"""The supervisor's restart and give-up rules, on a fake clock (the real outages are in
tests/faults/)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from collage.queue import worker
from collage.settings import Settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(worker, "monotonic", fake)
    monkeypatch.setattr(worker, "RESTART_FIRST_S", 0.001)
    monkeypatch.setattr(worker, "RESTART_MAX_S", 0.001)
    return fake


def offline_settings() -> Settings:
    return Settings(
        db_url="postgresql://nobody@127.0.0.1:1/none",
        db_session_url="postgresql://nobody@127.0.0.1:1/none",
        s3_endpoint="http://127.0.0.1:1",
        s3_access_key="k",
        s3_secret_key="k",
    )


def fake_runs(monkeypatch: pytest.MonkeyPatch, clock: Clock, durations: list[float]) -> list[Any]:
    """Replace one worker run with: the clock moves by the next duration, then it fails."""
    calls: list[Any] = []

    async def run_once(settings: Settings, **options: Any) -> str | None:
        calls.append(settings)
        clock.now += durations[min(len(calls) - 1, len(durations) - 1)]
        if len(calls) >= len(durations) + 50:
            options["stop"].set()
        return "OperationalError: connection refused"

    monkeypatch.setattr(worker, "_run_once", run_once)
    return calls


def test_a_worker_that_ran_for_hours_restarts_after_its_first_failure(
    monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> None:
    calls = fake_runs(monkeypatch, clock, [4 * 3600.0, 1.0, 1.0, 1.0])
    stop = asyncio.Event()

    async def main() -> int:
        async def stop_soon() -> None:
            while len(calls) < 4:
                await asyncio.sleep(0.001)
            stop.set()

        stopper = asyncio.create_task(stop_soon())
        code = await worker.supervise(offline_settings(), stop=stop, give_up_after_s=300)
        stopper.cancel()
        return code

    assert asyncio.run(main()) == worker.EXIT_OK
    assert len(calls) >= 4  # restarted after the first failure instead of giving up


def test_it_gives_up_after_failing_without_a_break(
    monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> None:
    calls = fake_runs(monkeypatch, clock, [4 * 3600.0, 10.0])
    code = asyncio.run(
        worker.supervise(offline_settings(), stop=asyncio.Event(), give_up_after_s=300)
    )
    assert code == worker.EXIT_GAVE_UP
    assert 30 <= len(calls) <= 33  # ~300 s of 10 s failures after the healthy run


def test_concurrency_sizes_the_settings_the_worker_runs_with(
    monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> None:
    calls = fake_runs(monkeypatch, clock, [1.0])
    stop = asyncio.Event()

    async def main() -> None:
        async def stop_soon() -> None:
            while not calls:
                await asyncio.sleep(0.001)
            stop.set()

        stopper = asyncio.create_task(stop_soon())
        await worker.supervise(offline_settings(), concurrency=7, stop=stop)
        stopper.cancel()

    asyncio.run(main())
    assert calls[0].worker_concurrency == 7
