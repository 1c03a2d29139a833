"""A real browser and a real server for the console: Debian's chromium driven by Playwright, and
uvicorn serving the app in a thread on a free port. Used by tests/browser and bin/demo.

Playwright cannot download its own browser here: it drives the chromium that bin/setup-browser
installs with apt.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
from collections.abc import Iterator
from typing import Any

import uvicorn

from dev import sandbox

CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",  # root in a container has no user namespace for chromium's sandbox
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def chromium_path() -> str | None:
    """Find Debian's chromium, or None when it is not installed."""
    found = next((p for p in CHROMIUM_PATHS if shutil.which(p)), None)
    return found or shutil.which("chromium")


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """Start headless chromium through Playwright; yield the Browser, close it afterwards."""
    from playwright.sync_api import sync_playwright  # only the browser tests and the demo

    path = chromium_path()
    if path is None:
        raise FileNotFoundError("chromium is not installed: run bin/setup-browser")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, args=list(CHROMIUM_ARGS))
        try:
            yield browser
        finally:
            browser.close()


class Server:
    """An ASGI app served by uvicorn in a thread on 127.0.0.1, until stop()."""

    def __init__(self, app: Any, *, port: int | None = None) -> None:
        self.port = port or sandbox.free_port()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_config=None, access_log=False
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="console", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        self._thread.start()
        sandbox.wait_until(
            lambda: self._server.started or not self._thread.is_alive(),
            timeout=30,
            what=f"the console on port {self.port}",
        )
        if not self._server.started:
            raise RuntimeError(f"the console did not start on port {self.port} (see its log)")
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(30)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
