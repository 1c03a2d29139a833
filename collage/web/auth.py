"""Who may act in the console: WEB_TOKEN unlocks a session, a CSRF token guards every form.

The session is a cookie signed with a key derived from WEB_TOKEN (changing the token ends
every session), `SameSite=Strict` and HttpOnly, valid 12 hours. It holds a random CSRF token,
which every form sends back and every POST must match, and, once the operator has given the
token, the name they gave. Without WEB_TOKEN nothing can be unlocked: the console is read-only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import re
import secrets
import time
import weakref
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, cast

from starlette.datastructures import FormData
from starlette.requests import Request

from collage.text import whole_number

if TYPE_CHECKING:
    from collage.web.console import Console

SESSION_COOKIE = "collage_console"
SESSION_MAX_AGE_S = 12 * 3600
# A form of the console is a few short fields; anything larger is not one of ours.
MAX_FORM_BYTES = 64 * 1024
_NAME = re.compile(r"[\w.@+-][\w .@+-]{0,39}")


class Refused(Exception):
    """A request the console will not carry out, with the status and reason it answers."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def session_secret(token: str | None) -> str:
    """The key sessions are signed with: derived from WEB_TOKEN, random when there is none."""
    if token is None:
        return secrets.token_hex(32)  # nothing is ever unlocked: sessions need not outlive us
    return hmac.new(token.encode(), b"collage web console session", hashlib.sha256).hexdigest()


def csrf_token(request: Request) -> str:
    """The session's CSRF token, made on its first page."""
    token = request.session.get("csrf")
    if not isinstance(token, str):
        token = request.session["csrf"] = secrets.token_urlsafe(32)
    return token


class Unlocks:
    """The sessions unlocked now, by a random id each holds: Lock ends a session's unlock for
    every copy of its cookie, which a signed cookie alone cannot do.

    Kept in memory: a restarted console forgets every unlock (operators unlock again).
    """

    def __init__(self) -> None:
        self._until: dict[str, float] = {}

    def start(self, request: Request, name: str) -> None:
        """Unlock this session under `name`."""
        self._prune()
        sid = secrets.token_urlsafe(24)
        self._until[sid] = time.monotonic() + SESSION_MAX_AGE_S
        request.session["sid"] = sid
        request.session["who"] = name

    def end(self, request: Request) -> None:
        """Lock this session, and every copy of its cookie."""
        self._until.pop(str(request.session.pop("sid", "")), None)
        request.session.pop("who", None)

    def holds(self, request: Request) -> bool:
        """Whether this session's unlock is still in force."""
        until = self._until.get(str(request.session.get("sid", "")))
        return until is not None and until > time.monotonic()

    def _prune(self) -> None:
        now = time.monotonic()
        for sid in [sid for sid, until in self._until.items() if until <= now]:
            del self._until[sid]


class Guesses:
    """Token guesses from one client take turns, each with its delay: parallel requests
    cannot try forty tokens in the time of one."""

    def __init__(self) -> None:
        self._turns: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    @contextlib.asynccontextmanager
    async def turn(self, request: Request) -> AsyncIterator[None]:
        """Wait for this client's previous guess to be answered."""
        client = request.client.host if request.client else "?"
        lock = self._turns.get(client)
        if lock is None:
            lock = self._turns[client] = asyncio.Lock()
        async with lock:
            yield


def who(request: Request) -> str | None:
    """The name the operator unlocked this session with, or None while it is locked."""
    name = request.session.get("who")
    if not isinstance(name, str) or not _console(request).unlocks.holds(request):
        return None
    return name


def valid_name(text: str) -> str | None:
    """Return the operator's name if it is a short plain one (it goes into every log line)."""
    text = text.strip()
    return text if _NAME.fullmatch(text) else None


def token_matches(request: Request, given: object) -> bool:
    """Compare a token given in a form with WEB_TOKEN, in constant time."""
    expected = _console(request).settings.web_token
    return (
        expected is not None
        and isinstance(given, str)
        and hmac.compare_digest(given.encode(), expected.encode())
    )


async def checked_form(request: Request, *, unlocked: bool = True) -> FormData:
    """Read a POSTed form after checking it may act: actions on, same site, CSRF, unlocked."""
    if not _console(request).actions_enabled:
        raise Refused(403, "actions are disabled: WEB_TOKEN is not set")
    # Browsers say where a request comes from; a cross-site one is never an operator's click.
    if request.headers.get("sec-fetch-site", "same-origin") not in {"same-origin", "none"}:
        raise Refused(403, "a request from another site is refused")
    length = whole_number(request.headers.get("content-length", ""))
    if length is None or length > MAX_FORM_BYTES:
        raise Refused(413, f"a form must say its length and be under {MAX_FORM_BYTES:,} bytes")
    form = await request.form(max_files=0, max_fields=20)
    sent, expected = form.get("csrf"), request.session.get("csrf")
    if not (
        isinstance(sent, str)
        and isinstance(expected, str)
        and hmac.compare_digest(sent.encode(), expected.encode())
    ):
        raise Refused(403, "missing or wrong CSRF token: reload the page and try again")
    if unlocked and who(request) is None:
        raise Refused(403, "actions are locked: unlock them with the token first")
    return form


def new_csrf_token(request: Request) -> None:
    """Give the session a fresh CSRF token (as it is unlocked or locked)."""
    request.session["csrf"] = secrets.token_urlsafe(32)


def _console(request: Request) -> Console:
    # console.py renders with this module's helpers: imported for its type only.
    return cast("Console", request.app.state.console)
