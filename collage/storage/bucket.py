"""S3: getting and putting objects with bounded waits and bounded sizes."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from collage.errors import OriginalMissing, Permanent, S3Refused, TooLarge, Transient
from collage.storage.budget import ByteBudget
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
# One object on its own (a preview, `collage make`): start to end, however it trickles.
OBJECT_DEADLINE_S = 60.0
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
_ACL_REFUSED = {"AccessControlListNotSupported", "NotImplemented"}
# S3 refusing the worker, not the SKU: a clock, keys or a policy to fix, then every SKU builds.
_WORKER_REFUSED = {
    "AccessDenied",
    "AllAccessDisabled",
    "ExpiredToken",
    "InvalidAccessKeyId",
    "InvalidToken",
    "RequestTimeTooSkewed",
    "SignatureDoesNotMatch",
    "TokenRefreshRequired",
}


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
                s3={
                    "addressing_style": "path",
                    # Over TLS the body is protected in transit: no SHA-256 of every upload.
                    # Over plain HTTP the signature is all that guards it, so it stays.
                    "payload_signing_enabled": not settings.s3_endpoint.startswith("https:"),
                },
                # A stalled S3 costs a job a few connect and read timeouts, then a retry later.
                connect_timeout=CONNECT_TIMEOUT_S,
                read_timeout=READ_TIMEOUT_S,
                retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS},
                max_pool_connections=32,
                # No CRC32 of every body, both ways: TLS, Content-Length and the decoders catch
                # what it would (README, "Integrity end to end").
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
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
        self,
        key: str,
        *,
        max_bytes: int = MAX_OBJECT_BYTES,
        budget: ByteBudget | None = None,
        deadline_s: float = OBJECT_DEADLINE_S,
    ) -> bytes:
        """Download one object in chunks, stopping at `max_bytes` whatever the headers claim.

        `budget` is shared by the downloads of one SKU (its bytes and its deadline): once it is
        spent or stopped, this download stops too. Without one, it gets `deadline_s` of its own.
        """
        if budget is None:
            own = ByteBudget(max_bytes, deadline_s=deadline_s)
            try:
                return self.get(key, max_bytes=max_bytes, budget=own)
            finally:
                own.close()
        try:
            response = self.client.get_object(Bucket=self.name, Key=key)
            body = response["Body"]
            try:
                declared = int(response.get("ContentLength") or 0)
                if declared > max_bytes:
                    raise TooLarge(f"{key} is {declared:,} bytes; the limit is {max_bytes:,}")
                with budget.holding(body):
                    return _read_capped(body, key=key, max_bytes=max_bytes, budget=budget)
            finally:
                body.close()
        except Exception as exc:
            if budget.stopped and not isinstance(exc, TooLarge):
                raise budget.why_stopped() from exc  # its own failure came from the stop
            if isinstance(exc, BotoCoreError):
                raise Transient(f"S3 unavailable while getting {key}: {exc}") from exc
            if not isinstance(exc, ClientError):
                raise
            if _error_code(exc) in _MISSING_CODES:
                raise OriginalMissing(f"original not found in bucket {self.name}: {key}") from exc
            raise _transient_or_permanent(exc, f"get {key}") from exc

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
        """Raise unless the bucket answers (`collage health`, and whether S3 refuses everything)."""
        try:
            self.client.head_bucket(Bucket=self.name)
        except ClientError as exc:
            raise _transient_or_permanent(exc, f"head bucket {self.name}") from exc
        except BotoCoreError as exc:
            raise Transient(f"S3 unavailable: {exc}") from exc


def _read_capped(body: Any, *, key: str, max_bytes: int, budget: ByteBudget) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := body.read(CHUNK_BYTES):
        size += len(chunk)
        if size > max_bytes:
            raise TooLarge(f"{key} is larger than the limit of {max_bytes:,} bytes")
        budget.take(len(chunk))
        chunks.append(chunk)
    return b"".join(chunks)


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _transient_or_permanent(exc: ClientError, what: str) -> Exception:
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    code = _error_code(exc)
    if code in _WORKER_REFUSED or (status in (401, 403) and code in ("", str(status))):
        # A HEAD's answer has no body, so no code: its 403 is as good as AccessDenied.
        said = code if code not in ("", str(status)) else "Forbidden"
        return S3Refused(f"S3 refused {what}: {status} {said}")
    if status >= 500 or status == 429 or code in {"SlowDown", "RequestTimeout", "Throttling"}:
        return Transient(f"S3 answered {status} {code} to {what}")
    return Permanent(f"S3 refused {what}: {status} {code}")
