"""What the console's tests share: its token, a session unlocked with it, forms' CSRF tokens."""

from __future__ import annotations

import re

from starlette.testclient import TestClient

TOKEN = "console-test-token-0123456789"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    """The CSRF token a page's forms carry."""
    found = _CSRF.search(html)
    assert found, "the page has no form with a CSRF token"
    return found[1]


def unlock(client: TestClient, who: str = "ana") -> str:
    """Unlock the client's session with the token; return the session's new CSRF token."""
    token = csrf_of(client.get("/").text)
    response = client.post("/unlock", data={"csrf": token, "token": TOKEN, "who": who, "next": "/"})
    assert response.status_code == 303, response.text
    return csrf_of(client.get("/").text)
