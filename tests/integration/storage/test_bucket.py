"""The bucket client against a real S3-compatible server over HTTP."""

from __future__ import annotations

import pytest

from collage.errors import ForeignUrl, OriginalMissing, TooLarge
from collage.settings import Settings
from collage.storage import Bucket, collage_key
from dev.s3proxy import Fault


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


def all_users_read(s3, bucket: str, key: str) -> bool:
    grants = s3.get_object_acl(Bucket=bucket, Key=key)["Grants"]
    return any(
        g["Grantee"].get("URI", "").endswith("/AllUsers") and g["Permission"] == "READ"
        for g in grants
    )


@pytest.mark.parametrize(("acl", "public"), [("public-read", True), (None, False)])
def test_collages_carry_the_acl_and_the_headers_asked_for(
    settings: Settings, s3, acl: str | None, public: bool
) -> None:
    bucket = Bucket.from_settings(
        settings.replace(s3_collage_acl=acl, s3_collage_cache_control="max-age=60")
    )
    bucket.put_jpeg("collages/b/2.jpg", b"jpeg")
    head = s3.head_object(Bucket=settings.s3_bucket, Key="collages/b/2.jpg")
    assert (head["ContentType"], head["CacheControl"]) == ("image/jpeg", "max-age=60")
    assert all_users_read(s3, settings.s3_bucket, "collages/b/2.jpg") is public


def test_a_bucket_that_refuses_acls_gets_its_collages_without_one(
    settings: Settings, s3, faulty_s3
) -> None:
    def refuse_acls(method: str, path: str) -> Fault | None:
        acl = proxy.requests[-1][2].get("x-amz-acl") if proxy.requests else None
        if method == "PUT" and acl:
            return Fault(status=400, code="AccessControlListNotSupported")
        return None

    proxy = faulty_s3(refuse_acls)
    bucket = Bucket.from_settings(settings.replace(s3_endpoint=proxy.endpoint))
    bucket.put_jpeg("collages/b/3.jpg", b"one")
    bucket.put_jpeg("collages/b/4.jpg", b"two")
    puts = [headers.get("x-amz-acl") for method, _, headers in proxy.requests if method == "PUT"]
    assert puts == ["public-read", None, None]  # refused once; then never asked again
    assert s3.get_object(Bucket=settings.s3_bucket, Key="collages/b/4.jpg")["Body"].read() == b"two"
    assert not all_users_read(s3, settings.s3_bucket, "collages/b/3.jpg")


def test_bodies_are_checksummed_only_where_nothing_else_guards_them(settings: Settings) -> None:
    from dev.s3proxy import FaultyProxy

    proxy = FaultyProxy(settings.s3_endpoint, lambda method, path: None)
    try:
        bucket = Bucket.from_settings(settings.replace(s3_endpoint=proxy.endpoint))
        bucket.put_jpeg("collages/b/3.jpg", b"jpeg")
        assert bucket.get("collages/b/3.jpg") == b"jpeg"
    finally:
        proxy.close()
    (put,) = [h for method, _, h in proxy.requests if method == "PUT"]
    (get,) = [h for method, _, h in proxy.requests if method == "GET"]
    lowered = [{k.lower(): v for k, v in h.items()} for h in (put, get)]
    # No CRC32 either way, asked or sent.
    assert not any(
        k.startswith("x-amz-checksum") or k == "x-amz-sdk-checksum-algorithm"
        for h in lowered
        for k in h
    ), lowered
    # Plain HTTP: the signature covers the body (a SHA-256 of it, not UNSIGNED-PAYLOAD).
    assert lowered[0]["x-amz-content-sha256"] != "UNSIGNED-PAYLOAD"
    tls = Bucket.from_settings(settings.replace(s3_endpoint="https://s3.example.com"))
    assert tls.client.meta.config.s3["payload_signing_enabled"] is False
