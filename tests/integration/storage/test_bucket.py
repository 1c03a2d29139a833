"""The bucket client against a real S3-compatible server over HTTP."""

from __future__ import annotations

import pytest

from collage.errors import ForeignUrl, OriginalMissing, TooLarge
from collage.settings import Settings
from collage.storage import Bucket, collage_key


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
    with pytest.raises(ForeignUrl, match="is not under originals/"):
        bucket.key_for(url)  # a collage is never read as a photo
    photo = "originals/Zara Home/AB#12 ?x/1.jpg"
    assert bucket.key_for(bucket.public_url_for(photo)) == photo
