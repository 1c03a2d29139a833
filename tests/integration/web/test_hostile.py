"""`collage web` against an attacker and an unlucky operator, as real HTTP clients reach it.

Forty clients asking for previews through a stalled S3, Host headers of another site, bad
parameters, a copied session cookie, token guesses sent in parallel.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import psycopg
import pytest

from collage.settings import Settings
from collage.web.app import SECURITY_HEADERS
from dev import sandbox
from dev.photos import jpeg
from dev.s3proxy import FaultyProxy, SlowGets
from tests.support.console import TOKEN, csrf_of
from tests.support.skus import add_product, upload
from tests.support.workers import collage_command, env_of


@contextlib.contextmanager
def collage_web(settings: Settings, folder: Path, **env: str) -> Iterator[str]:
    """Run `collage web` as an operator does; yield its base URL."""
    port = sandbox.free_port()
    environment = {
        **os.environ,
        **env_of(settings),
        "WEB_TOKEN": TOKEN,
        "WEB_PORT": str(port),
        **env,
    }
    log_path = folder / f"web-{port}.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [*collage_command(), "web"], env=environment, stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        sandbox.wait_until(
            lambda: httpx2.get(f"{url}/healthz").status_code == 200,
            timeout=30,
            what="collage web to answer",
            explain=log_path.read_text,
        )
        yield url
    finally:
        sandbox.terminate(server, timeout=20)


def assert_headers(response: httpx2.Response) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, (response.status_code, name)


@pytest.mark.slow
def test_forty_clients_on_a_stalled_s3_get_503s_while_pages_and_healthz_answer(
    db: psycopg.Connection, settings: Settings, s3, tmp_path: Path
) -> None:
    urls = upload(s3, settings, {"p/1.jpg": jpeg(80, 60, seed=1)})
    pid = add_product(db, urls, brand="zara", external_id="SLOW-1", status="collage_ready")
    slow = SlowGets(delay_s=60)
    proxy = FaultyProxy(settings.s3_endpoint, slow)
    health: list[float] = []
    answers: list[int] = []
    clients_done = threading.Event()
    try:
        with collage_web(settings.replace(s3_endpoint=proxy.endpoint), tmp_path) as url:

            def ask_preview(n: int) -> None:
                response = httpx2.get(f"{url}/preview/{pid}/photo-1", timeout=60)
                answers.append(response.status_code)

            def watch_health() -> None:
                with httpx2.Client(timeout=30) as client:
                    while not clients_done.is_set():
                        started = time.monotonic()
                        assert client.get(f"{url}/healthz").status_code == 200
                        health.append(time.monotonic() - started)
                        time.sleep(0.1)

            watcher = threading.Thread(target=watch_health)
            watcher.start()
            started = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(40) as pool:
                list(pool.map(ask_preview, range(40)))
            clients_s = time.monotonic() - started
            page = httpx2.get(f"{url}/sku/{pid}", timeout=10)
            clients_done.set()
            watcher.join(30)
            after = httpx2.get(f"{url}/healthz", timeout=5)
    finally:
        clients_done.set()
        slow.released.set()
        proxy.close()
    assert answers == [503] * 40
    assert page.status_code == 200 and after.status_code == 200
    assert slow.gets() <= 3  # one fetch for all forty (botocore may try it again)
    assert len(health) >= 10 and max(health) < 1.0, health
    assert clients_s < 30
    print(
        f"40 clients, stalled S3: all 503 after {clients_s:.1f}s; {slow.gets()} GET(s);"
        f" /healthz max {max(health) * 1000:.0f} ms over {len(health)} checks"
    )


def test_only_configured_hosts_are_answered(settings: Settings, tmp_path: Path) -> None:
    with collage_web(settings, tmp_path, WEB_ALLOWED_HOSTS="console.example.com") as url:
        rebound = httpx2.get(f"{url}/", headers={"host": "evil.example"})
        allowed = httpx2.get(f"{url}/", headers={"host": "console.example.com"})
    assert rebound.status_code == 400
    assert_headers(rebound)
    assert allowed.status_code == 200


def test_by_default_the_listen_address_and_localhost_are_answered(
    settings: Settings, tmp_path: Path
) -> None:
    with collage_web(settings, tmp_path) as url:
        port = url.rsplit(":", 1)[1]
        answers = {
            host: httpx2.get(f"{url}/", headers={"host": host}).status_code
            for host in (f"127.0.0.1:{port}", f"localhost:{port}", "attacker.example", "")
        }
        checked = httpx2.get(f"{url}/healthz", headers={"host": "10.0.0.7"}).status_code
    assert checked == 200  # a health checker names the container by its address
    assert answers == {
        f"127.0.0.1:{port}": 200,
        f"localhost:{port}": 200,
        "attacker.example": 400,
        "": 400,
    }


def test_bad_parameters_are_400s_or_404s_with_the_headers_never_500s(
    db: psycopg.Connection, settings: Settings, s3, tmp_path: Path
) -> None:
    urls = upload(s3, settings, {"q/1.jpg": jpeg(80, 60, seed=2)})
    pid = add_product(db, urls, brand="zara", external_id="Q-1", status="collage_ready")
    with collage_web(settings, tmp_path) as url:
        answers = {
            path: httpx2.get(f"{url}{path}", timeout=30)
            for path in (
                "/search?q=%00",
                "/search?q=a%1B%5D2%3Bx%07",
                "/gallery?before=%C2%B2",
                "/gallery?before=-1",
                f"/preview/{pid}/photo-%C2%B2",
                f"/preview/{pid}/photo-01",
                f"/preview/{pid}/photo-001",
                f"/preview/{pid}/photo-0",
                f"/preview/{pid}/photo-1",
            )
        }
    statuses = {path: response.status_code for path, response in answers.items()}
    assert statuses == {
        "/search?q=%00": 400,
        "/search?q=a%1B%5D2%3Bx%07": 400,
        "/gallery?before=%C2%B2": 400,
        "/gallery?before=-1": 400,
        f"/preview/{pid}/photo-%C2%B2": 404,
        f"/preview/{pid}/photo-01": 404,
        f"/preview/{pid}/photo-001": 404,
        f"/preview/{pid}/photo-0": 404,
        f"/preview/{pid}/photo-1": 200,
    }
    for response in answers.values():
        assert_headers(response)
        assert "Traceback" not in response.text


def test_lock_ends_every_copy_of_the_session(settings: Settings, tmp_path: Path) -> None:
    with collage_web(settings, tmp_path) as url, httpx2.Client(base_url=url) as operator:
        csrf = csrf_of(operator.get("/").text)
        unlocked = operator.post("/unlock", data={"csrf": csrf, "token": TOKEN, "who": "ana"})
        assert unlocked.status_code == 303
        copied = dict(operator.cookies)  # what an attacker lifted from the operator's browser
        with httpx2.Client(base_url=url, cookies=copied) as thief:
            assert "actions unlocked for <b>ana</b>" in thief.get("/").text
            csrf = csrf_of(operator.get("/").text)
            assert operator.post("/lock", data={"csrf": csrf}).status_code == 303
            page = thief.get("/").text
    assert "actions unlocked" not in page and 'action="/unlock"' in page


def test_token_guesses_from_one_client_take_turns(settings: Settings, tmp_path: Path) -> None:
    with collage_web(settings, tmp_path) as url, httpx2.Client(base_url=url) as guesser:
        csrf = csrf_of(guesser.get("/").text)
        cookies = dict(guesser.cookies)

        def guess(n: int) -> int:
            form = {"csrf": csrf, "token": f"guess-{n:020d}", "who": "mallory"}
            with httpx2.Client(base_url=url, cookies=cookies, timeout=60) as client:
                return client.post("/unlock", data=form).status_code

        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(guess, range(8)))
        took = time.monotonic() - started
    assert codes == [403] * 8
    assert took >= 8 * 0.5 * 0.95, took  # one at a time, each with its delay
    print(f"8 parallel wrong guesses from one client: answered over {took:.1f}s")


def test_the_session_cookie_is_secure_when_served_behind_tls(
    settings: Settings, tmp_path: Path
) -> None:
    with collage_web(settings, tmp_path, WEB_SECURE_COOKIE="true") as url:
        cookie = httpx2.get(f"{url}/").headers["set-cookie"].lower()
    assert "secure" in cookie and "httponly" in cookie
