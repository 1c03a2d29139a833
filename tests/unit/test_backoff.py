"""The one retry policy: how long it waits, what it retries, when it gives up."""

from __future__ import annotations

import asyncio

import pytest

from collage.backoff import Backoff


def test_the_waits_double_from_the_first_and_are_capped() -> None:
    backoff = Backoff(first_s=15.0, max_s=240.0)
    delays = [backoff.delay_s(n) for n in range(8)]
    assert delays == [15.0, 30.0, 60.0, 120.0, 240.0, 240.0, 240.0, 240.0]


def test_a_step_is_retried_with_those_waits_until_it_succeeds() -> None:
    calls: list[int] = []
    waits: list[float] = []
    told: list[tuple[str, float]] = []

    async def step() -> str:
        calls.append(1)
        if len(calls) < 4:
            raise ConnectionError(f"try {len(calls)}")
        return "done"

    async def sleep(delay: float) -> None:
        waits.append(delay)

    backoff = Backoff(first_s=0.5, max_s=1.5)
    got = asyncio.run(
        backoff.call(
            step,
            on=ConnectionError,
            on_retry=lambda exc, delay: told.append((str(exc), delay)),
            sleep=sleep,
        )
    )
    assert got == "done" and len(calls) == 4
    assert waits == [0.5, 1.0, 1.5]
    assert told == [("try 1", 0.5), ("try 2", 1.0), ("try 3", 1.5)]


def test_a_step_may_be_a_lambda_returning_a_coroutine() -> None:
    async def read(value: int) -> int:
        return value * 2

    backoff = Backoff(first_s=0.01, max_s=0.01)
    got = asyncio.run(backoff.call(lambda: read(21), on=OSError, on_retry=print))
    assert got == 42


def test_other_errors_are_not_retried() -> None:
    calls: list[int] = []

    async def step() -> None:
        calls.append(1)
        raise KeyError("not a connection problem")

    with pytest.raises(KeyError):
        asyncio.run(Backoff(first_s=0.01, max_s=0.01).call(step, on=OSError, on_retry=print))
    assert calls == [1]


def test_past_its_time_the_last_failure_is_raised_as_it_was() -> None:
    async def step() -> None:
        raise TimeoutError("still down")

    backoff = Backoff(first_s=0.01, max_s=0.02, for_s=0.1)
    with pytest.raises(TimeoutError, match="still down"):
        asyncio.run(backoff.call(step, on=TimeoutError, on_retry=lambda exc, delay: None))
