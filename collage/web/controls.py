"""What an unlocked console may do: requeue, cancel, pause and resume.

Every action is a POST from one of the console's forms (auth.checked_form), is carried out by
collage.controls (what the CLI's commands call), is logged as one JSON line (who, what, how
many, from where) and sends the browser back to its page, with one line saying what happened.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from collage.db import controls, failures
from collage.text import whole_number
from collage.web import auth
from collage.web.console import console_of

logger = logging.getLogger(__name__)
MAX_IDS = 1000  # SKUs named one by one in one form
WRONG_TOKEN_DELAY_S = 0.5


async def unlock(request: Request) -> Response:
    """Unlock this session's actions with WEB_TOKEN, under the name the operator gives."""
    form = await auth.checked_form(request, unlocked=False)
    name = auth.valid_name(str(form.get("who") or ""))
    console = console_of(request)
    async with console.guesses.turn(request):  # one client's guesses take turns
        if not auth.token_matches(request, form.get("token")):
            await asyncio.sleep(WRONG_TOKEN_DELAY_S)  # guessing takes time, and shows in the log
            raise auth.Refused(403, "wrong token")  # logged by refused()
    if name is None:
        raise auth.Refused(400, "give your name: 1-40 letters, digits, spaces or . @ + - _")
    console.unlocks.start(request, name)
    auth.new_csrf_token(request)  # the token an attacker may have seen before no longer works
    _log(request, "unlock", who=name)
    return _back(request, form, f"actions unlocked for {name}")


async def lock(request: Request) -> Response:
    """Lock this session's actions again."""
    form = await auth.checked_form(request, unlocked=False)
    _log(request, "lock", who=auth.who(request))
    console_of(request).unlocks.end(request)  # every copy of this session's cookie too
    auth.new_csrf_token(request)
    return _back(request, form, "actions locked")


# What each action on a selection does to an error group: its SKUs in this state, and the news.
_ON_GROUPS = {
    "requeue": ("error", "requeued {done} of {selected} SKU(s) selected"),
    "cancel": ("retrying", "cancelled the builds of {done} of {selected} SKU(s) selected"),
}


async def requeue(request: Request) -> Response:
    """Put SKUs back in the queue: those named (errored or cancelled), or an error group's."""
    form = await auth.checked_form(request)
    status = "cancelled" if form.get("status") == "cancelled" else "error"
    return await _on_selection(
        request, form, "requeue", lambda conn, ids: controls.requeue(conn, ids, status=status)
    )


async def cancel(request: Request) -> Response:
    """Cancel waiting builds: those of the SKUs named, or of an error group's retries."""
    form = await auth.checked_form(request)
    by = _by(request)
    return await _on_selection(
        request, form, "cancel", lambda conn, ids: controls.cancel(conn, ids, by=by)
    )


async def _on_selection(
    request: Request, form: Any, action: str, apply: Callable[[Any, list[int]], Iterable[int]]
) -> Response:
    """Apply an action to the SKUs a form names, or to an error group's SKUs."""
    state, done = _ON_GROUPS[action]
    ids, scope = _selection(form)
    console = console_of(request)

    def run() -> tuple[int, int]:
        with console.db() as conn:
            chosen = ids or failures.failed_of_class(conn, scope["error_class"], state=state)
            return len(chosen), sum(apply(conn, list(chosen)))

    selected, count = await run_in_threadpool(run)
    _log(request, action, who=auth.who(request), selected=selected, count=count, **scope)
    return _back(request, form, done.format(done=count, selected=selected))


async def pause(request: Request) -> Response:
    """Pause building one brand, exactly as rows spell it, or every brand when asked."""
    form = await auth.checked_form(request)
    brand = str(form.get("brand") or "")[:100] or None
    every = form.get("all") == "1"
    try:
        scope = controls.pause_scope(brand, every=every)
    except controls.BadScope as exc:
        raise auth.Refused(400, str(exc)) from None
    reason = str(form.get("reason") or "").strip()[:200] or None
    console = console_of(request)
    by = _by(request)

    def run() -> int:
        with console.db() as conn:
            return controls.pause(conn, scope, by=by, reason=reason)

    held = await run_in_threadpool(run)
    _log(request, "pause", who=auth.who(request), scope=scope, reason=reason, count=held)
    return _back(
        request, form, f"paused {controls.scope_name(scope)}: {held} waiting build(s) held back"
    )


async def resume(request: Request) -> Response:
    """End one pause, named by its exact scope (a brand, or '*' for every brand)."""
    form = await auth.checked_form(request)
    scope = form.get("scope")
    if not isinstance(scope, str) or not scope:
        raise auth.Refused(400, "name the pause to end: a brand, or * for every brand")
    console = console_of(request)

    def run() -> int | None:
        with console.db() as conn:
            return controls.resume(conn, scope)

    due = await run_in_threadpool(run)
    if due is None:
        raise auth.Refused(404, f"no pause of {controls.scope_name(scope)}")
    _log(request, "resume", who=auth.who(request), scope=scope, count=due)
    return _back(request, form, f"resumed {controls.scope_name(scope)}: {due} build(s) due again")


def _selection(form: Any) -> tuple[list[int], dict[str, Any]]:
    """The SKUs a form names: product_id fields, or one error_class."""
    raw = form.getlist("product_id")
    if raw:
        numbers = [whole_number(v) if isinstance(v, str) else None for v in raw]
        if len(raw) > MAX_IDS or None in numbers:
            raise auth.Refused(400, f"product_id must be up to {MAX_IDS} whole numbers")
        ids = sorted({n for n in numbers if n is not None})
        return ids, {"product_ids": ids[:20]}
    error_class = form.get("error_class")
    if isinstance(error_class, str) and 0 < len(error_class) <= 100:
        return [], {"error_class": error_class}
    raise auth.Refused(400, "name the SKUs: product_id or error_class")


def _by(request: Request) -> str:
    """Who acts, as the record names them (the cancelled SKUs' message, the pause's row)."""
    return f"{auth.who(request)} (web console)"


def _back(request: Request, form: Any, message: str) -> Response:
    """Send the browser back where the form was, with one line of news."""
    target = str(form.get("next") or "/")
    # Only a path on this site: never //host or a scheme (an open redirect).
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        target = "/"
    request.session["flash"] = message
    return RedirectResponse(target, status_code=303)


def _log(request: Request, action: str, **fields: Any) -> None:
    client = request.client.host if request.client else None
    level: Callable[..., None] = logger.warning if "refused" in fields else logger.info
    level("console action", extra={"action": action, "client": client, **fields})


async def refused(request: Request, exc: Exception) -> Response:
    """Answer a refused request with its reason, as a page, and log it."""
    assert isinstance(exc, auth.Refused)
    _log(request, request.url.path.rsplit("/", 1)[-1], refused=exc.reason, who=auth.who(request))
    console = console_of(request)
    return console.render(
        request, "refused.html", {"status": exc.status, "reason": exc.reason}, status=exc.status
    )
