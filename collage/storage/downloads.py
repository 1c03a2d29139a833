"""A SKU's originals: which keys its row may name, and downloading them all or none.

The first download that fails ends the others (TaskGroup semantics), and the threads still
reading stop at their next chunk: a broken SKU does not keep megabytes in flight while the
worker moves on to the next job.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from collage import metrics
from collage.errors import BadImageUrls, NoPhotos
from collage.runtime import Runtime
from collage.storage import Abandoned, Bucket, ByteBudget

MAX_PHOTOS = 40  # 40 photos at the narrowest plausible width already pass JPEG's width limit
CONCURRENCY = 4
# The compressed originals of one SKU held in memory at once, whatever the rows claim.
MAX_SKU_BYTES = 400 * 1024 * 1024
_JSON_TYPES = {dict: "object", str: "string", int: "number", float: "number", bool: "boolean"}


def photo_keys(bucket: Bucket, image_urls: object) -> list[str]:
    """Check image_urls and map every URL to a key in our bucket, before anything is fetched."""
    if image_urls is None or image_urls == []:
        raise NoPhotos("image_urls is empty")
    if not isinstance(image_urls, list):
        kind = _JSON_TYPES.get(type(image_urls), type(image_urls).__name__)
        raise BadImageUrls(f"image_urls is a JSON {kind}, not a list")
    if len(image_urls) > MAX_PHOTOS:
        raise BadImageUrls(f"image_urls has {len(image_urls)} photos; at most {MAX_PHOTOS} fit")
    return [bucket.key_for(url) for url in image_urls]


async def download_all(
    runtime: Runtime, keys: Sequence[str], *, max_bytes: int | None = None
) -> list[bytes]:
    """Download every photo, a few at a time, within one byte budget; raise the first failure."""
    budget = ByteBudget(max_bytes or MAX_SKU_BYTES)
    limit = asyncio.Semaphore(CONCURRENCY)

    async def download(key: str) -> bytes:
        async with limit:
            data = await runtime.run(runtime.bucket.get, key, budget=budget)
        metrics.BYTES_DOWNLOADED.inc(len(data))
        return data

    try:
        async with asyncio.TaskGroup() as group:
            downloads = [group.create_task(download(key)) for key in keys]
    except BaseExceptionGroup as failed:
        raise _first(failed) from None
    finally:
        budget.stop()  # a thread still reading (its task cancelled) stops at its next chunk
    return [task.result() for task in downloads]


def _first(group: BaseExceptionGroup) -> BaseException:
    """The failure that ended the group, not a download that it stopped.

    The group lists failures in the order their tasks ended: a thread stopped by the budget
    (Abandoned) can end before the thread that went over it and raised TooLarge.
    """
    _, causes = group.split(Abandoned)
    error: BaseException = causes or group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error
