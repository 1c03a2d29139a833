"""Retry with exponential backoff: one policy for database steps, LISTEN and worker restarts."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_before_delay,
    stop_never,
    wait_exponential,
)

T = TypeVar("T")
OnRetry = Callable[[BaseException, float], None]


@dataclass(frozen=True, kw_only=True)
class Backoff:
    """Wait `first_s`, then twice as long each time up to `max_s`; give up after `for_s`."""

    first_s: float
    max_s: float
    for_s: float | None = None  # None: never give up

    def delay_s(self, retry: int) -> float:
        """The wait before retry number `retry` (0 for the first)."""
        return float(min(self.first_s * 2**retry, self.max_s))

    async def call(
        self,
        step: Callable[[], Awaitable[T]],
        *,
        on: type[BaseException] | tuple[type[BaseException], ...],
        on_retry: OnRetry,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> T:
        """Run `step` until it succeeds; past `for_s`, raise its last failure as it was."""

        def before_sleep(state: RetryCallState) -> None:
            failure = state.outcome.exception() if state.outcome else None
            assert failure is not None  # only failures are retried
            on_retry(failure, state.upcoming_sleep)

        async def attempt() -> T:
            # A coroutine function for tenacity: it would call a lambda returning a coroutine as
            # a plain function, and never await what it returned.
            return await step()

        retrying = AsyncRetrying(
            retry=retry_if_exception_type(on),
            wait=wait_exponential(multiplier=self.first_s, max=self.max_s),
            stop=stop_never if self.for_s is None else stop_before_delay(self.for_s),
            before_sleep=before_sleep,
            sleep=sleep,
            reraise=True,
        )
        return await retrying(attempt)
