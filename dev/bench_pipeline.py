"""Pipeline benchmark: pickup latency, end-to-end time, queue overhead, the trigger's cost.

Runs against the local PostgreSQL (or BENCH_DATABASE_URL's server) with its own PgBouncer
pools, an S3 server in another process and real `collage worker` processes. Figures are
medians or percentiles of this run; ratios compare with baselines measured in the same run.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import click
import psycopg
from PIL import Image

from collage.db import migrate
from dev import collages, pgwire, sandbox
from dev.photos import noisy_jpeg

LOCAL_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
BUCKET = "bench"
KEY = sandbox.S3_KEY


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@contextlib.contextmanager
def s3_process() -> Iterator[tuple[str, int]]:
    """Run the S3 server in its own process so it does not share the workers' CPU accounting."""
    port = sandbox.free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        sandbox.wait_until(
            lambda: sandbox.s3_client(endpoint).list_buckets() is not None,
            timeout=30,
            what="the S3 server",
        )
        yield endpoint, server.pid
    finally:
        server.terminate()
        server.wait(10)


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds a running process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_s(pid: int) -> tuple[float, float]:
    """CPU seconds so far of a process itself and of its descendants (alive or reaped)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own, reaped = (
        (int(fields[i]) + int(fields[i + 1])) / os.sysconf("SC_CLK_TCK") for i in (11, 13)
    )
    children = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                children += sum(tree_cpu_s(int(child)))
    return own, reaped + children


def postgres_cpu_s() -> float:
    """CPU seconds used so far by every PostgreSQL process on this machine."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            text = stat.read_text()
            if "(postgres)" in text:
                total += process_cpu_s(int(stat.parent.name))
    return total


@contextlib.contextmanager
def workers(
    count: int,
    *,
    db_url: str,
    session_url: str,
    endpoint: str,
    concurrency: int = 1,
):
    """Start `count` real `collage worker` processes; stop them with SIGTERM afterwards."""
    env = {
        **os.environ,
        "STAGING_DB_URL": db_url,
        "STAGING_DB_SESSION_URL": session_url,
        "S3_ENDPOINT": endpoint,
        "S3_ACCESS_KEY": KEY,
        "S3_SECRET_KEY": KEY,
        "S3_BUCKET": BUCKET,
        "WORKER_CONCURRENCY": str(concurrency),
        "LOG_FORMAT": "json",
    }
    binary = str(Path(sys.executable).parent / "collage")
    procs = [
        subprocess.Popen([binary, "worker"], env=env, stderr=subprocess.DEVNULL)
        for _ in range(count)
    ]
    try:
        with psycopg.connect(db_url, autocommit=True, prepare_threshold=None) as conn:
            sandbox.wait_until(
                lambda: (
                    conn.execute(
                        "SELECT count(*) FROM procrastinate_workers"
                        " WHERE last_heartbeat > now() - interval '5 seconds'"
                    ).fetchone()[0]
                    >= count
                ),
                timeout=30,
                what=f"{count} worker(s) to register",
            )
        yield procs
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(60)


def pickup_samples(dsn: str, samples: int) -> tuple[list[float], list[float]]:
    """Mark SKUs 'uploaded' one at a time; return milliseconds from commit to the job's fetch
    (its 'started' event) and to its outcome (an empty SKU: read, refused, marked 'error')."""
    fetched, finished = [], []
    with psycopg.connect(dsn, autocommit=True) as conn:
        ids = [
            row[0]
            for row in conn.execute(
                "INSERT INTO raw_products (external_id, brand, image_urls, image_status)"
                " SELECT 'p' || n, 'bench', '[]', 'new' FROM generate_series(1, %s) n RETURNING id",
                [samples],
            )
        ]
        for pid in ids:
            conn.execute("UPDATE raw_products SET image_status = 'uploaded' WHERE id = %s", [pid])
            committed = time.time()
            times: tuple[float, float] | None = None

            def done(pid: int = pid) -> bool:
                nonlocal times
                row = conn.execute(
                    "SELECT extract(epoch FROM e.at), extract(epoch FROM o.finished_at)"
                    "  FROM procrastinate_jobs j"
                    "  JOIN procrastinate_events e ON e.job_id = j.id AND e.type = 'started'"
                    "  JOIN collage_outcomes o ON o.job_id = j.id WHERE j.lock = %s",
                    [f"product:{pid}"],
                ).fetchone()
                times = (float(row[0]), float(row[1])) if row else None
                return times is not None

            sandbox.wait_until(done, timeout=30, what="a job to finish")
            assert times is not None
            fetched.append((times[0] - committed) * 1000)
            finished.append((times[1] - committed) * 1000)
    return fetched, finished


def settle(dsn: str, *, timeout: float) -> None:
    """Wait until no SKU is 'uploaded' and no job waits or runs."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        sandbox.wait_until(
            lambda: conn.execute(
                "SELECT NOT EXISTS (SELECT 1 FROM raw_products WHERE image_status = 'uploaded')"
                " AND NOT EXISTS (SELECT 1 FROM procrastinate_jobs j WHERE j.status IN"
                " ('todo', 'doing') AND j.task_name = 'collage.build')"
            ).fetchone()[0],
            timeout=timeout,
            what="the queue to drain",
        )


def seed_photos(endpoint: str, count: int, *, sizes: list[tuple[int, int]]) -> list[list[str]]:
    """Upload `count` SKUs' photos; return each SKU's image_urls."""
    client = sandbox.s3_client(endpoint)
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=BUCKET)
    cache: dict[tuple[int, int, int], bytes] = {}
    skus = []
    for n in range(count):
        urls = []
        for i, (w, h) in enumerate(sizes):
            variant = (w, h, (n + i) % 5)
            if variant not in cache:
                cache[variant] = noisy_jpeg(w, h, seed=hash(variant))
            key = f"originals/{n}/{i}.jpg"
            client.put_object(Bucket=BUCKET, Key=key, Body=cache[variant])
            urls.append(f"s3://{BUCKET}/{key}")
        skus.append(urls)
    return skus


def downloaded(endpoint: str, skus: list[list[str]]) -> Iterator[list[bytes]]:
    """Each SKU's photos, read from the bucket, one SKU at a time."""
    client = sandbox.s3_client(endpoint)
    for urls in skus:
        yield [
            client.get_object(Bucket=BUCKET, Key=url.split("/", 3)[3])["Body"].read()
            for url in urls
        ]


def pure_collage_seconds(endpoint: str, skus: list[list[str]]) -> list[float]:
    """CPU time of imaging.build_collage alone for each SKU, photos already in memory."""
    times = []
    for photos in downloaded(endpoint, skus):
        start = time.process_time()
        collages.build_collage(photos)
        times.append(time.process_time() - start)
    return times


def floor_seconds(endpoint: str, skus: list[list[str]]) -> list[float]:
    """CPU time of each SKU's floor: decode every photo once, encode its collage's canvas once."""
    from dev.bench_imaging import floor

    times = []
    for photos in downloaded(endpoint, skus):
        canvas = Image.open(io.BytesIO(collages.build_collage(photos)))
        canvas.load()
        start = time.process_time()
        floor(photos, canvas)
        times.append(time.process_time() - start)
    return times


def insert_uploaded(dsn: str, skus: list[list[str]]) -> float:
    """Insert every SKU as 'uploaded' in one transaction; return the commit time."""
    with psycopg.connect(dsn) as conn:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO raw_products (external_id, brand, image_urls, image_status)"
                " VALUES (%s, 'bench', %s, 'uploaded')",
                [(f"e{n}", json.dumps(urls)) for n, urls in enumerate(skus)],
            )
        conn.commit()
    return time.time()


def bulk_update_seconds(dsn: str, rows: int, *, trigger: bool) -> float:
    """Time one UPDATE that marks `rows` SKUs 'uploaded', with or without the trigger."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE raw_products, procrastinate_jobs CASCADE")
        conn.execute(
            "INSERT INTO raw_products (external_id, brand, image_urls, image_status)"
            " SELECT 'b' || n, 'bench', '[\"s3://bench/a.jpg\"]', 'new'"
            " FROM generate_series(1, %s) n",
            [rows],
        )
        conn.execute(f"ALTER TABLE raw_products {'ENABLE' if trigger else 'DISABLE'} TRIGGER USER")
        start = time.perf_counter()
        conn.execute("UPDATE raw_products SET image_status = 'uploaded'")
        elapsed = time.perf_counter() - start
        jobs = conn.execute("SELECT count(*) FROM procrastinate_jobs").fetchone()
        conn.execute("ALTER TABLE raw_products ENABLE TRIGGER USER")
        assert jobs and jobs[0] == (rows if trigger else 0), jobs
    return elapsed


def fairness(dsn: str, endpoint: str, *, backlog: int) -> tuple[int, float, float]:
    """A bulk brand's backlog, then one SKU of another brand: how long does it wait?

    Returns the bulk builds that finished between its upload and its own build, its seconds
    from upload to collage_ready, and the bulk UPDATE's seconds per row (trigger included).
    """
    [tiny] = seed_photos(endpoint, 1, sizes=[(200, 300)])
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO raw_products (external_id, brand, image_urls, image_status)"
            " SELECT 'bulk-' || n, 'bulk', %s, 'new' FROM generate_series(1, %s) n",
            [json.dumps(tiny), backlog],
        )
        start = time.perf_counter()
        conn.execute("UPDATE raw_products SET image_status = 'uploaded' WHERE brand = 'bulk'")
        per_row = (time.perf_counter() - start) / backlog
        with workers(1, db_url=dsn, session_url=dsn, endpoint=endpoint, concurrency=2):

            def built() -> int:
                row = conn.execute(
                    "SELECT count(*) FROM collage_outcomes WHERE outcome = 'built'"
                ).fetchone()
                return int(row[0]) if row else 0

            sandbox.wait_until(lambda: built() >= 20, timeout=120, what="the bulk brand to start")
            before = built()
            uploaded = time.time()
            row = conn.execute(
                "INSERT INTO raw_products (external_id, brand, image_urls, image_status)"
                " VALUES ('new-1', 'newcomer', %s, 'uploaded') RETURNING id",
                [json.dumps(tiny)],
            ).fetchone()
            assert row
            newcomer = int(row[0])
            sandbox.wait_until(
                lambda: (
                    conn.execute(
                        "SELECT image_status FROM raw_products WHERE id = %s", [newcomer]
                    ).fetchone()
                    == ("collage_ready",)
                ),
                timeout=120,
                what="the newcomer",
            )
            waited_s = time.time() - uploaded
            ahead = conn.execute(
                "SELECT count(*) FROM collage_outcomes WHERE outcome = 'built' AND id < ("
                " SELECT min(id) FROM collage_outcomes WHERE product_id = %s)",
                [newcomer],
            ).fetchone()
            assert ahead
        conn.execute("TRUNCATE raw_products, procrastinate_jobs, collage_outcomes CASCADE")
    return int(ahead[0]) - before, waited_s, per_row


def paused_fetch_ms(dsn: str, rows: int) -> float:
    """How long a worker's fetch takes when `rows` builds wait, all paused (median of 5)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO raw_products (external_id, brand, image_urls, image_status)"
            " SELECT 'held-' || n, 'held', '[]', 'new' FROM generate_series(1, %s) n",
            [rows],
        )
        conn.execute("INSERT INTO collage_pauses (scope, paused_by) VALUES ('*', 'bench')")
        conn.execute("UPDATE raw_products SET image_status = 'uploaded'")
        took = []
        for _ in range(5):
            start = time.perf_counter()
            found = conn.execute(
                "SELECT id FROM procrastinate_fetch_job_v2(ARRAY['collage'], NULL)"
            ).fetchone()
            took.append((time.perf_counter() - start) * 1000)
            assert found == (None,), found
    return statistics.median(took)


@click.command()
@click.option("--samples", type=click.IntRange(20), default=200, show_default=True)
@click.option("--skus", type=click.IntRange(10), default=200, show_default=True)
@click.option("--bulk-rows", type=click.IntRange(100), default=10_000, show_default=True)
@click.option(
    "--console",
    is_flag=True,
    help="Only the web console's page times, at 1,000,000 SKUs and 100,000 waiting jobs.",
)
def main(samples: int, skus: int, bulk_rows: int, console: bool) -> None:
    """Measure the pipeline and print a Markdown report."""
    admin = os.environ.get("BENCH_DATABASE_URL", LOCAL_DSN)
    if console:
        from dev import bench_console

        click.echo("\n".join(bench_console.report(admin)))
        return
    template = sandbox.create_database(admin, prefix="collage_bench_template")
    migrate.apply(template)
    template_name = str(psycopg.conninfo.conninfo_to_dict(template)["dbname"])
    session = sandbox.start_pgbouncer(admin, mode="session")
    transaction = sandbox.start_pgbouncer(admin, mode="transaction")
    made: list[str] = [template]
    report: list[str] = []

    def fresh() -> str:
        dsn = sandbox.create_database(admin, template=template_name, prefix="collage_bench")
        made.append(dsn)
        return dsn

    try:
        with s3_process() as (endpoint, s3_pid):
            report.append(
                "| pickup (ms) | samples | commit to fetch p50 | p99 |"
                " commit to outcome written p50 | p99 |"
            )
            report.append("|---|---|---|---|---|---|")
            for label, via_bouncer, n in (
                ("direct, LISTEN/NOTIFY", False, samples),
                ("PgBouncer (session LISTEN, transaction queries)", True, samples),
            ):
                dsn = fresh()
                urls = (
                    (transaction.for_dsn(dsn), session.for_dsn(dsn)) if via_bouncer else (dsn, dsn)
                )
                with workers(1, db_url=urls[0], session_url=urls[1], endpoint=endpoint):
                    fetched, finished = pickup_samples(dsn, n)
                report.append(
                    f"| {label} | {n} | {statistics.median(fetched):.1f} |"
                    f" {percentile(fetched, 0.99):.1f} | {statistics.median(finished):.1f} |"
                    f" {percentile(finished, 0.99):.1f} |"
                )
                click.echo(report[-1], err=True)

            # End to end, one 4-photo SKU at a time: commit to 'collage_ready'.
            dsn = fresh()
            four = seed_photos(endpoint, 10, sizes=[(1600, 2400)] * 3 + [(2000, 3000)])
            e2e = []
            # Through a proxy that counts the worker's round trips to PostgreSQL.
            with (
                pgwire.counting(dsn) as counter,
                workers(
                    1,
                    db_url=counter.dsn(dsn),
                    session_url=counter.dsn(dsn),
                    endpoint=endpoint,
                    concurrency=2,
                ),
            ):
                before = counter.snapshot()
                for urls in four:
                    committed = insert_uploaded(dsn, [urls])
                    settle(dsn, timeout=60)
                    with psycopg.connect(dsn) as conn:
                        done = conn.execute(
                            "SELECT extract(epoch FROM max(updated_at)) FROM raw_products"
                            " WHERE image_status = 'collage_ready'"
                        ).fetchone()
                    e2e.append(float(done[0]) - committed)
                trips = (counter.snapshot().round_trips - before.round_trips) / len(four)
            pure_four = pure_collage_seconds(endpoint, four)
            report.append("")
            report.append("| end to end, 4 photos (3x 1600x2400 + 2000x3000) | median s |")
            report.append("|---|---|")
            report.append(f"| commit to collage_ready | {statistics.median(e2e):.2f} |")
            report.append(f"| round trips to PostgreSQL per SKU (all the worker's) | {trips:.1f} |")
            report.append(
                f"| imaging.build_collage alone (CPU) | {statistics.median(pure_four):.2f} |"
            )
            click.echo("\n".join(report[-5:]), err=True)

            # Throughput: `skus` SKUs, two workers, against the pure collage time.
            dsn = fresh()
            many = seed_photos(endpoint, skus, sizes=[(1200, 1800), (1000, 1500), (1200, 1800)])
            pure = pure_collage_seconds(endpoint, many)
            floors = floor_seconds(endpoint, many)
            with workers(
                2,
                db_url=transaction.for_dsn(dsn),
                session_url=session.for_dsn(dsn),
                endpoint=endpoint,
                concurrency=2,  # WORKER_CONCURRENCY's default: downloads overlap builds
            ) as procs:
                # Warm: the build children have started and imported before the count begins.
                time.sleep(3)
                idle = [tree_cpu_s(p.pid) for p in procs]
                s3_before, pg_before = process_cpu_s(s3_pid), postgres_cpu_s()
                start = time.time()
                insert_uploaded(dsn, many)
                settle(dsn, timeout=1800)
                wall = time.time() - start
                used = [tree_cpu_s(p.pid) for p in procs]
                s3_cpu = process_cpu_s(s3_pid) - s3_before
                pg_cpu = postgres_cpu_s() - pg_before
            own = sum(u[0] - i[0] for u, i in zip(used, idle, strict=True))
            children = sum(u[1] - i[1] for u, i in zip(used, idle, strict=True))
            ideal = sum(pure) / 2
            report.append("")
            report.append(f"| {skus} SKUs, 2 workers, through PgBouncer | seconds |")
            report.append("|---|---|")
            report.append(f"| wall clock | {wall:.1f} |")
            report.append(f"| sum of pure collage CPU / 2 cores | {ideal:.1f} |")
            report.append(f"| overhead (queue, database, S3) | {100 * (wall / ideal - 1):.0f} % |")
            report.append("")
            report.append("| CPU seconds in that run | seconds | vs pure collage CPU |")
            report.append("|---|---|---|")
            busy = own + children
            report.append(
                f"| the floor (decode each photo once, encode the canvas once) | {sum(floors):.1f}"
                f" | {sum(floors) / sum(pure):.2f}x |"
            )
            for label, value in (
                ("pure collage CPU (imaging.build_collage)", sum(pure)),
                ("build children (the collages, their pipes)", children),
                ("worker processes themselves (queue, database, S3, pipes)", own),
                ("S3 test server (moto, in Python)", s3_cpu),
                ("PostgreSQL (all processes)", pg_cpu),
            ):
                report.append(f"| {label} | {value:.1f} | {value / sum(pure):.2f}x |")
            report.append(
                f"| **worker process tree (worker + build children) / the floor** |"
                f" **{busy / sum(floors):.2f}x** | |"
            )
            report.append(f"| build children / the floor | {children / sum(floors):.2f}x | |")
            click.echo("\n".join(report[-15:]), err=True)

            dsn = fresh()
            without = bulk_update_seconds(dsn, bulk_rows, trigger=False)
            with_trigger = bulk_update_seconds(dsn, bulk_rows, trigger=True)
            report.append("")
            report.append(f"| UPDATE of {bulk_rows:,} rows to 'uploaded' | seconds | per row |")
            report.append("|---|---|---|")
            report.append(
                f"| without the trigger | {without:.2f} | {without / bulk_rows * 1e6:.0f} µs |"
            )
            report.append(
                f"| with the trigger (one job each) | {with_trigger:.2f} |"
                f" {with_trigger / bulk_rows * 1e6:.0f} µs |"
            )
            dsn = fresh()
            ahead, waited_s, fair_row = fairness(dsn, endpoint, backlog=5000)
            fetch_ms = paused_fetch_ms(fresh(), bulk_rows)
            report.append("")
            report.append("| fair shares: 5,000 SKUs of one brand waiting, then one of another | |")
            report.append("|---|---|")
            report.append(f"| bulk builds that went before the newcomer | {ahead} |")
            report.append(f"| newcomer, upload to collage_ready | {waited_s:.2f} s |")
            report.append(
                "| the 5,000-row UPDATE, per row (trigger with fair tags) |"
                f" {fair_row * 1e6:.0f} µs |"
            )
            report.append(
                f"| a worker's fetch with {bulk_rows:,} paused builds and nothing due |"
                f" {fetch_ms:.1f} ms |"
            )
            click.echo("\n".join(report[-6:]), err=True)
    finally:
        session.stop()
        transaction.stop()
        for dsn in reversed(made):
            sandbox.drop_database(admin, dsn)
    click.echo("\n".join(report))


if __name__ == "__main__":
    main()
