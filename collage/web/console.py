"""What every handler of the console shares, and how a handler finds it from its request."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import psycopg
from psycopg_pool import ConnectionPool
from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from collage.settings import Settings
from collage.web import auth

if TYPE_CHECKING:
    from collage.web.previews import Previews

POOL_WAIT_S = 5.0
NO_STORE = {"cache-control": "no-store"}


@dataclass
class Console:
    """What every handler uses: the settings, the database pool, the previews, the templates."""

    settings: Settings
    pool: ConnectionPool[psycopg.Connection[dict[str, Any]]]
    previews: Previews
    templates: Jinja2Templates
    unlocks: auth.Unlocks = field(default_factory=auth.Unlocks)
    guesses: auth.Guesses = field(default_factory=auth.Guesses)

    @contextlib.contextmanager
    def db(self, *, wait_s: float = POOL_WAIT_S) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        """Lend a pooled autocommit connection whose rows are dicts."""
        with self.pool.connection(timeout=wait_s) as conn:
            yield conn

    @property
    def actions_enabled(self) -> bool:
        return self.settings.web_token is not None

    def render(
        self, request: Request, name: str, context: dict[str, Any], *, status: int = 200
    ) -> Response:
        """Render a page with what every page shows: the session, its CSRF token, a message."""
        base = {
            "actions_enabled": self.actions_enabled,
            "who": auth.who(request),
            "csrf": auth.csrf_token(request),
            "flash": request.session.pop("flash", None),
            "path": request.url.path + (f"?{request.url.query}" if request.url.query else ""),
        }
        # Pages hold the session's CSRF token and the queue as it was: never kept by a cache.
        return self.templates.TemplateResponse(
            request, name, {**base, **context}, status_code=status, headers=NO_STORE
        )


def console_of(request: Request) -> Console:
    """The Console the app was built with."""
    return cast(Console, request.app.state.console)
