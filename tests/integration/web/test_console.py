"""The console's handlers against the real database, S3 and worker, through Starlette's client."""

from __future__ import annotations

import io
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2
import psycopg
import pytest
from PIL import Image
from starlette.testclient import TestClient

from collage.settings import Settings
from collage.web.app import SECURITY_HEADERS, create_app
from collage.web.previews import COLLAGE_BOX, PHOTO_BOX
from dev import sandbox
from dev.photos import encode, jpeg, solid_jpeg
from tests.support.console import TOKEN, csrf_of, unlock
from tests.support.pictures import png_header_only
from tests.support.skus import StartWorker, add_product, final_state, status_of, upload
from tests.support.workers import env_of

RED, BLUE, GREEN = (200, 30, 30), (30, 30, 200), (30, 160, 60)


@pytest.fixture
def web_settings(settings: Settings) -> Settings:
    # Starlette's TestClient sends Host: testserver.
    return settings.replace(web_token=TOKEN, web_allowed_hosts=("testserver",))


@pytest.fixture
def client(web_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(web_settings), follow_redirects=False) as made:
        yield made


def errored(db: psycopg.Connection, error_class: str, *, brand: str = "zara") -> int:
    """A SKU the worker marked 'error', with the outcome it recorded."""
    pid = add_product(db, ["s3://b/originals/a.jpg"], brand=brand, status="error")
    message = f"{error_class}: photo 1 is broken"
    db.execute("UPDATE raw_products SET error_message = %s WHERE id = %s", [message, pid])
    db.execute(
        "INSERT INTO collage_outcomes (product_id, outcome, error_class, message)"
        " VALUES (%s, 'error', %s, %s)",
        [pid, error_class, message],
    )
    return pid


def upright_photo() -> bytes:
    """Red above blue, stored sideways with EXIF orientation 6 as phones do."""
    image = Image.new("RGB", (60, 100), BLUE)
    image.paste(RED, (0, 0, 60, 50))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(image.transpose(Image.Transpose.ROTATE_90), exif=exif)


def pixel(jpeg_bytes: bytes, x: float, y: float) -> tuple[int, ...]:
    with Image.open(io.BytesIO(jpeg_bytes)) as image:
        return image.convert("RGB").getpixel((int(x * image.width), int(y * image.height)))


def near(rgb: tuple[int, ...], expected: tuple[int, int, int], tolerance: int = 40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(rgb, expected, strict=True))


def image_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def test_healthz_answers_200_with_the_database_and_503_without(
    client: TestClient, web_settings: Settings
) -> None:
    assert client.get("/healthz").status_code == 200
    dead = web_settings.replace(db_url=f"postgresql://postgres@127.0.0.1:{sandbox.free_port()}/x")
    with TestClient(create_app(dead)) as down:
        assert down.get("/healthz").status_code == 503
        page = down.get("/")
        assert page.status_code == 503 and "database does not answer" in page.text


def test_a_built_sku_shows_upright_colour_true_previews_in_order_and_in_the_overview(
    db: psycopg.Connection,
    client: TestClient,
    settings: Settings,
    s3,
    start_worker: StartWorker,
) -> None:
    urls = upload(s3, settings, {"w/1.jpg": upright_photo(), "w/2.jpg": solid_jpeg(60, 100, GREEN)})
    good = add_product(db, urls, brand="zara", external_id="GOOD-1")
    missing = add_product(db, [*urls, f"s3://{settings.s3_bucket}/originals/none.jpg"])
    html = upload(s3, settings, {"w/page.jpg": b"<html><body>502 Bad Gateway</body></html>"})
    unreadable = add_product(db, html)
    start_worker(settings)
    for pid in (good, missing, unreadable):
        final_state(db, pid)
    assert status_of(db, good) == "collage_ready"

    page = client.get(f"/sku/{good}")
    assert page.status_code == 200 and "zara/GOOD-1" in page.text
    previews = re.findall(r'<img src="(/preview/\d+/photo-\d\?v=[^"]+)"', page.text)
    assert len(previews) == 2
    first = client.get(previews[0])
    assert first.status_code == 200 and first.headers["content-type"] == "image/jpeg"
    width, height = image_size(first.content)
    assert height > width and width <= PHOTO_BOX[0] and height <= PHOTO_BOX[1]  # upright
    assert near(pixel(first.content, 0.5, 0.1), RED) and near(pixel(first.content, 0.5, 0.9), BLUE)
    assert near(pixel(client.get(previews[1]).content, 0.5, 0.5), GREEN)
    assert first.headers["cache-control"] == "private, max-age=86400"
    again = client.get(previews[0], headers={"if-none-match": first.headers["etag"]})
    assert again.status_code == 304

    [collage_src] = re.findall(r'<img src="(/preview/\d+/collage\?v=[^"]+)"', page.text)
    collage = client.get(collage_src)
    assert collage.status_code == 200
    width, height = image_size(collage.content)
    assert height <= COLLAGE_BOX[1] and width > height  # two panels side by side, in order
    assert near(pixel(collage.content, 0.25, 0.1), RED)
    assert near(pixel(collage.content, 0.25, 0.9), BLUE)
    assert near(pixel(collage.content, 0.75, 0.5), GREEN)

    overview = client.get("/")
    assert overview.status_code == 200
    for error_class in ("OriginalMissing", "PhotoUnreadable"):
        assert f'data-error-class="{error_class}"' in overview.text
    assert (
        f'href="/sku/{missing}"' in overview.text and f'href="/sku/{unreadable}"' in overview.text
    )
    assert 'class="built"' in overview.text  # the chart has this hour's bar
    assert collage_src in overview.text  # the latest collages
    assert collage_src in client.get("/gallery").text


def test_previews_read_only_the_rows_own_originals_and_refuse_hostile_photos(
    db: psycopg.Connection, client: TestClient, settings: Settings, s3
) -> None:
    bucket = settings.s3_bucket
    good, bomb, truncated = upload(
        s3,
        settings,
        {
            "h/good.jpg": jpeg(80, 100),
            "h/bomb.png": png_header_only(30_000, 30_000),
            "h/truncated.jpg": jpeg(400, 500)[:3000],
        },
    )
    # An object outside originals/ exists and is a fine photo: it is never read all the same.
    s3.put_object(Bucket=bucket, Key="private/secret.jpg", Body=jpeg(80, 100))
    urls = [
        f"s3://{bucket}/private/secret.jpg",
        "s3://another-bucket/originals/h/good.jpg",
        bomb,
        truncated,
        f"s3://{bucket}/originals/h/missing.jpg",
        good,
    ]
    pid = add_product(db, urls, status="new")
    page = client.get(f"/sku/{pid}")
    assert page.status_code == 200
    assert "is not under originals/" in page.text and "another-bucket" in page.text
    assert f"/preview/{pid}/photo-1" not in page.text and f"/preview/{pid}/photo-6" in page.text

    expected = {
        1: (422, "is not under originals/"),
        2: (422, "is in bucket"),
        3: (422, "are allowed per photo"),
        4: (422, "cannot be decoded"),
        5: (404, "not found"),
    }
    for index, (status, words) in expected.items():
        response = client.get(f"/preview/{pid}/photo-{index}")
        assert response.status_code == status, (index, response.text)
        assert response.headers["content-type"].startswith("image/svg+xml")
        said = " ".join(re.findall(r">([^<]*)</text>", response.text))
        assert words in said, (index, said)
        assert response.headers["cache-control"] == "no-store"
    assert client.get(f"/preview/{pid}/photo-6").status_code == 200
    assert client.get(f"/preview/{pid}/photo-7").status_code == 404
    assert client.get(f"/preview/{pid}/collage").status_code == 404  # none was built
    assert client.get("/preview/999999/photo-1").status_code == 404
    assert client.get("/healthz").status_code == 200  # the console took no harm


def test_actions_need_the_token_and_the_sessions_csrf_token(
    db: psycopg.Connection, client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="collage.web.controls")
    pid = errored(db, "PhotoUnreadable")
    page = client.get(f"/sku/{pid}").text
    assert "requeue this SKU" not in page  # locked: no action is offered
    locked_csrf = csrf_of(page)
    form = {"csrf": locked_csrf, "product_id": str(pid), "next": f"/sku/{pid}"}
    assert client.post("/actions/requeue", data=form).status_code == 403
    wrong_token = {"csrf": locked_csrf, "token": TOKEN + "x", "who": "mallory"}
    assert client.post("/unlock", data=wrong_token).status_code == 403
    right_token = {"token": TOKEN, "who": "ana"}
    assert client.post("/unlock", data=right_token).status_code == 403  # no CSRF token
    assert client.post("/unlock", data={**right_token, "csrf": "forged"}).status_code == 403
    assert status_of(db, pid) == "error"

    csrf = unlock(client)
    assert csrf != locked_csrf  # unlocking gives the session a new one
    page = client.get(f"/sku/{pid}").text
    assert "actions unlocked for <b>ana</b>" in page and "requeue this SKU" in page
    for refused in (
        {k: v for k, v in form.items() if k != "csrf"},
        {**form, "csrf": "forged"},
        {**form, "csrf": locked_csrf},
    ):
        assert client.post("/actions/requeue", data=refused).status_code == 403
    cross_site = client.post(
        "/actions/requeue", data={**form, "csrf": csrf}, headers={"sec-fetch-site": "cross-site"}
    )
    assert cross_site.status_code == 403
    assert client.get("/actions/requeue").status_code == 405  # POST only
    assert status_of(db, pid) == "error"

    done = client.post("/actions/requeue", data={**form, "csrf": csrf})
    assert done.status_code == 303 and done.headers["location"] == f"/sku/{pid}"
    assert status_of(db, pid) == "uploaded"  # the trigger queued it
    jobs = db.execute(
        "SELECT count(*) FROM procrastinate_jobs WHERE lock = %s AND status = 'todo'",
        [f"product:{pid}"],
    ).fetchone()
    assert jobs and jobs[0] == 1
    assert "requeued 1 of 1 SKU(s) selected" in client.get(f"/sku/{pid}").text
    done_lines = [r for r in caplog.records if r.levelno == logging.INFO]
    [line] = [r for r in done_lines if getattr(r, "action", None) == "requeue"]
    assert (line.who, line.count, line.selected, line.product_ids) == ("ana", 1, 1, [pid])
    refusals = [r.refused for r in caplog.records if getattr(r, "refused", None)]
    assert len(refusals) == 8 and "wrong token" in refusals, refusals  # each one logged too

    client.post("/lock", data={"csrf": csrf, "next": "/"})
    assert client.post("/actions/requeue", data={**form, "csrf": csrf}).status_code == 403


def test_without_a_token_the_console_is_read_only(
    db: psycopg.Connection, settings: Settings
) -> None:
    pid = errored(db, "PhotoUnreadable")
    read_only = settings.replace(web_allowed_hosts=("testserver",))
    with TestClient(create_app(read_only), follow_redirects=False) as client:
        page = client.get("/").text
        assert "read-only" in page and 'action="/unlock"' not in page
        refused = client.post("/unlock", data={"csrf": "x", "token": "x" * 20, "who": "ana"})
        assert refused.status_code == 403 and "WEB_TOKEN is not set" in refused.text
        form = {"csrf": "x", "product_id": str(pid)}
        assert client.post("/actions/requeue", data=form).status_code == 403
    assert status_of(db, pid) == "error"


def test_an_error_group_is_one_click_from_requeue_and_its_retries_from_cancel(
    db: psycopg.Connection, client: TestClient
) -> None:
    missing = [errored(db, "OriginalMissing") for _ in range(2)]
    other = errored(db, "TooLarge")
    retrying = add_product(db, ["s3://b/originals/r.jpg"])  # the trigger queues its build
    db.execute(
        "UPDATE procrastinate_jobs SET scheduled_at = now() + interval '1 hour' WHERE lock = %s",
        [f"product:{retrying}"],
    )
    db.execute(
        "INSERT INTO collage_outcomes (product_id, outcome, error_class, message)"
        " VALUES (%s, 'retry', 'Transient', 'S3 answered 503 SlowDown to get originals/r.jpg')",
        [retrying],
    )
    csrf = unlock(client)
    page = client.get("/").text
    groups = dict(
        re.findall(
            r'data-error-class="(\w+)">\s*<td><code>\w+</code></td>\s*'
            r'<td class="num">([\d,]+)</td>',
            page,
        )
    )
    assert groups == {"OriginalMissing": "2", "TooLarge": "1", "Transient": "0"}
    assert "requeue 2" in page and "cancel 1" in page

    form = {"csrf": csrf, "error_class": "OriginalMissing", "next": "/"}
    assert client.post("/actions/requeue", data=form).status_code == 303
    assert [status_of(db, pid) for pid in missing] == ["uploaded", "uploaded"]
    assert status_of(db, other) == "error"
    cancel = client.post("/actions/cancel", data={**form, "error_class": "Transient"})
    assert cancel.status_code == 303
    assert status_of(db, retrying) == "uploaded"  # the row keeps the downloader's status
    assert "cancelled the builds of 1 of 1" in client.get("/").text
    who = db.execute(
        "SELECT cancelled_by FROM collage_cancellations WHERE product_id = %s", [retrying]
    )
    assert who.fetchone() == ("ana (web console)",)
    page = client.get(f"/sku/{retrying}").text
    assert "its build cancelled by ana (web console)" in page
    assert 'value="cancelled"' in page  # one click from requeue


def test_pause_and_resume_from_the_console(db: psycopg.Connection, client: TestClient) -> None:
    csrf = unlock(client)
    paused = client.post(
        "/actions/pause", data={"csrf": csrf, "brand": "zara", "reason": "S3 outage", "next": "/"}
    )
    assert paused.status_code == 303
    row = db.execute("SELECT paused_by, reason FROM collage_pauses WHERE scope = 'zara'")
    assert row.fetchone() == ("ana (web console)", "S3 outage")
    held = add_product(db, ["s3://b/originals/p.jpg"], brand="zara")
    page = client.get("/").text
    assert 'data-scope="zara"' in page and "S3 outage" in page
    assert re.search(r'<b>1</b> paused\s*<span class="muted">\(zara\)</span>', page), page
    resumed = client.post("/actions/resume", data={"csrf": csrf, "scope": "zara", "next": "/"})
    assert resumed.status_code == 303
    assert db.execute("SELECT count(*) FROM collage_pauses").fetchone() == (0,)
    due = db.execute(
        "SELECT scheduled_at IS NULL FROM procrastinate_jobs WHERE lock = %s", [f"product:{held}"]
    )
    assert due.fetchone() == (True,)


def test_the_console_pauses_a_brand_exactly_and_every_brand_only_when_asked(
    db: psycopg.Connection, client: TestClient
) -> None:
    csrf = unlock(client)

    def pause(**form: str) -> int:
        return client.post("/actions/pause", data={"csrf": csrf, "next": "/", **form}).status_code

    assert pause(brand="") == 400  # an empty brand never means every brand
    assert pause(brand="*") == 400
    assert pause(brand="zara", all="1") == 400
    assert db.execute("SELECT count(*) FROM collage_pauses").fetchone() == (0,)
    assert pause(brand="zara ") == 303  # a brand spelled with its trailing space
    assert pause(all="1") == 303
    scopes = db.execute("SELECT scope FROM collage_pauses ORDER BY scope").fetchall()
    assert scopes == [("*",), ("zara ",)]
    page = client.get("/").text
    assert 'value="zara "' in page  # the resume button names the exact scope

    def resume(scope: str) -> int:
        return client.post(
            "/actions/resume", data={"csrf": csrf, "next": "/", "scope": scope}
        ).status_code

    assert resume("zara") == 404
    assert resume("zara ") == 303 and resume("*") == 303
    assert db.execute("SELECT count(*) FROM collage_pauses").fetchone() == (0,)


def test_search_finds_by_id_brand_and_external_id_or_external_id_alone(
    db: psycopg.Connection, client: TestClient
) -> None:
    zara = add_product(
        db, ["s3://b/originals/a.jpg"], brand="zara", external_id="AB-1", status="new"
    )
    add_product(db, ["s3://b/originals/a.jpg"], brand="hm", external_id="AB-1", status="new")
    assert client.get(f"/search?q={zara}").headers["location"] == f"/sku/{zara}"
    assert client.get("/search?q=zara/AB-1").headers["location"] == f"/sku/{zara}"
    both = client.get("/search?q=AB-1")
    assert both.status_code == 200 and "zara" in both.text and ">hm<" in both.text
    none = client.get("/search?q=nothing-like-it")
    assert none.status_code == 200 and "No SKU" in none.text
    assert client.get("/sku/987654321").status_code == 404
    assert client.get(f"/search?q={'9' * 30}").status_code == 200  # beyond bigint: no SKU


def test_responses_carry_the_security_headers_and_redirects_stay_on_this_site(
    client: TestClient,
) -> None:
    page = client.get("/")
    for name, value in SECURITY_HEADERS.items():
        assert page.headers[name] == value
    assert page.headers["cache-control"] == "no-store"
    cookie = page.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    csrf = csrf_of(page.text)
    for target in ("//evil.example/x", "https://evil.example/", "\\\\evil.example"):
        response = client.post(
            "/unlock", data={"csrf": csrf, "token": TOKEN, "who": "ana", "next": target}
        )
        assert response.headers["location"] == "/"
        csrf = csrf_of(client.get("/").text)


def test_the_collage_web_command_serves_the_console(settings: Settings, tmp_path: Path) -> None:
    port = sandbox.free_port()
    env = {**os.environ, **env_of(settings), "WEB_TOKEN": TOKEN, "WEB_PORT": str(port)}
    binary = str(Path(sys.executable).parent / "collage")
    log = (tmp_path / "web.log").open("w")
    server = subprocess.Popen([binary, "web"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        sandbox.wait_until(
            lambda: httpx2.get(f"http://127.0.0.1:{port}/healthz").status_code == 200,
            timeout=30,
            what="collage web to answer",
        )
        assert httpx2.get(f"http://127.0.0.1:{port}/").status_code == 200
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=20)
        log.close()
    output = (tmp_path / "web.log").read_text()
    # uvicorn ends by raising SIGTERM again once it has shut down cleanly.
    assert code in (0, -signal.SIGTERM) and "Application shutdown complete" in output, output
    assert "color_message" not in output
