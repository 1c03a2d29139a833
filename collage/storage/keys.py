"""Which object a row's URL may name, and where a SKU's collage goes: pure, refused Permanently.

Nothing here touches the network: a URL is mapped to a key of our bucket, or refused, before
anything is fetched.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from collage.constants import COLLAGE_PREFIX
from collage.errors import BadImageUrls, ForeignUrl, NoPhotos, UnsafeKey
from collage.text import shown, unsafe

MAX_PHOTOS = 40  # 40 photos at the narrowest plausible width already pass JPEG's width limit
_BACKSLASH = "\\"
_JSON_TYPES = {dict: "object", str: "string", int: "number", float: "number", bool: "boolean"}


def photo_keys(
    image_urls: object, *, bucket: str, endpoint: str, public_url: str, prefix: str
) -> list[str]:
    """Check image_urls and map every URL to a key in our bucket, before anything is fetched."""
    if image_urls is None or image_urls == []:
        raise NoPhotos("image_urls is empty")
    if not isinstance(image_urls, list):
        kind = _JSON_TYPES.get(type(image_urls), type(image_urls).__name__)
        raise BadImageUrls(f"image_urls is a JSON {kind}, not a list")
    if len(image_urls) > MAX_PHOTOS:
        raise BadImageUrls(f"image_urls has {len(image_urls)} photos; at most {MAX_PHOTOS} fit")
    return [
        key_for_url(url, bucket=bucket, endpoint=endpoint, public_url=public_url, prefix=prefix)
        for url in image_urls
    ]


def key_for_url(
    url: object, *, bucket: str, endpoint: str, public_url: str, prefix: str = "originals/"
) -> str:
    """Map a photo URL to a key under `prefix` in `bucket`; refuse anything else, Permanently.

    s3://, virtual-hosted, path-style and public-URL forms are understood.
    """
    if not isinstance(url, str) or not url.strip():
        raise BadImageUrls(f"image_urls holds {shown(repr(url))}, not a URL")
    if unsafe(url.strip()):
        # urlsplit would drop a tab or a newline without a word, and fetch another object.
        raise BadImageUrls(f"'{shown(url)}' holds control characters; no URL does")
    try:
        key = _key_in_bucket(url.strip(), bucket=bucket, endpoint=endpoint, public_url=public_url)
    except ValueError as exc:  # urlsplit refuses some malformed URLs, e.g. an unclosed [
        raise BadImageUrls(f"'{shown(url)}' is not a valid URL: {exc}") from None
    if not key.startswith(prefix) or key.startswith(f"{COLLAGE_PREFIX}/"):
        raise ForeignUrl(f"{shown(url)} is not under {prefix} in bucket {bucket!r}")
    return key


def _key_in_bucket(full_url: str, *, bucket: str, endpoint: str, public_url: str) -> str:
    url = shown(full_url)  # as messages name it
    parts = urlsplit(full_url)
    endpoint_parts = urlsplit(endpoint)
    public_parts = urlsplit(public_url)
    host = (parts.netloc or "").lower()
    path = parts.path
    if parts.scheme == "s3":
        if host != bucket.lower():
            raise ForeignUrl(f"{url} is in bucket {parts.netloc!r}, not {bucket!r}")
        return _checked_key(path, url)
    if parts.scheme not in {"http", "https"} or parts.username or parts.password:
        raise ForeignUrl(f"{url} is not an s3:// or http(s):// URL of bucket {bucket!r}")
    public_prefix = public_parts.path.rstrip("/") + "/"
    if host == public_parts.netloc.lower() and path.startswith(public_prefix):
        return _checked_key(path[len(public_prefix) :], url)
    if host == f"{bucket}.{endpoint_parts.netloc}".lower():
        return _checked_key(path, url)
    if host == endpoint_parts.netloc.lower():
        bucket_prefix = f"/{bucket}/"
        if path.startswith(bucket_prefix):
            return _checked_key(path[len(bucket_prefix) :], url)
        raise ForeignUrl(f"{url} is not in bucket {bucket!r}")
    hosts = dict.fromkeys(
        [endpoint_parts.netloc, f"{bucket}.{endpoint_parts.netloc}", public_parts.netloc]
    )
    raise ForeignUrl(f"{url} is not on {' or '.join(hosts)}")


def _checked_key(path: str, url: str) -> str:
    key = unquote(path.lstrip("/"))
    segments = key.split("/")
    if not key or any(s in {"", ".", ".."} for s in segments) or _BACKSLASH in key or unsafe(key):
        raise ForeignUrl(f"{url!r} does not name a plain object key")
    return key


def collage_key(brand: object, external_id: object) -> str:
    """Build collages/{brand}/{external_id}.jpg, refusing values that would escape that place."""
    for field, value in (("brand", brand), ("external_id", external_id)):
        if not isinstance(value, str) or not value.strip():
            raise UnsafeKey(f"{field} is empty; cannot name the collage")
        if "/" in value or value in {".", ".."} or _BACKSLASH in value or unsafe(value):
            raise UnsafeKey(f"{field} '{shown(value)}' cannot be used in an object key")
    return f"{COLLAGE_PREFIX}/{brand}/{external_id}.jpg"
