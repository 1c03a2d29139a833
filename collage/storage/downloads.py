"""A SKU's originals, downloaded all or none, a few at a time, within one byte budget.

The first download that fails ends the others (TaskGroup semantics), and the threads still
reading stop at their next chunk: a broken SKU does not keep megabytes in flight while the
worker moves on to the next job.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from concurrent.futures import Executor

from collage.storage.bucket import Bucket
from collage.storage.budget import Abandoned, ByteBudget

CONCURRENCY = 4
# The compressed originals of one SKU held in memory at once, whatever the rows claim.
MAX_SKU_BYTES = 400 * 1024 * 1024
# All of a SKU's photos, start to end, unless told (S3_DOWNLOAD_DEADLINE_S).
DOWNLOAD_DEADLINE_S = 120.0


async def download_all(
    bucket: Bucket,
    keys: Sequence[str],
    *,
    executor: Executor,
    max_bytes: int | None = None,
    deadline_s: float = DOWNLOAD_DEADLINE_S,
) -> list[bytes]:
    """Download every photo on `executor`'s threads, within `max_bytes` and `deadline_s`.

    Raise the first failure; past the deadline, a Transient one.
    """
    budget = ByteBudget(max_bytes or MAX_SKU_BYTES, deadline_s=deadline_s)
    limit = asyncio.Semaphore(CONCURRENCY)
    loop = asyncio.get_running_loop()

    async def download(key: str) -> bytes:
        async with limit:
            get = functools.partial(bucket.get, key, budget=budget)
            return await loop.run_in_executor(executor, get)

    try:
        async with asyncio.TaskGroup() as group:
            downloads = [group.create_task(download(key)) for key in keys]
    except BaseExceptionGroup as failed:
        raise _first(failed) from None
    finally:
        budget.close()  # a thread still reading (its task cancelled) stops now
    return [task.result() for task in downloads]


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The failure that ended the group, not a download that it stopped.

    The group lists failures in the order their tasks ended: a thread stopped by the budget
    (Abandoned) can end before the thread that went over it and raised TooLarge.
    """
    _, causes = group.split(Abandoned)
    error: BaseException = causes or group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error
