"""Bad input through S3: each kind ends in 'error' with a clear message, the rest still build."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from psycopg.types.json import Jsonb

from dev.photos import jpeg, solid_jpeg
from tests.support.db import Db
from tests.support.pictures import RED, png_header_only
from tests.support.skus import add_products, statuses, wait_settled
from tests.support.workers import Rig

# --- bad input through S3 -------------------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    name: str
    urls: object
    expected: str
    brand: str = "faults"
    external_id: str = ""


def _bad_inputs(bucket: str, endpoint: str) -> tuple[dict[str, bytes], list[Bad]]:
    good = jpeg(40, 50, seed=7)
    photo = solid_jpeg(30, 40, RED)
    truncated = jpeg(300, 300, seed=3)
    corrupt_header = bytearray(jpeg(60, 60, seed=4))
    corrupt_header[2:40] = b"\x00" * 38
    photos = {
        "bad/ok.jpg": photo,
        "bad/empty.jpg": b"",
        "bad/truncated.jpg": truncated[: len(truncated) // 2],
        "bad/html.jpg": b"<html><body>502 Bad Gateway</body></html>",
        "bad/text.jpg": b"this is not a photo\n",
        "bad/corrupt-header.jpg": bytes(corrupt_header),
        "bad/bomb.png": png_header_only(20_000, 20_000),
        "bad/tall.jpg": solid_jpeg(10, 4000, RED),
        "bad/wide.jpg": solid_jpeg(4000, 100, RED),
        "bad/thin.jpg": solid_jpeg(1, 20_000, RED),
        "bad/block.jpg": solid_jpeg(650, 1000, RED),
        "bad/good.jpg": good,
    }

    def s3u(key: str) -> str:
        return f"s3://{bucket}/originals/{key}"

    ok = s3u("bad/ok.jpg")
    cases = [
        Bad("zero bytes", [ok, s3u("bad/empty.jpg")], "photo 2 (originals/bad/empty.jpg) is not a"),
        Bad("truncated", [s3u("bad/truncated.jpg")], "bad/truncated.jpg) cannot be"),
        Bad("html page", [ok, s3u("bad/html.jpg")], "bad/html.jpg) is not a"),
        Bad("text file", [s3u("bad/text.jpg")], "bad/text.jpg) is not a"),
        Bad("corrupt header", [s3u("bad/corrupt-header.jpg")], "bad/corrupt-header.jpg)"),
        Bad("decompression bomb", [s3u("bad/bomb.png")], "400,000,000 pixels"),
        Bad(
            "too wide for JPEG",
            [s3u("bad/tall.jpg"), s3u("bad/wide.jpg")],
            "px wide (2 photos scaled to 4,000 px high); JPEG allows at most 65,500 px",
        ),
        Bad(
            "over the canvas budget",
            [s3u("bad/thin.jpg"), s3u("bad/block.jpg")],
            "the collage would be 13,001 x 20,000 px",
        ),
        Bad("empty list", [], "image_urls is empty"),
        Bad("JSON null", "json-null", "image_urls is empty"),
        Bad("SQL NULL", None, "image_urls is empty"),
        Bad("an object", {"front": ok}, "not a list"),
        Bad("a string", ok, "not a list"),
        Bad("numbers", [1, 2], "image_urls holds 1, not a URL"),
        Bad("nested list", [[ok]], "not a URL"),
        Bad("null entry", [ok, None], "image_urls holds None, not a URL"),
        Bad("a thousand photos", [ok] * 1000, "image_urls has 1000 photos; at most 40 fit"),
        Bad("another host", ["https://evil.example.com/x.jpg"], "https://evil.example.com/x.jpg"),
        Bad("another bucket", ["s3://someone-else/x.jpg"], "is in bucket 'someone-else'"),
        Bad("another bucket, path style", [f"{endpoint}/someone-else/x.jpg"], "not in bucket"),
        Bad("dot-dot", [s3u("bad/../secret.jpg")], "does not name a plain object key"),
        Bad("encoded dot-dot", [s3u("bad/%2e%2e/x.jpg")], "plain object key"),
        Bad(
            "a collage as a photo", [f"s3://{bucket}/collages/faults/x.jpg"], "not under originals/"
        ),
        Bad("a private key", [f"s3://{bucket}/private/keys.jpg"], "not under originals/"),
        Bad("malformed URL", ["http://[::1/x.jpg"], "is not a valid URL"),
        Bad("file URL", ["file:///etc/passwd"], "is not an s3:// or http(s):// URL"),
        Bad("unsafe brand", [ok], "brand '../etc' cannot be used", brand="../etc"),
        Bad("brand with slash", [ok], "brand 'a/b' cannot be used", brand="a/b"),
        Bad("empty brand", [ok], "brand is empty", brand=""),
        Bad("dot-dot id", [ok], "external_id '..' cannot be used", external_id=".."),
        Bad("id with slash", [ok], "external_id 'x/../../y' cannot", external_id="x/../../y"),
        Bad("id with newline", [ok], "external_id 'a\\nb' cannot", external_id="a\nb"),
        Bad(
            "id with a bidi override",
            [ok],
            "external_id 'AB\\u202egpj' cannot",
            external_id="AB\u202egpj",
        ),
        Bad("brand with a line separator", [ok], "brand 'za\\u2028ra' cannot", brand="za\u2028ra"),
        Bad("a tab inside a URL", [s3u("bad/o\tk.jpg")], "holds control characters"),
        Bad(
            "a 2 MB URL",
            ["https://evil.example.com/" + "a" * 2_000_000],
            "(1,999,725 more characters) is not on",
        ),
    ]
    return photos, cases


@pytest.mark.slow
def test_bad_input_ends_in_error_with_a_clear_message_and_spares_the_rest_of_the_batch(
    rig: Rig, fdb: Db
) -> None:
    photos, cases = _bad_inputs(rig.bucket, rig.s3_endpoint)
    rig.upload(photos)
    good_urls = [f"s3://{rig.bucket}/originals/bad/{name}" for name in ("good.jpg", "ok.jpg")]
    rig.spawn("-c", "2")
    goods = [f"GOOD-{n}" for n in range(5)]
    bads = [case.external_id or f"BAD-{n}" for n, case in enumerate(cases)]
    # Bad and good SKUs interleaved in one transaction, as one scraper batch.
    urls: list[object] = []
    for case in cases:
        urls.append(
            None if case.urls is None else Jsonb(None) if case.urls == "json-null" else case.urls
        )
    ids = add_products(
        fdb,
        [*urls, *([good_urls] * len(goods))],
        brands=[*(c.brand for c in cases), *(["faults"] * len(goods))],
        external_ids=[*bads, *goods],
    )
    wait_settled(fdb, ids, timeout=60, what="the batch of bad and good SKUs")
    state = statuses(fdb, ids)
    problems = []
    for case, product_id in zip(cases, ids, strict=False):
        status, message, url = state[product_id]
        if status != "error" or url is not None or case.expected not in (message or ""):
            problems.append(f"{case.name}: {status} {message!r}")
        elif "\n" in message or "Traceback" in message or len(message) > 600:
            problems.append(f"{case.name}: message unfit for an operator: {message!r}")
    assert problems == []
    for product_id in ids[len(cases) :]:
        assert state[product_id][:2] == ("collage_ready", None)
    # Each bad SKU failed once, at once: permanent, never retried.
    attempts = fdb.rows(
        "SELECT product_id, array_agg(outcome ORDER BY id) FROM collage_outcomes"
        " WHERE product_id = ANY(%s) GROUP BY product_id",
        [ids[: len(cases)]],
    )
    assert {tuple(a[1]) for a in attempts} == {("error",)} and len(attempts) == len(cases)
    # The ledger keeps the one line error_message keeps, however long the row's values.
    longest = fdb.value(
        "SELECT max(length(message)) FROM collage_outcomes WHERE product_id = ANY(%s)", [ids]
    )
    assert longest <= 600, longest
    # Nothing written anywhere but the good SKUs' collages.
    written = rig.keys() - {f"originals/{key}" for key in photos}
    assert written == {f"collages/faults/{g}.jpg" for g in goods}
    scratch = rig.folder / "scratch"
    # Nothing left in the scratch folder but the worker's own beat for `collage health`.
    assert not scratch.exists() or {p.suffix for p in scratch.rglob("*")} <= {".beat"}
    for name, message in sorted((c.name, state[i][1]) for c, i in zip(cases, ids, strict=False)):
        print(f"{name:>28}: {message}")
