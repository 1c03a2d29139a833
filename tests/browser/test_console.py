"""The console in a real browser: find a SKU, see its previews, requeue an errored one."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from collage.settings import Settings
from collage.web.app import create_app
from dev.browser import Server
from dev.photos import jpeg, solid_jpeg
from tests.support.console import TOKEN
from tests.support.skus import StartWorker, add_product, final_state, status_of, upload


def loaded_widths(page: Any, selector: str) -> list[int]:
    """naturalWidth of every image the selector finds, 0 for one that did not load."""
    return page.eval_on_selector_all(
        selector, "images => images.map(i => (i.complete ? i.naturalWidth : 0))"
    )


@pytest.mark.slow
def test_an_operator_finds_a_sku_sees_its_previews_and_requeues_an_errored_one(
    db: psycopg.Connection,
    settings: Settings,
    s3,
    start_worker: StartWorker,
    browser: Any,
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    photos = {"b/1.jpg": jpeg(300, 400, seed=1), "b/2.jpg": solid_jpeg(300, 400, (30, 90, 200))}
    good = add_product(db, upload(s3, settings, photos), brand="zara", external_id="BR-1")
    missing = [f"s3://{settings.s3_bucket}/originals/b/gone.jpg"]
    broken = add_product(db, missing, brand="zara", external_id="BR-2")
    worker = start_worker(settings)
    assert final_state(db, good)[0] == "collage_ready"
    assert final_state(db, broken)[0] == "error"
    worker.stop()  # the requeued SKU must stay 'uploaded' for the check below

    with Server(create_app(settings.replace(web_token=TOKEN))) as server:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{server.url}/")
        assert page.locator('tr[data-error-class="OriginalMissing"]').count() == 1

        page.fill('input[name="q"]', "zara/BR-1")
        page.press('input[name="q"]', "Enter")
        page.wait_for_url(f"**/sku/{good}")
        page.wait_for_load_state("networkidle")
        widths = loaded_widths(page, "img[data-photo], img[data-collage]")
        assert len(widths) == 3 and all(w > 0 for w in widths), widths

        page.goto(f"{server.url}/sku/{broken}")
        assert page.locator("button", has_text="requeue this SKU").count() == 0  # locked
        csrf = page.locator('input[name="csrf"]').first.get_attribute("value")
        forged = {"product_id": str(broken), "next": "/"}
        locked = page.request.post(f"{server.url}/actions/requeue", form={**forged, "csrf": csrf})
        assert locked.status == 403

        page.fill('input[name="who"]', "ana")
        page.fill('input[name="token"]', "not-the-token-at-all")
        page.click("text=unlock actions")
        assert page.locator("h1").inner_text() == "Refused (403)"
        page.goto(f"{server.url}/sku/{broken}")
        page.fill('input[name="who"]', "ana")
        page.fill('input[name="token"]', TOKEN)
        page.click("text=unlock actions")
        page.wait_for_url(f"**/sku/{broken}")
        assert "actions unlocked for ana" in page.locator(".flash").inner_text()

        # Unlocked, this very session is still refused without its CSRF token, or with another.
        for form in (forged, {**forged, "csrf": "forged"}, {**forged, "csrf": csrf}):
            response = page.request.post(f"{server.url}/actions/requeue", form=form)
            assert response.status == 403, form
        assert status_of(db, broken) == "error"

        page.click("button:has-text('requeue this SKU')")
        page.wait_for_url(f"**/sku/{broken}")
        assert "requeued 1 of 1" in page.locator(".flash").inner_text()
        assert status_of(db, broken) == "uploaded"
        page.screenshot(path=str(tmp_path / "console.png"), full_page=True)
    print(f"browser test: {time.monotonic() - started:.1f} s")
