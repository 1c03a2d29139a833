"""The console's Starlette application: routes, middleware, templates and what handlers share."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import jinja2
import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from collage.db.connect import OPTIONS, Row
from collage.isolation.process import Budget
from collage.settings import Settings
from collage.storage import Bucket
from collage.web import auth, controls, pages, previews
from collage.web.console import Console

logger = logging.getLogger(__name__)
# Pages are read by one operator or a few: a handful of connections, never a pool's worth.
POOL_MAX = 4
# The browser may run nothing but the console's own script, load nothing from elsewhere, and
# show the console in no frame (clickjacking an unlocked session).
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self';"
        " form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
}


def create_app(settings: Settings, *, made: previews.Previews | None = None) -> Starlette:
    """Build the console for these settings; nothing connects until the app starts."""
    pool = ConnectionPool(
        settings.db_url,
        connection_class=psycopg.Connection[Row],
        kwargs={**OPTIONS, "autocommit": True, "row_factory": dict_row},
        min_size=1,
        max_size=POOL_MAX,
        open=False,
        check=ConnectionPool.check_connection,  # a connection the database dropped is replaced
        name="collage-web",
    )
    console = Console(
        settings=settings,
        pool=pool,
        previews=made
        or previews.Previews(
            Bucket.from_settings(settings),
            budget=Budget.of(cpu_s=settings.build_cpu_s, memory_mb=settings.build_memory_mb),
        ),
        templates=Jinja2Templates(env=_environment()),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # wait=False: the console starts, and /healthz says 503, while the database is away.
        pool.open(wait=False)
        try:
            yield
        finally:
            pool.close()
            console.previews.close()

    app = Starlette(
        routes=[
            Route("/", pages.overview),
            Route("/search", pages.search),
            Route("/sku/{product_id:int}", pages.sku),
            Route("/gallery", pages.gallery),
            Route("/healthz", pages.healthz),
            Route("/preview/{product_id:int}/{which:str}", previews.preview),
            Route("/unlock", controls.unlock, methods=["POST"]),
            Route("/lock", controls.lock, methods=["POST"]),
            Route("/actions/requeue", controls.requeue, methods=["POST"]),
            Route("/actions/cancel", controls.cancel, methods=["POST"]),
            Route("/actions/pause", controls.pause, methods=["POST"]),
            Route("/actions/resume", controls.resume, methods=["POST"]),
            Mount("/static", StaticFiles(packages=[("collage.web", "static")]), name="static"),
        ],
        middleware=[
            Middleware(SecurityHeaders),
            # A page of another site's, its name pointed at this address (DNS rebinding),
            # sends its own host name: refused before any handler runs.
            Middleware(AllowedHosts, allowed_hosts=list(settings.console_hosts)),
            Middleware(
                SessionMiddleware,
                secret_key=auth.session_secret(settings.web_token),
                session_cookie=auth.SESSION_COOKIE,
                max_age=auth.SESSION_MAX_AGE_S,
                same_site="strict",
                https_only=settings.web_secure_cookie,
            ),
        ],
        exception_handlers={
            auth.Refused: controls.refused,
            psycopg.OperationalError: pages.unavailable,
            PoolTimeout: pages.unavailable,
            Exception: failed,
        },
        lifespan=lifespan,
    )
    app.state.console = console
    return app


def failed(request: Request, exc: Exception) -> Response:
    """A plain 500, with the security headers, and the traceback in the log only.

    Starlette answers an unhandled error outside every middleware: the headers are added here.
    """
    logger.error(
        "console: unhandled error",
        exc_info=exc,
        extra={"path": request.url.path[:200], "error": type(exc).__name__},
    )
    return PlainTextResponse(
        "internal error; the console's log says more\n",
        status_code=500,
        headers={**SECURITY_HEADERS, "cache-control": "no-store"},
    )


class AllowedHosts(TrustedHostMiddleware):
    """Answer only the configured Host headers, but /healthz for any: a health checker names
    the container by its address, and the check tells a rebinding page nothing."""

    def __init__(self, app: ASGIApp, allowed_hosts: list[str]) -> None:
        super().__init__(app, allowed_hosts=allowed_hosts, www_redirect=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/healthz":
            await self.app(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


class SecurityHeaders:
    """Add SECURITY_HEADERS to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                present = {name.lower() for name, _ in message["headers"]}
                message["headers"] += [
                    (name.encode(), value.encode())
                    for name, value in SECURITY_HEADERS.items()
                    if name.encode() not in present
                ]
            await send(message)

        await self.app(scope, receive, with_headers)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("collage.web", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(age=age, when=when, number=number)
    return env


def age(value: timedelta | None) -> str:
    """Say how long, shortly: 45s, 12m 03s, 3h 20m, 2d 4h."""
    if value is None:
        return "-"
    seconds = int(value.total_seconds())
    if seconds < 60:
        return f"{max(seconds, 0)}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h"


def when(value: datetime | None) -> str:
    """A timestamp in UTC to the second."""
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def number(value: object) -> str:
    """1234567 as 1,234,567; anything else as it is."""
    return f"{value:,}" if isinstance(value, int) else "-" if value is None else str(value)
