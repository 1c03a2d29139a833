from __future__ import annotations

import string
from urllib.parse import quote

import hypothesis
import pytest
from hypothesis import given
from hypothesis import strategies as st

from collage import storage
from collage.errors import (
    BadImageUrls,
    ForeignUrl,
    Permanent,
    UnsafeKey,
)
from collage.storage import collage_key, key_for_url

WHERE = {
    "bucket": "unde-images",
    "endpoint": "https://fsn1.your-objectstorage.com",
    "public_url": "https://cdn.example.com/media",
}


@pytest.mark.parametrize(
    "url",
    [
        "s3://unde-images/originals/zara/123/1.jpg",
        "https://unde-images.fsn1.your-objectstorage.com/originals/zara/123/1.jpg",
        "https://fsn1.your-objectstorage.com/unde-images/originals/zara/123/1.jpg",
        "https://cdn.example.com/media/originals/zara/123/1.jpg",
        "https://fsn1.your-objectstorage.com/unde-images/originals/zara/123/1.jpg?X-Amz-Expires=60",
    ],
)
def test_every_accepted_form_maps_to_the_same_key(url: str) -> None:
    assert key_for_url(url, **WHERE) == "originals/zara/123/1.jpg"


def test_percent_encoding_is_decoded() -> None:
    url = "s3://unde-images/originals/a%20b/%C3%A9.jpg"
    assert key_for_url(url, **WHERE) == "originals/a b/é.jpg"


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("https://evil.example.com/unde-images/a.jpg", ForeignUrl),
        ("s3://other-bucket/a.jpg", ForeignUrl),
        ("https://other.fsn1.your-objectstorage.com/a.jpg", ForeignUrl),
        ("https://fsn1.your-objectstorage.com/other-bucket/a.jpg", ForeignUrl),
        ("https://user:pw@fsn1.your-objectstorage.com/unde-images/a.jpg", ForeignUrl),
        ("file:///etc/passwd", ForeignUrl),
        ("http://169.254.169.254/latest/meta-data", ForeignUrl),
        ("s3://unde-images/a/../../etc/passwd", ForeignUrl),
        ("s3://unde-images/a/%2e%2e/b.jpg", ForeignUrl),
        ("s3://unde-images/", ForeignUrl),
        ("s3://unde-images/a%00b.jpg", ForeignUrl),
        ("s3://unde-images/originals/a%E2%80%AEgpj.exe", ForeignUrl),
        # urlsplit drops a tab or a newline silently, and would fetch originals/ab.jpg.
        ("s3://unde-images/originals/a\x00b.jpg", BadImageUrls),
        ("s3://unde-images/originals/a\tb.jpg", BadImageUrls),
        ("s3://unde-images/origi\nnals/ab.jpg", BadImageUrls),
        ("s3://unde-images/originals/a\u2028b.jpg", BadImageUrls),
        ("", BadImageUrls),
        (None, BadImageUrls),
        (42, BadImageUrls),
        ({"url": "x"}, BadImageUrls),
    ],
)
def test_anything_else_is_refused(url: object, error: type[Exception]) -> None:
    with pytest.raises(error) as info:
        key_for_url(url, **WHERE)
    assert "\n" not in str(info.value) and "\t" not in str(info.value)


def test_a_huge_url_is_named_in_a_short_message() -> None:
    url = "https://evil.example.com/" + "a" * 2_000_000
    with pytest.raises(ForeignUrl) as info:
        key_for_url(url, **WHERE)
    assert len(info.value.message) < 500 and "more characters" in info.value.message


@given(st.one_of(st.text(), st.none(), st.integers(), st.lists(st.text(), max_size=2)))
def test_fuzz_any_value_maps_inside_the_bucket_or_is_refused(url: object) -> None:
    try:
        key = key_for_url(url, **WHERE)
    except (ForeignUrl, BadImageUrls):
        return
    assert key and ".." not in key.split("/") and not key.startswith("/")


@given(
    st.text(alphabet=string.printable + "éü/\\.", min_size=0, max_size=30),
    st.text(alphabet=string.printable + "éü/\\.", min_size=0, max_size=30),
)
def test_fuzz_collage_key_stays_in_its_folder(brand: str, external_id: str) -> None:
    try:
        key = collage_key(brand, external_id)
    except UnsafeKey:
        return
    parts = key.split("/")
    assert len(parts) == 3 and parts[0] == "collages" and parts[2].endswith(".jpg")
    assert ".." not in parts[1:2] and parts[1] == brand


@pytest.mark.parametrize(
    ("brand", "external_id"),
    [
        ("", "1"),
        ("zara", ""),
        ("a/b", "1"),
        ("..", "1"),
        ("zara", "x/../../y"),
        ("z\nara", "1"),
        # Unicode's own controls: a bidi override, line and paragraph separators, NEL.
        ("zara", "AB\u202egpj.exe"),
        ("zara\u2028", "1"),
        ("zara", "1\u2029"),
        ("za\x85ra", "1"),
        ("zara", "a\u200bb"),
    ],
)
def test_unsafe_collage_keys_are_refused(brand: str, external_id: str) -> None:
    with pytest.raises(UnsafeKey):
        collage_key(brand, external_id)


def test_collage_key_keeps_ordinary_names() -> None:
    assert collage_key("Zara Home", "AB-123_4") == "collages/Zara Home/AB-123_4.jpg"


# --- properties over arbitrary text (Hypothesis) ---


_URL_TEXT = st.text(
    alphabet=st.sampled_from(string.ascii_letters + string.digits + "/.%-_:?#@\\ \n\x00~+"),
    max_size=40,
)


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(
    url=st.one_of(
        _URL_TEXT,
        _URL_TEXT.map(lambda s: f"s3://pics/{s}"),
        _URL_TEXT.map(lambda s: f"http://127.0.0.1:9000/pics/{s}"),
        _URL_TEXT.map(lambda s: f"https://cdn.example.com/p/{s}"),
        st.none(),
        st.integers(),
        st.lists(st.text(max_size=3), max_size=2),
    )
)
def test_any_image_url_maps_to_a_plain_key_in_the_bucket_or_is_refused(url: object) -> None:
    try:
        key = storage.key_for_url(
            url,
            bucket="pics",
            endpoint="http://127.0.0.1:9000",
            public_url="https://cdn.example.com/p",
        )
    except Permanent:
        return  # a Permanent error with a message; anything else would be a bug
    segments = key.split("/")
    assert key and all(s not in {"", ".", ".."} for s in segments)
    assert not any(c in key for c in "\\\x00\n")
    assert key.startswith("originals/") and not key.startswith("collages/")


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(
    url=st.one_of(
        st.text(),
        st.text().map(lambda s: f"s3://pics/{s}"),
        st.text().map(lambda s: f"http://{s}"),
        st.text().map(lambda s: f"https://cdn.example.com/p/{s}"),
        st.text().map(lambda s: f"http://[{s}/originals/x.jpg"),
    )
)
def test_arbitrary_text_is_a_key_under_the_prefix_or_a_permanent_error(url: str) -> None:
    try:
        key = storage.key_for_url(
            url,
            bucket="pics",
            endpoint="http://127.0.0.1:9000",
            public_url="https://cdn.example.com/p",
            prefix="originals/",
        )
    except Permanent as exc:
        # error_message is one line, and PostgreSQL's text cannot hold a NUL.
        assert exc.message and not any(c in exc.message for c in "\n\r\x00")
        return
    assert key.startswith("originals/")


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(
    key=st.lists(
        st.text(
            alphabet=string.ascii_letters + string.digits + "-_ .()+", min_size=1, max_size=12
        ).filter(lambda s: s.strip(".") != ""),
        min_size=1,
        max_size=4,
    ).map(lambda parts: "originals/" + "/".join(parts))
)
def test_a_plain_key_survives_every_url_form(key: str) -> None:
    kwargs = {
        "bucket": "pics",
        "endpoint": "http://127.0.0.1:9000",
        "public_url": "https://cdn.example.com/p",
    }
    for url in (
        f"s3://pics/{quote(key)}",
        f"http://127.0.0.1:9000/pics/{quote(key)}",
        f"https://cdn.example.com/p/{quote(key)}",
        f"http://pics.127.0.0.1:9000/{quote(key)}",
    ):
        assert storage.key_for_url(url, **kwargs) == key


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(brand=st.text(max_size=12), external_id=st.text(max_size=12))
def test_a_collage_key_stays_under_collages_or_is_refused(brand: str, external_id: str) -> None:
    try:
        key = storage.collage_key(brand, external_id)
    except UnsafeKey:
        return
    assert key == f"collages/{brand}/{external_id}.jpg"
    assert len(key.split("/")) == 3 and ".." not in key.split("/")[1:]
