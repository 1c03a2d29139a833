"""A headless chromium for the browser tests, driven by Playwright: Debian's (bin/setup-browser).

Module-scoped, not session-scoped: Playwright's sync API keeps an event loop running in this
thread while it is open, and the tests after these ones call asyncio.run().
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from dev.browser import chromium, chromium_path
from tests.conftest import missing_service


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A Playwright Browser on Debian's chromium; missing chromium skips, or fails in CI."""
    if chromium_path() is None:
        missing_service("chromium (bin/setup-browser installs Debian's package)")
    with chromium() as made:
        yield made
