"""One settings object, read from the environment once and checked before anything starts."""

from __future__ import annotations

import dataclasses
import functools
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from collage import env_values as values
from collage.errors import ConfigError

T = TypeVar("T")

DEFAULT_BUCKET = "unde-images"
DEFAULT_REGION = "us-east-1"
DEFAULT_ORIGINALS_PREFIX = "originals/"
DEFAULT_WEB_HOST = "127.0.0.1"
DEFAULT_WEB_PORT = 8080
# Collages are written public-read, as the worker this one replaces wrote them: the try-on stage
# fetches collage_url without keys where the bucket relies on object ACLs. "none" sends no ACL
# (buckets with ACLs disabled, whose policy decides).
DEFAULT_COLLAGE_ACL = "public-read"
_DEFAULT_ACL: str | None = DEFAULT_COLLAGE_ACL
# The key of a SKU's collage never changes while its content does: caches must ask again.
DEFAULT_COLLAGE_CACHE_CONTROL = "no-cache"
DEFAULT_BATCH_SIZE = 100
DEFAULT_QUALITY = 95
# The lowest quality COLLAGE_MAX_BYTES may push a collage to: below 70, 4:4:4 JPEG's blocks and
# ringing start to show on product photos' edges and small print.
DEFAULT_MIN_QUALITY = 70
DEFAULT_CONCURRENCY = 2
# The slowest real collage at the limits (150 MP canvas, 64 MP photos, ICC conversions) costs
# about 6 s of CPU here: 30 s stops a decoding bomb long before a worker notices.
DEFAULT_BUILD_CPU_S = 30
# Memory a build may add to its child process (imports, about 280 MiB, come on top): the worst
# accepted build, a 64 MP animated WebP on a 150 MP canvas, peaks at 1.6 GiB; two fit in 4 GB.
DEFAULT_BUILD_MEMORY_MB = 1792
# A SKU's photos, start to end: a server trickling a byte at a time never trips a read
# timeout, so the whole download has a deadline. A product photo takes a second or two.
DEFAULT_DOWNLOAD_DEADLINE_S = 120
# Downloads, decoding and encoding of one SKU, start to end.
DEFAULT_BUILD_DEADLINE_S = 300
# libpq parameters whose values are secrets (passfile and sslkey name files, not secrets).
SECRET_PARAMETERS = frozenset({"password", "sslpassword", "oauth_client_secret"})


@dataclass(frozen=True, kw_only=True)
class Database:
    """Where the database is: all that the commands which only read or change rows need."""

    url: str = field(repr=False)
    session_url: str = field(repr=False)  # LISTEN and advisory locks: a session, not a txn pool

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Database:
        """Read the two database URLs; raise ConfigError naming the bad one."""
        url = values.required(env, "STAGING_DB_URL", values.dsn)
        return cls(
            url=url, session_url=values.optional(env, "STAGING_DB_SESSION_URL", values.dsn, url)
        )


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything the worker and the CLI need to know about their surroundings."""

    db_url: str = field(repr=False)
    db_session_url: str = field(repr=False)
    s3_endpoint: str
    s3_access_key: str = field(repr=False)
    s3_secret_key: str = field(repr=False)
    s3_bucket: str = DEFAULT_BUCKET
    s3_region: str = DEFAULT_REGION
    s3_public_url: str = ""
    s3_originals_prefix: str = DEFAULT_ORIGINALS_PREFIX
    s3_collage_acl: str | None = DEFAULT_COLLAGE_ACL  # None: no ACL on the request
    s3_collage_cache_control: str = DEFAULT_COLLAGE_CACHE_CONTROL
    batch_size: int = DEFAULT_BATCH_SIZE
    collage_quality: int = DEFAULT_QUALITY
    collage_max_bytes: int | None = None  # off: collages of any size
    collage_min_quality: int = DEFAULT_MIN_QUALITY  # the floor collage_max_bytes may push to
    worker_concurrency: int = DEFAULT_CONCURRENCY
    build_cpu_s: int = DEFAULT_BUILD_CPU_S
    build_memory_mb: int = DEFAULT_BUILD_MEMORY_MB
    download_deadline_s: int = DEFAULT_DOWNLOAD_DEADLINE_S
    build_deadline_s: int = DEFAULT_BUILD_DEADLINE_S
    temp_dir: Path = field(default_factory=lambda: _default_temp_dir())
    metrics_port: int | None = None
    web_host: str = DEFAULT_WEB_HOST
    web_port: int = DEFAULT_WEB_PORT
    # Unlocks the console's actions; None: the console is read-only.
    web_token: str | None = field(default=None, repr=False)
    # Host headers the console answers (DNS rebinding); empty: WEB_HOST and localhost's names.
    web_allowed_hosts: tuple[str, ...] = ()
    web_secure_cookie: bool = False  # the session cookie only over HTTPS (behind TLS)

    def __post_init__(self) -> None:
        if not self.s3_public_url:
            host = urlsplit(self.s3_endpoint).netloc
            object.__setattr__(self, "s3_public_url", f"https://{self.s3_bucket}.{host}")
        object.__setattr__(self, "s3_public_url", self.s3_public_url.rstrip("/"))
        if self.collage_max_bytes is not None and self.collage_min_quality > self.collage_quality:
            raise ConfigError(
                f"COLLAGE_MIN_QUALITY is invalid: {self.collage_min_quality} is above"
                f" COLLAGE_QUALITY {self.collage_quality}"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Build settings from environment variables; raise ConfigError naming the bad one."""
        database = Database.from_env(env)
        return cls(
            db_url=database.url,
            db_session_url=database.session_url,
            s3_endpoint=values.required(env, "S3_ENDPOINT", values.http_url),
            s3_access_key=values.required(env, "S3_ACCESS_KEY", str),
            s3_secret_key=values.required(env, "S3_SECRET_KEY", str),
            s3_bucket=values.optional(env, "S3_BUCKET", values.bucket, DEFAULT_BUCKET),
            s3_region=values.optional(env, "S3_REGION", str, DEFAULT_REGION),
            s3_public_url=values.optional(env, "S3_PUBLIC_URL", values.http_url, ""),
            s3_originals_prefix=values.optional(
                env, "S3_ORIGINALS_PREFIX", values.originals_prefix, DEFAULT_ORIGINALS_PREFIX
            ),
            s3_collage_acl=values.optional(env, "S3_COLLAGE_ACL", values.acl, _DEFAULT_ACL),
            s3_collage_cache_control=values.optional(
                env, "S3_COLLAGE_CACHE_CONTROL", values.header_value, DEFAULT_COLLAGE_CACHE_CONTROL
            ),
            batch_size=values.optional(
                env, "BATCH_SIZE", values.int_between(1, 10_000), DEFAULT_BATCH_SIZE
            ),
            collage_quality=values.optional(
                env, "COLLAGE_QUALITY", values.int_between(1, 100), DEFAULT_QUALITY
            ),
            collage_max_bytes=values.optional(
                env, "COLLAGE_MAX_BYTES", values.int_between(1024, 2**31 - 1), None
            ),
            collage_min_quality=values.optional(
                env, "COLLAGE_MIN_QUALITY", values.int_between(1, 100), DEFAULT_MIN_QUALITY
            ),
            worker_concurrency=values.optional(
                env, "WORKER_CONCURRENCY", values.int_between(1, 64), DEFAULT_CONCURRENCY
            ),
            build_cpu_s=values.optional(
                env, "COLLAGE_CPU_LIMIT_S", values.int_between(1, 3600), DEFAULT_BUILD_CPU_S
            ),
            build_memory_mb=values.optional(
                env,
                "COLLAGE_MEMORY_LIMIT_MB",
                values.int_between(256, 65536),
                DEFAULT_BUILD_MEMORY_MB,
            ),
            download_deadline_s=values.optional(
                env,
                "S3_DOWNLOAD_DEADLINE_S",
                values.int_between(1, 3600),
                DEFAULT_DOWNLOAD_DEADLINE_S,
            ),
            build_deadline_s=values.optional(
                env, "COLLAGE_DEADLINE_S", values.int_between(1, 3600), DEFAULT_BUILD_DEADLINE_S
            ),
            temp_dir=values.optional(env, "TEMP_DIR", Path, None) or _default_temp_dir(),
            metrics_port=values.optional(env, "METRICS_PORT", values.int_between(1, 65535), None),
            web_host=values.optional(env, "WEB_HOST", values.host, DEFAULT_WEB_HOST),
            web_port=values.optional(
                env, "WEB_PORT", values.int_between(1, 65535), DEFAULT_WEB_PORT
            ),
            web_token=values.optional(env, "WEB_TOKEN", values.token, None),
            web_allowed_hosts=values.optional(env, "WEB_ALLOWED_HOSTS", values.hosts, ()),
            web_secure_cookie=values.optional(env, "WEB_SECURE_COOKIE", values.boolean, False),
        )

    @property
    def console_hosts(self) -> tuple[str, ...]:
        """The Host headers the console answers: WEB_ALLOWED_HOSTS, or where it listens."""
        if self.web_allowed_hosts:
            return self.web_allowed_hosts
        return tuple(dict.fromkeys([self.web_host.lower(), "localhost", "127.0.0.1", "::1"]))

    def replace(self, **changes: object) -> Settings:
        """Return a copy with some fields changed (tests and the demo use it)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


@functools.cache
def from_environment() -> Settings:
    """Read the process environment once (for `procrastinate --app=collage.app.app`)."""
    return Settings.from_env(os.environ)


def redact(dsn: str) -> str:
    """Hide every secret in a connection URL or key=value string so it can be logged."""
    if "://" not in dsn:
        # Imported here: `collage make` reads no settings, and psycopg is a tenth of a second.
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        params = conninfo_to_dict(dsn)
        hidden = {key: "***" for key in params if _is_secret(key)}
        return make_conninfo("", **{**params, **hidden}) if hidden else dsn
    parts = urlsplit(dsn)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", ":***@", 1)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    query = urlencode(
        [(k, "***" if _is_secret(k) else v) for k, v in pairs], safe="*", quote_via=quote
    )
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _is_secret(parameter: str) -> bool:
    return parameter in SECRET_PARAMETERS or "password" in parameter or "secret" in parameter


def _default_temp_dir() -> Path:
    try:
        return Path(tempfile.gettempdir()) / "collage"
    except FileNotFoundError:  # a read-only root without a tmpfs
        raise ConfigError("TEMP_DIR is not set and no temporary folder is writable") from None
