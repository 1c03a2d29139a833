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

import hashlib
import io
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import cache
from typing import Any
from xml.sax.saxutils import escape

from PIL import Image, ImageCms
from starlette.requests import Request
from starlette.responses import Response

from collage.db import skus
from collage.errors import CollageError, OriginalMissing, Transient
from collage.imaging import JpegTarget, Limits, decode, open_photo
from collage.isolation.pool import BuildPool
from collage.isolation.process import Budget
from collage.storage.bucket import MAX_OBJECT_BYTES, Bucket
from collage.storage.keys import MAX_PHOTOS, collage_key
from collage.web.console import console_of

PHOTO_BOX = (480, 480)
COLLAGE_BOX = (4800, 320)  # a 20-photo collage stays legible; the gallery scales it down
PREVIEW_QUALITY = 85
# The photo comes back from the build child as a one-photo collage, shrunk here after.
_DECODED = JpegTarget(quality=90)
CACHE_BYTES = 64 * 1024 * 1024
MAX_COLLAGE_BYTES = 2 * MAX_OBJECT_BYTES  # a collage at the canvas limit is far smaller
CACHE_CONTROL = "private, max-age=86400"  # the URL names the row's version: a change is a new URL


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

    def get(self, row: dict[str, Any], which: str) -> Preview:
        """Return the preview of `which` for the SKU in `row`; raise PreviewError if none."""
        key = (int(row["product_id"]), which, version(row))
        with self._lock:
            if (hit := self._cache.get(key)) is not None:
                self._cache.move_to_end(key)
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

    def close(self) -> None:
        """Stop the decoding child, if one was started."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def _photo(self, row: dict[str, Any], index: int) -> bytes:
        photo_url = row["image_urls"][index - 1]
        try:
            key = self.bucket.key_for(photo_url)
            data = self.bucket.get(key, max_bytes=MAX_OBJECT_BYTES)
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
            data = self.bucket.get(key, max_bytes=MAX_COLLAGE_BYTES)
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


def preview(request: Request) -> Response:
    """GET /preview/{product_id}/{collage|photo-N}: a JPEG, or an SVG saying why not."""
    console = console_of(request)
    which = request.path_params["which"]
    with console.db() as conn:
        row = skus.photos_of(conn, request.path_params["product_id"])
    try:
        if row is None:
            raise PreviewError(404, "no such SKU")
        made = console.previews.get(row, which)
    except PreviewError as exc:
        return _placeholder(exc)
    current = request.query_params.get("v") == version(row)
    headers = {"etag": made.etag, "cache-control": CACHE_CONTROL if current else "no-cache"}
    if request.headers.get("if-none-match") == made.etag:
        return Response(status_code=304, headers=headers)
    return Response(made.jpeg, media_type="image/jpeg", headers=headers)


def _index(which: str, row: dict[str, Any]) -> int:
    number = which.removeprefix("photo-")
    urls = row["image_urls"]
    count = min(len(urls), MAX_PHOTOS) if isinstance(urls, list) else 0
    if which.startswith("photo-") and number.isdigit() and 1 <= int(number) <= count:
        return int(number)
    raise PreviewError(404, f"this SKU has no {which[:20]!r}")


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
