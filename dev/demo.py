"""`bin/demo`: the whole pipeline on generated SKUs, with nothing configured.

Creates a throwaway database, runs the real migrations, an in-process S3 server, the real
trigger and worker; then writes demo-output/index.html and prints a summary. Cleans up after.
"""

from __future__ import annotations

import asyncio
import html
import io
import json
import logging
import os
import random
import secrets
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import click
import psycopg
from PIL import Image, ImageChops

from collage.cli import logs
from collage.db import migrate
from collage.queue.worker import supervise
from collage.settings import Settings
from collage.web.app import create_app
from dev import sandbox
from dev.browser import Server, chromium, chromium_path
from dev.photos import garment

LOCAL_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
BUCKET = "unde-images"
BRANDS = ("zara", "hm", "mango", "cos", "uniqlo", "arket")
VIEWS = ("front", "back", "side", "detail", "on-model", "label")
MARKER = ".collage-demo"  # only a folder bin/demo made may be replaced by the next run
DEADLINE_PER_SKU_S = 10  # generous: a demo SKU takes well under a second
BROKEN = ("truncated photo", "missing photo", "HTML saved as .jpg", "photo from another host")


@dataclass
class Sku:
    """One generated product: its photos and what the demo expects of it."""

    brand: str
    external_id: str
    photos: dict[str, bytes] = field(default_factory=dict)
    urls: list[str] = field(default_factory=list)
    broken: str | None = None


def encode(image: Image.Image, kind: str) -> tuple[str, bytes]:
    """Save a photo in one of the formats the downloader brings; return (extension, bytes)."""
    out = io.BytesIO()
    if kind == "png-transparent":
        # A cut-out product shot: the studio background becomes transparent.
        background = Image.new(
            "RGB", image.size, image.getpixel((image.width - 1, image.height - 1))
        )
        rgba = image.convert("RGBA")
        rgba.putalpha(
            ImageChops.difference(image, background).convert("L").point(lambda v: 255 * (v > 0))
        )
        rgba.save(out, "PNG")
        return "png", out.getvalue()
    if kind == "webp":
        image.save(out, "WEBP", quality=90)
        return "webp", out.getvalue()
    if kind == "rotated":  # stored sideways with an EXIF orientation tag, as phones do
        exif = Image.Exif()
        exif[0x0112] = 6
        image.transpose(Image.Transpose.ROTATE_90).save(out, "JPEG", quality=90, exif=exif)
        return "jpg", out.getvalue()
    if kind == "cmyk":
        image.convert("CMYK").save(out, "JPEG", quality=90)
        return "jpg", out.getvalue()
    image.save(out, "JPEG", quality=90)
    return "jpg", out.getvalue()


def make_skus(count: int, *, seed: int = 7) -> list[Sku]:
    """Generate `count` SKUs of 2-6 photos in mixed sizes and formats; a few are broken."""
    rng = random.Random(seed)
    skus = []
    for n in range(count):
        sku = Sku(brand=BRANDS[n % len(BRANDS)], external_id=f"SKU-{1000 + n}")
        height = rng.choice((900, 1200, 1500))
        for i, view in enumerate(VIEWS[: rng.randrange(2, 7)]):
            h = height if rng.random() < 0.6 else int(height * rng.uniform(0.55, 0.9))
            image = garment(rng, view, width=int(h * rng.uniform(0.62, 0.8)), height=h)
            kind = rng.choice(("jpeg",) * 6 + ("png-transparent", "webp", "rotated", "cmyk"))
            ext, data = encode(image, kind)
            key = f"originals/{sku.brand}/{sku.external_id}/{i + 1}-{view}.{ext}"
            sku.photos[key] = data
            sku.urls.append(f"https://{BUCKET}.s3.demo.local/{key}")
        skus.append(sku)
    victims = rng.sample(skus, min(len(BROKEN), max(1, count // 8)))
    for sku, fault in zip(victims, BROKEN[: len(victims)], strict=True):
        sku.broken = fault
        first = next(iter(sku.photos))
        if fault == "truncated photo":
            sku.photos[first] = sku.photos[first][: len(sku.photos[first]) // 2]
        elif fault == "missing photo":
            del sku.photos[first]
        elif fault == "HTML saved as .jpg":
            sku.photos[first] = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
        else:
            sku.urls[0] = "https://images.example.com/stolen.jpg"
    return skus


async def run_demo(admin_dsn: str, output: Path, skus: list[Sku]) -> dict[str, object]:
    """Seed, run the worker until every SKU has settled, collect the results."""
    dsn = sandbox.create_database(admin_dsn, prefix="collage_demo")
    try:
        with sandbox.s3_server() as s3:
            return await _run(dsn, s3.endpoint, output, skus)
    finally:
        sandbox.drop_database(admin_dsn, dsn)


async def _run(dsn: str, endpoint: str, output: Path, skus: list[Sku]) -> dict[str, object]:
    migrate.apply(dsn)
    settings = Settings(
        db_url=dsn,
        db_session_url=dsn,
        s3_endpoint="http://s3.demo.local",
        s3_access_key=sandbox.S3_KEY,
        s3_secret_key=sandbox.S3_KEY,
        s3_bucket=BUCKET,
        s3_public_url=f"https://{BUCKET}.s3.demo.local",
        temp_dir=output / "scratch",
    )
    # The rows say s3.demo.local, as production rows name the real endpoint; requests go to moto.
    worker_settings = settings.replace(s3_endpoint=endpoint)
    client = sandbox.s3_client(endpoint)
    client.create_bucket(Bucket=BUCKET)
    for sku in skus:
        for key, data in sku.photos.items():
            client.put_object(Bucket=BUCKET, Key=key, Body=data)

    # The web console on the run's database and bucket, for as long as the demo runs.
    token = secrets.token_urlsafe(18)
    console = Server(create_app(worker_settings.replace(web_token=token))).start()
    click.echo(f"web console for this run: {console.url}/ (WEB_TOKEN {token})")
    try:
        result = await _build(dsn, worker_settings, skus, console_url=console.url, output=output)
    finally:
        console.stop()
    write_gallery(output, client, skus, result["rows"], shots=result["shots"])  # type: ignore[arg-type]
    return result


async def _build(
    dsn: str, worker_settings: Settings, skus: list[Sku], *, console_url: str, output: Path
) -> dict[str, object]:
    """Insert the SKUs as the downloader does, run the worker until every one has settled, and
    take screenshots of the console before the worker stops."""
    stop = asyncio.Event()
    worker = asyncio.create_task(supervise(worker_settings, stop=stop))
    started = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as conn:
        with conn.transaction():  # as the downloader does: the trigger queues every SKU
            for sku in skus:
                conn.execute(
                    "INSERT INTO raw_products (external_id, brand, image_urls, image_status)"
                    " VALUES (%s, %s, %s, 'uploaded')",
                    [sku.external_id, sku.brand, json.dumps(sku.urls)],
                )
        deadline = started + DEADLINE_PER_SKU_S * len(skus) + 60
        with click.progressbar(length=len(skus), label="building collages", file=None) as bar:
            done = 0
            while done < len(skus):
                if worker.done() or time.monotonic() > deadline:
                    stop.set()
                    raise click.ClickException(
                        f"the worker stopped or stalled with {len(skus) - done} SKU(s) left"
                        " (its warnings are above)"
                    )
                await asyncio.sleep(0.1)
                row = conn.execute(
                    "SELECT count(*) FROM raw_products WHERE image_status <> 'uploaded'"
                ).fetchone()
                now_done = int(row[0]) if row else 0
                bar.update(now_done - done)
                done = now_done
        elapsed = time.monotonic() - started
        # Playwright's synchronous API may not run inside this event loop: a thread of its own.
        shots = await asyncio.to_thread(screenshot_console, console_url, output)
        stop.set()
        await worker
        rows = conn.execute(
            "SELECT brand, external_id, image_status, collage_url, error_message, image_urls"
            " FROM raw_products ORDER BY id"
        ).fetchall()
        durations = [
            float(r[0])
            for r in conn.execute("SELECT duration_s FROM collage_outcomes WHERE outcome = 'built'")
        ]
        pickups = [
            float(r[0]) * 1000
            for r in conn.execute(
                "SELECT extract(epoch FROM s.at - d.at) FROM procrastinate_events d"
                " JOIN procrastinate_events s ON s.job_id = d.job_id AND s.type = 'started'"
                " JOIN procrastinate_jobs j ON j.id = d.job_id AND j.task_name = 'collage.build'"
                " WHERE d.type = 'deferred'"
            )
        ]
    return {
        "rows": rows,
        "durations": durations,
        "pickups": pickups,
        "elapsed": elapsed,
        "shots": shots,
    }


def screenshot_console(url: str, output: Path) -> list[str]:
    """Take screenshots of the console's overview and gallery with headless chromium."""
    if chromium_path() is None:
        click.echo("no chromium, so no screenshot of the console (bin/setup-browser installs it)")
        return []
    shots = []
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        for name, path in (("console.png", "/"), ("console-gallery.png", "/gallery")):
            page.goto(f"{url}{path}", wait_until="networkidle")
            # Previews below the fold load lazily: scroll to them, let them arrive.
            page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
            page.wait_for_load_state("networkidle")
            page.screenshot(path=str(output / name), full_page=True)
            shots.append(name)
    return shots


def write_gallery(
    output: Path, client: object, skus: list[Sku], rows: list[tuple], *, shots: list[str]
) -> None:
    """Save photos and collages and an index.html showing each SKU's photos beside its collage."""
    by_id = {(s.brand, s.external_id): s for s in skus}
    cards = []
    for brand, external_id, status, url, error, _ in rows:
        sku = by_id[(brand, external_id)]
        thumbs = []
        for key, data in sku.photos.items():
            path = output / "photos" / key.replace("/", "_")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            thumbs.append(f'<img src="photos/{html.escape(path.name)}" alt="{html.escape(key)}">')
        result = f'<p class="error">{html.escape(error or "")}</p>'
        if status == "collage_ready":
            key = url.split(f"{BUCKET}.s3.demo.local/", 1)[1]
            body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()  # type: ignore[attr-defined]
            path = output / "collages" / f"{brand}_{external_id}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(body)
            with Image.open(io.BytesIO(body)) as im:
                size = f"{im.width}x{im.height}, {len(body) / 1024:.0f} KB"
            result = f'<img class="collage" src="collages/{path.name}"><p>{size}</p>'
        title = f"{html.escape(brand)} / {html.escape(external_id)} <small>{status}</small>"
        cards.append(
            f'<section class="{status}"><h2>{title}</h2>'
            f"<div class=photos>{''.join(thumbs)}</div>{result}</section>"
        )
    (output / "index.html").write_text(
        "<!doctype html><meta charset=utf-8><title>collage demo</title><style>"
        "body{font-family:sans-serif;margin:2em;background:#fafafa}section{background:#fff;"
        "margin:1em 0;padding:1em;border-left:6px solid #3a3}section.error{border-color:#c33}"
        ".photos img{height:120px;margin-right:4px;border:1px solid #ddd}"
        "img.collage{max-width:100%;height:240px;border:1px solid #999}.error{color:#c33}"
        "img.console{max-width:100%;border:1px solid #999}"
        "</style><h1>collage demo: photos of each SKU, and the collage the worker built</h1>"
        + _console_links(shots)
        + "".join(cards)
    )


def _console_links(shots: list[str]) -> str:
    if not shots:
        return ""
    links = " ".join(f'<a href="{name}">{name}</a>' for name in shots)
    return (
        f"<p>The web console (<code>collage web</code>) at the end of this run: {links}</p>"
        f'<a href="{shots[0]}"><img class="console" src="{shots[0]}" alt="the web console"></a>'
    )


def summary(result: dict[str, object], skus: list[Sku]) -> str:
    """The table printed at the end."""
    rows = result["rows"]
    assert isinstance(rows, list)
    durations, pickups = result["durations"], result["pickups"]
    assert isinstance(durations, list) and isinstance(pickups, list)
    ready = [r for r in rows if r[2] == "collage_ready"]
    errors = [r for r in rows if r[2] == "error"]
    lines = [
        f"SKUs               {len(rows)}",
        f"collages           {len(ready)}",
        f"errors             {len(errors)}",
        f"wall time          {result['elapsed']:.1f} s",
    ]
    if durations:
        lines.append(
            f"time per collage   median {statistics.median(durations):.2f} s,"
            f" max {max(durations):.2f} s (download + build + upload)"
        )
    if pickups:
        ordered = sorted(pickups)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        lines.append(
            f"pickup latency     median {statistics.median(ordered):.0f} ms, p99 {p99:.0f} ms"
            " (queued -> started; the backlog waits its turn)"
        )
    expected = {(s.brand, s.external_id): s.broken for s in skus}
    for brand, external_id, _, _, error, _ in errors:
        why = expected.get((brand, external_id)) or "unexpected"
        lines.append(f"  error {brand}/{external_id} [{why}]: {error}")
    return "\n".join(lines)


@click.command()
@click.option("--skus", type=click.IntRange(1, 500), default=36, show_default=True)
@click.option("--output", type=click.Path(path_type=Path), default=Path("demo-output"))
def main(skus: int, output: Path) -> None:
    """Run the collage pipeline on generated SKUs and show what it made."""
    logs.configure("text", level=logging.WARNING)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the S3 server's request log
    admin_dsn = os.environ.get("STAGING_DB_URL") or LOCAL_DSN
    if not sandbox.can_connect(admin_dsn):
        raise click.ClickException(f"no PostgreSQL at {admin_dsn}; set STAGING_DB_URL")
    if output.exists() and not output.is_dir():
        raise click.ClickException(f"{output} is a file; give a folder")
    if output.exists() and any(output.iterdir()) and not (output / MARKER).exists():
        raise click.ClickException(f"{output} is not empty and not a demo output; choose another")
    shutil.rmtree(output, ignore_errors=True)  # a previous demo's output
    output.mkdir(parents=True)
    (output / MARKER).write_text("written by bin/demo; the next run replaces this folder\n")
    generated = make_skus(skus)
    click.echo(f"seeding {len(generated)} SKUs ({sum(len(s.photos) for s in generated)} photos)")
    result = asyncio.run(run_demo(admin_dsn, output, generated))
    click.echo(summary(result, generated))
    click.echo(f"open {output.resolve() / 'index.html'} to see every SKU beside its collage")


if __name__ == "__main__":
    main()
