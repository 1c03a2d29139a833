from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collage.errors import BadImageUrls, ForeignUrl, OriginalMissing, TooLarge, UnsafeKey
from collage.settings import Settings
from collage.storage import Bucket, collage_key, key_for_url

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
        ("s3://unde-images/a\x00b.jpg", ForeignUrl),
        ("", BadImageUrls),
        (None, BadImageUrls),
        (42, BadImageUrls),
        ({"url": "x"}, BadImageUrls),
    ],
)
def test_anything_else_is_refused(url: object, error: type[Exception]) -> None:
    with pytest.raises(error) as info:
        key_for_url(url, **WHERE)
    assert "\n" not in str(info.value)


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
    [("", "1"), ("zara", ""), ("a/b", "1"), ("..", "1"), ("zara", "x/../../y"), ("z\nara", "1")],
)
def test_unsafe_collage_keys_are_refused(brand: str, external_id: str) -> None:
    with pytest.raises(UnsafeKey):
        collage_key(brand, external_id)


def test_collage_key_keeps_ordinary_names() -> None:
    assert collage_key("Zara Home", "AB-123_4") == "collages/Zara Home/AB-123_4.jpg"


def test_get_and_put_through_a_real_s3_server(settings: Settings, s3) -> None:
    bucket = Bucket.from_settings(settings)
    s3.put_object(Bucket=settings.s3_bucket, Key="originals/a.jpg", Body=b"photo")
    assert bucket.get("originals/a.jpg") == b"photo"
    bucket.put_jpeg("collages/b/1.jpg", b"jpeg")
    head = s3.head_object(Bucket=settings.s3_bucket, Key="collages/b/1.jpg")
    assert head["ContentType"] == "image/jpeg"
    bucket.ping()


def test_a_missing_object_is_permanent_and_names_the_key(settings: Settings) -> None:
    with pytest.raises(OriginalMissing, match=r"originals/none\.jpg"):
        Bucket.from_settings(settings).get("originals/none.jpg")


def test_an_oversized_object_is_refused_before_its_body_is_read(settings: Settings, s3) -> None:
    s3.put_object(Bucket=settings.s3_bucket, Key="big.jpg", Body=b"x" * 2048)
    with pytest.raises(TooLarge, match="2,048 bytes"):
        Bucket.from_settings(settings).get("big.jpg", max_bytes=1024)


def test_public_urls_are_percent_encoded_and_map_back_to_the_key(settings: Settings) -> None:
    bucket = Bucket.from_settings(settings)
    key = collage_key("Zara Home", "AB#12 ?x")
    url = bucket.public_url_for(key)
    assert url == f"{settings.s3_public_url}/collages/Zara%20Home/AB%2312%20%3Fx.jpg"
    assert bucket.key_for(url) == key
