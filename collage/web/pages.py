"""The console's pages: the overview, a SKU, search, the gallery, and /healthz.

Plain functions but the overview: Starlette runs them in its thread pool, where the
synchronous queries of collage.db belong. Each page makes a few bounded queries
(bin/bench-pipeline --console times them).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any

import psycopg
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from collage import db
from collage.db import controls, failures, jobs, skus
from collage.errors import CollageError
from collage.storage.keys import MAX_PHOTOS
from collage.text import unsafe, whole_number
from collage.web import chart, previews
from collage.web.auth import Refused
from collage.web.console import console_of

logger = logging.getLogger(__name__)
GALLERY_STRIP = 12  # latest collages on the overview
GALLERY_PAGE = 48
QUERY_S = 5.0  # the summary's statement timeout, as the failure groups bound their own
HEALTH_WAIT_S = 2.0  # a health check answers quickly, whatever the database does


async def overview(request: Request) -> Response:
    """The page an operator leaves open: the queue, its last day, its errors, its latest work.

    Its queries run at once, each on a connection of its own: the page takes as long as the
    slowest (the queue summary), not as long as all of them.
    """
    console = console_of(request)

    def read(*queries: Callable[[Any], Any]) -> list[Any]:
        with console.db() as conn:
            return [query(conn) for query in queries]

    (summary,), (groups,), (hours, collages, paused) = await asyncio.gather(
        run_in_threadpool(read, functools.partial(jobs.summary, timeout_s=QUERY_S)),
        run_in_threadpool(read, failures.error_groups),
        run_in_threadpool(
            read,
            failures.throughput,
            functools.partial(skus.latest_collages, limit=GALLERY_STRIP),
            controls.pauses,
        ),
    )
    return console.render(
        request,
        "overview.html",
        {
            "summary": summary,
            "chart": chart.throughput(hours),
            "groups": groups,
            "pauses": paused,
            "collages": [_with_preview(row) for row in collages],
        },
    )


def search(request: Request) -> Response:
    """Find SKUs by id, BRAND/EXTERNAL_ID or external_id; one match opens its page."""
    console = console_of(request)
    text = request.query_params.get("q", "").strip()[:200]
    if unsafe(text):
        raise Refused(400, "a search cannot hold control characters")
    rows = []
    if text:
        with console.db() as conn:
            rows = skus.search_products(conn, text)
    if len(rows) == 1:
        return RedirectResponse(f"/sku/{rows[0]['product_id']}", status_code=303)
    return console.render(request, "search.html", {"q": text, "rows": rows})


def sku(request: Request) -> Response:
    """One SKU: its photos and collage as previews, its row, its jobs and its outcomes."""
    console = console_of(request)
    product_id = request.path_params["product_id"]
    with console.db() as conn:
        row = skus.product(conn, product_id)
        if row is None:
            return console.render(
                request, "search.html", {"q": str(product_id), "rows": []}, status=404
            )
        history = jobs.history(conn, product_id)
        outcomes = skus.outcomes_of(conn, product_id)
    return console.render(
        request,
        "sku.html",
        {
            "sku": row,
            "photos": _photos(console, row),
            "collage": _with_preview(row) if row["image_status"] == "collage_ready" else None,
            "jobs": history,
            "outcomes": outcomes,
        },
    )


def gallery(request: Request) -> Response:
    """The latest collages, large enough to check panels are upright, in order, colour-true."""
    console = console_of(request)
    before = request.query_params.get("before", "")
    older_than = whole_number(before) if before else None
    if before and older_than is None:
        raise Refused(400, "before must be a whole number (the link under the gallery)")
    with console.db() as conn:
        rows = skus.latest_collages(conn, limit=GALLERY_PAGE, before=older_than)
    return console.render(
        request,
        "gallery.html",
        {
            "collages": [_with_preview(row) for row in rows],
            "older": rows[-1]["outcome_id"] if len(rows) == GALLERY_PAGE else None,
        },
    )


def healthz(request: Request) -> Response:
    """200 when the database answers, 503 when it does not."""
    console = console_of(request)
    try:
        with console.db(wait_s=HEALTH_WAIT_S) as conn:
            db.ping(conn)
    except (psycopg.Error, TimeoutError) as exc:  # the pool says PoolTimeout, a TimeoutError
        logger.warning("console health check failed", extra={"error": type(exc).__name__})
        return PlainTextResponse("database unavailable\n", status_code=503)
    return PlainTextResponse("ok\n", headers={"cache-control": "no-store"})


def unavailable(request: Request, exc: Exception) -> Response:
    """Answer 503, with a page saying so, while the database cannot be reached."""
    logger.warning("console: database unavailable", extra={"error": type(exc).__name__})
    console = console_of(request)
    reason = "the database does not answer; this page will work again once it does"
    return console.render(request, "refused.html", {"status": 503, "reason": reason}, status=503)


def _with_preview(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "preview": previews.url(row, "collage")}


def _photos(console: Any, row: dict[str, Any]) -> list[dict[str, Any]]:
    """Each photo URL of the row, with its key and preview, or why it is never fetched."""
    urls = row["image_urls"] if isinstance(row["image_urls"], list) else []
    photos = []
    for index, url in enumerate(urls[:MAX_PHOTOS], start=1):
        try:
            key, refused = console.previews.bucket.key_for(url), None
        except CollageError as exc:
            key, refused = None, exc.message
        photos.append(
            {
                "index": index,
                "url": url,
                "key": key,
                "refused": refused,
                "preview": previews.url(row, f"photo-{index}") if key else None,
            }
        )
    return photos
