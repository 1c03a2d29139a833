"""Previews of a SKU's photos and collage, made on the server: small, cached, safe to make.

Only the keys the SKU's own row names are read: each of its image_urls, mapped and checked as
the worker maps them (nothing outside S3_ORIGINALS_PREFIX), and its collage key, through
Bucket's bounded reads. A photo is decoded as the worker decodes it, in the worker's own
bounded child process (collage.isolation): header checks first, then decoding under a CPU and
memory budget, so a hostile photo costs the console a child process, never the console. The
collage, which the worker wrote, passes the same header checks and is decoded here, at an
eighth of its size where possible (JPEG's DCT scaling). Previews are kept in a bounded cache.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from typing import Any
from xml.sax.saxutils import escape

from PIL import Image, ImageCms
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from collage.db import skus
from collage.errors import CollageError, OriginalMissing, Transient
from collage.imaging import JpegTarget, Limits, decode, open_photo
from collage.isolation.pool import BuildPool
from collage.isolation.process import Budget
from collage.storage.bucket import MAX_OBJECT_BYTES, Bucket
from collage.storage.keys import MAX_PHOTOS, collage_key
from collage.text import shown, whole_number
from collage.web.console import Console, console_of

PHOTO_BOX = (480, 480)
COLLAGE_BOX = (4800, 320)  # a 20-photo collage stays legible; the gallery scales it down
PREVIEW_QUALITY = 85
# The photo comes back from the build child as a one-photo collage, shrunk here after.
_DECODED = JpegTarget(quality=90)
CACHE_BYTES = 64 * 1024 * 1024
MAX_COLLAGE_BYTES = 2 * MAX_OBJECT_BYTES  # a collage at the canvas limit is far smaller
CACHE_CONTROL = "private, max-age=86400"  # the URL names the row's version: a change is a new URL
# Previews made at once, each on a thread of its own (never Starlette's, which pages need).
PREVIEW_SLOTS = 4
# Different previews waiting to be made at most: past that, a request is answered 503 at once.
MAX_PENDING = 32
# How long a request waits for its preview; the making goes on, and its result is cached.
WAIT_S = 10.0
# A photo or collage read for a preview, start to end, however S3 trickles it.
READ_DEADLINE_S = 20.0


@dataclass(frozen=True)
class Preview:
    """A preview JPEG and its entity tag."""

    jpeg: bytes
    etag: str


class PreviewError(Exception):
    """Why no preview can be shown, and the status that says so."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def version(row: dict[str, Any]) -> str:
    """What changes whenever a SKU's photos or collage may have: its generation and last write."""
    return f"{row['upload_generation']}.{int(row['updated_at'].timestamp() * 1000)}"


def url(row: dict[str, Any], which: str) -> str:
    """The preview's URL: 'collage' or 'photo-N' (N from 1) of the SKU in `row`."""
    return f"/preview/{row['product_id']}/{which}?v={version(row)}"


class Previews:
    """Make previews from the bucket and keep the latest in memory, up to `cache_bytes`."""

    def __init__(
        self, bucket: Bucket, *, budget: Budget | None = None, cache_bytes: int = CACHE_BYTES
    ) -> None:
        self.bucket = bucket
        self.budget = budget or Budget.of()
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[tuple[int, str, str], Preview] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()
        self._pool: BuildPool | None = None
        self._closed = False
        self._threads = ThreadPoolExecutor(PREVIEW_SLOTS, thread_name_prefix="preview")
        self._pending: dict[tuple[int, str, str], asyncio.Future[Preview]] = {}

    async def fetch(self, row: dict[str, Any], which: str) -> Preview:
        """Make or find the preview, on the previews' own threads, waiting WAIT_S at most.

        Identical requests share one making: forty browsers asking for one photo read it once.
        """
        key = _cache_key(row, which)
        if (hit := self._cached(key)) is not None:
            return hit
        making = self._pending.get(key)
        if making is None:
            if len(self._pending) >= MAX_PENDING:
                raise PreviewError(503, "too many previews are being made; try again shortly")
            loop = asyncio.get_running_loop()
            making = loop.run_in_executor(self._threads, self.get, row, which)
            self._pending[key] = making
            making.add_done_callback(lambda done: self._made(key, done))
        try:
            return await asyncio.wait_for(asyncio.shield(making), WAIT_S)
        except TimeoutError:
            raise PreviewError(503, "the preview is taking long; try again shortly") from None

    def _made(self, key: tuple[int, str, str], done: asyncio.Future[Preview]) -> None:
        self._pending.pop(key, None)
        if not done.cancelled():
            done.exception()  # read, so nobody is told it never was

    def get(self, row: dict[str, Any], which: str) -> Preview:
        """Return the preview of `which` for the SKU in `row`; raise PreviewError if none."""
        key = _cache_key(row, which)
        if (hit := self._cached(key)) is not None:
            return hit
        jpeg = self._collage(row) if which == "collage" else self._photo(row, _index(which, row))
        made = Preview(jpeg, '"' + hashlib.sha256(jpeg).hexdigest()[:32] + '"')
        with self._lock:
            if key not in self._cache and len(jpeg) <= self.cache_bytes:
                self._cache[key] = made
                self._held += len(jpeg)
                while self._held > self.cache_bytes:
                    _, dropped = self._cache.popitem(last=False)
                    self._held -= len(dropped.jpeg)
        return made

    def _cached(self, key: tuple[int, str, str]) -> Preview | None:
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
            return hit

    def close(self) -> None:
        """Stop the decoding child, if one was started."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        self._threads.shutdown(wait=False, cancel_futures=True)
        if pool is not None:
            pool.close()

    def _photo(self, row: dict[str, Any], index: int) -> bytes:
        photo_url = row["image_urls"][index - 1]
        try:
            key = self.bucket.key_for(photo_url)
            data = self.bucket.get(key, max_bytes=MAX_OBJECT_BYTES, deadline_s=READ_DEADLINE_S)
            # The worker's own path: a one-photo "collage" at the photo's size, built in a
            # bounded child; what comes back is a plain sRGB JPEG, upright.
            upright = self._decoder().build([data], target=_DECODED, names=[key]).jpeg
        except CollageError as exc:
            # The child saw one photo: name it by its place in the SKU, as the worker does.
            raise _refusal(exc, photo=index) from None
        with Image.open(io.BytesIO(upright), formats=["JPEG"]) as image:
            return _shrink(image, PHOTO_BOX)

    def _collage(self, row: dict[str, Any]) -> bytes:
        try:
            key = collage_key(row["brand"], row["external_id"])
            data = self.bucket.get(key, max_bytes=MAX_COLLAGE_BYTES, deadline_s=READ_DEADLINE_S)
            limits = Limits(max_photo_pixels=Limits().max_canvas_pixels)
            photo = open_photo(data, f"the collage ({key})", limits)
            width, height = photo.image.size
            target = _fit(
                (width, height), COLLAGE_BOX if photo.orientation < 5 else COLLAGE_BOX[::-1]
            )
            photo.image.draft("RGB", target)  # JPEG decodes at 1/2, 1/4 or 1/8 of its size
            image = decode(photo, _srgb())
        except CollageError as exc:
            raise _refusal(exc) from None
        with image:
            return _shrink(image, COLLAGE_BOX)

    def _decoder(self) -> BuildPool:
        with self._lock:
            if self._closed:
                raise Transient("the console is shutting down")
            if self._pool is None:
                # One child: previews wait their turn rather than take the machine's memory.
                self._pool = BuildPool(budget=self.budget, processes=1)
            return self._pool


async def preview(request: Request) -> Response:
    """GET /preview/{product_id}/{collage|photo-N}: a JPEG, or an SVG saying why not.

    Async, so that slow previews hold none of the threads pages and /healthz run on.
    """
    console = console_of(request)
    which = request.path_params["which"]
    row = await run_in_threadpool(_photos_of, console, request.path_params["product_id"])
    try:
        if row is None:
            raise PreviewError(404, "no such SKU")
        _check_name(which, row)
        made = await console.previews.fetch(row, which)
    except PreviewError as exc:
        return _placeholder(exc)
    current = request.query_params.get("v") == version(row)
    headers = {"etag": made.etag, "cache-control": CACHE_CONTROL if current else "no-cache"}
    if request.headers.get("if-none-match") == made.etag:
        return Response(status_code=304, headers=headers)
    return Response(made.jpeg, media_type="image/jpeg", headers=headers)


def _cache_key(row: dict[str, Any], which: str) -> tuple[int, str, str]:
    return int(row["product_id"]), which, version(row)


def _photos_of(console: Console, product_id: int) -> dict[str, Any] | None:
    with console.db() as conn:
        return skus.photos_of(conn, product_id)


def _check_name(which: str, row: dict[str, Any]) -> None:
    """Only the canonical names: 'collage', 'photo-1'...; never 'photo-01' (a cache entry each)."""
    if which != "collage":
        _index(which, row)


def _index(which: str, row: dict[str, Any]) -> int:
    urls = row["image_urls"]
    count = min(len(urls), MAX_PHOTOS) if isinstance(urls, list) else 0
    number = whole_number(which.removeprefix("photo-"), max_digits=2)
    if which.startswith("photo-") and number and which == f"photo-{number}" and number <= count:
        return number
    raise PreviewError(404, f"this SKU has no '{shown(which[:20])}'")


def _refusal(exc: CollageError, *, photo: int = 1) -> PreviewError:
    message = exc.message
    if photo != 1 and message.startswith("photo 1 ("):
        message = f"photo {photo} (" + message.removeprefix("photo 1 (")
    if isinstance(exc, OriginalMissing):
        return PreviewError(404, message)
    if isinstance(exc, Transient):
        return PreviewError(503, message)
    return PreviewError(422, message)


def _fit(size: tuple[int, int], box: tuple[int, int]) -> tuple[int, int]:
    scale = min(box[0] / size[0], box[1] / size[1], 1.0)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _shrink(image: Image.Image, box: tuple[int, int]) -> bytes:
    if image.mode != "RGB":
        image = image.convert("RGB")
    image.thumbnail(box, Image.Resampling.LANCZOS, reducing_gap=3.0)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=PREVIEW_QUALITY)
    return out.getvalue()


@cache
def _srgb() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def _placeholder(error: PreviewError) -> Response:
    """A small image saying why there is no preview, so the page shows the reason in place."""
    lines = [""]
    for word in error.message.split():  # SVG text does not wrap: 5 lines of 44 characters
        if lines[-1] and len(lines[-1]) + len(word) >= 44:
            lines.append("")
        lines[-1] = f"{lines[-1]} {word}".strip()
    if len(lines) > 5:
        lines = [*lines[:4], lines[4][:40] + " ..."]
    text = "".join(
        f'<text x="8" y="{42 + 16 * n}" font-size="12" fill="#333">{escape(line)}</text>'
        for n, line in enumerate(lines)
    )
    svg = (
        '<svg xmlns="http://www.w3.org/2000/svg" width="300" height="130" viewBox="0 0 300 130"'
        ' font-family="sans-serif"><rect width="300" height="130" fill="#fbeaea" stroke="#c33"/>'
        f'<text x="8" y="20" font-size="13" fill="#c33">no preview ({error.status})</text>'
        f"{text}</svg>"
    )
    headers = {"cache-control": "no-store"}
    return Response(svg, status_code=error.status, media_type="image/svg+xml", headers=headers)
