"""S3: getting and putting objects with bounded waits and bounded sizes."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from collage.errors import OriginalMissing, Permanent, TooLarge, Transient
from collage.storage.keys import key_for_url, photo_keys

if TYPE_CHECKING:
    from collage.settings import Settings

logger = logging.getLogger(__name__)

# A product photo is a few MB; anything far beyond is not a photo we should hold in memory.
MAX_OBJECT_BYTES = 80 * 1024 * 1024
CHUNK_BYTES = 1024 * 1024  # how often a download checks its caps and whether to go on
CONNECT_TIMEOUT_S = 5
READ_TIMEOUT_S = 20
MAX_ATTEMPTS = 3
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
_ACL_REFUSED = {"AccessControlListNotSupported", "NotImplemented"}


@dataclass(frozen=True, kw_only=True)
class Bucket:
    """Where originals are read and collages written, and how outsiders address it."""

    client: Any
    name: str
    endpoint: str
    public_url: str
    originals_prefix: str = "originals/"
    collage_acl: str | None = None  # a canned ACL for collages; None: the bucket's own rules
    cache_control: str = "no-cache"
    # Set once the bucket has refused an ACL: collages are written without one from then on.
    acl_refused: list[str] = field(default_factory=list, compare=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> Bucket:
        """Build a client that fails fast: short connect timeout, bounded reads, few retries."""
        client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint,
            aws_access_key_id=settings.s3_access_key,
            aws_secret_access_key=settings.s3_secret_key,
            region_name=settings.s3_region,
            config=Config(
                s3={"addressing_style": "path"},
                # A stalled S3 costs a job a few connect and read timeouts, then a retry later.
                connect_timeout=CONNECT_TIMEOUT_S,
                read_timeout=READ_TIMEOUT_S,
                retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS},
                max_pool_connections=32,
            ),
        )
        return cls(
            client=client,
            name=settings.s3_bucket,
            endpoint=settings.s3_endpoint,
            public_url=settings.s3_public_url,
            originals_prefix=settings.s3_originals_prefix,
            collage_acl=settings.s3_collage_acl,
            cache_control=settings.s3_collage_cache_control,
        )

    def key_for(self, url: object) -> str:
        """Map a photo URL from a row to a key in this bucket; refuse anything else."""
        return key_for_url(url, **self._addresses())

    def photo_keys(self, image_urls: object) -> list[str]:
        """Check a row's image_urls and map every URL to a key, before anything is fetched."""
        return photo_keys(image_urls, **self._addresses())

    def _addresses(self) -> dict[str, str]:
        """How rows may address this bucket's originals."""
        return {
            "bucket": self.name,
            "endpoint": self.endpoint,
            "public_url": self.public_url,
            "prefix": self.originals_prefix,
        }

    def get(
        self, key: str, *, max_bytes: int = MAX_OBJECT_BYTES, budget: ByteBudget | None = None
    ) -> bytes:
        """Download one object in chunks, stopping at `max_bytes` whatever the headers claim.

        `budget` is shared by the downloads of one SKU: each chunk is taken from it, and once
        it is spent or stopped (another download failed) this one stops at its next chunk.
        """
        try:
            response = self.client.get_object(Bucket=self.name, Key=key)
            body = response["Body"]
            try:
                declared = int(response.get("ContentLength") or 0)
                if declared > max_bytes:
                    raise TooLarge(f"{key} is {declared:,} bytes; the limit is {max_bytes:,}")
                return _read_capped(body, key=key, max_bytes=max_bytes, budget=budget)
            finally:
                body.close()
        except ClientError as exc:
            if _error_code(exc) in _MISSING_CODES:
                raise OriginalMissing(f"original not found in bucket {self.name}: {key}") from exc
            raise _transient_or_permanent(exc, f"get {key}") from exc
        except BotoCoreError as exc:
            raise Transient(f"S3 unavailable while getting {key}: {exc}") from exc

    def put_jpeg(self, key: str, data: bytes) -> None:
        """Upload a collage with its ACL and the headers browsers and CDNs need.

        A bucket whose ACLs are disabled (S3's default for new buckets since 2023) refuses any
        ACL: the collage is then written without one, and its policy decides who reads it.
        """
        headers = {"ContentType": "image/jpeg", "CacheControl": self.cache_control}
        if self.collage_acl and not self.acl_refused:
            headers["ACL"] = self.collage_acl
        try:
            self.client.put_object(Bucket=self.name, Key=key, Body=data, **headers)
        except ClientError as exc:
            if "ACL" in headers and _error_code(exc) in _ACL_REFUSED:
                self.acl_refused.append(_error_code(exc))
                logger.warning(
                    "the bucket refuses object ACLs; collages are written without one"
                    " (set S3_COLLAGE_ACL=none to say so)",
                    extra={"action": "upload", "acl": self.collage_acl, "code": _error_code(exc)},
                )
                return self.put_jpeg(key, data)
            raise _transient_or_permanent(exc, f"put {key}") from exc
        except BotoCoreError as exc:
            raise Transient(f"S3 unavailable while putting {key}: {exc}") from exc

    def public_url_for(self, key: str) -> str:
        """The URL written to collage_url, percent-encoded (an external_id may hold '#' or ' ')."""
        return f"{self.public_url}/{quote(key, safe='/')}"

    def ping(self) -> None:
        """Raise unless the bucket answers (for `collage health`)."""
        self.client.head_bucket(Bucket=self.name)


class ByteBudget:
    """The bytes one SKU's downloads may still hold, shared by the threads that download them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._left = limit
        self._lock = threading.Lock()
        self._stopped = threading.Event()

    def take(self, size: int) -> None:
        """Count a chunk; raise when the SKU is over its budget or its build has given up."""
        if self._stopped.is_set():
            raise Abandoned("the build stopped this download")
        with self._lock:
            self._left -= size
            if self._left < 0:
                self._stopped.set()
                raise TooLarge(f"the photos add up to over {self.limit:,} bytes")

    def stop(self) -> None:
        """Make every download still running stop at its next chunk."""
        self._stopped.set()


class Abandoned(Exception):
    """A download stopped because its SKU's build gave up on it; nobody waits for its result."""


def _read_capped(body: Any, *, key: str, max_bytes: int, budget: ByteBudget | None) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := body.read(CHUNK_BYTES):
        size += len(chunk)
        if size > max_bytes:
            raise TooLarge(f"{key} is larger than the limit of {max_bytes:,} bytes")
        if budget is not None:
            budget.take(len(chunk))
        chunks.append(chunk)
    return b"".join(chunks)


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _transient_or_permanent(exc: ClientError, what: str) -> Exception:
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    code = _error_code(exc)
    if status >= 500 or status == 429 or code in {"SlowDown", "RequestTimeout", "Throttling"}:
        return Transient(f"S3 answered {status} {code} to {what}")
    return Permanent(f"S3 refused {what}: {status} {code}")
