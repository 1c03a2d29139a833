"""One settings object, read from the environment once and checked before anything starts."""

from __future__ import annotations

import dataclasses
import functools
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from collage.constants import COLLAGE_PREFIX
from collage.errors import ConfigError

T = TypeVar("T")

DEFAULT_BUCKET = "unde-images"
DEFAULT_REGION = "us-east-1"
DEFAULT_ORIGINALS_PREFIX = "originals/"
DEFAULT_WEB_HOST = "127.0.0.1"
DEFAULT_WEB_PORT = 8080
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
# accepted build, a 64 MP lossless WebP on a 150 MP canvas, peaks at 1.6 GiB; two fit in 4 GB.
DEFAULT_BUILD_MEMORY_MB = 1792
MIN_WEB_TOKEN_CHARS = 16
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
        url = _required(env, "STAGING_DB_URL", _dsn)
        return cls(url=url, session_url=_optional(env, "STAGING_DB_SESSION_URL", _dsn, url))


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
    batch_size: int = DEFAULT_BATCH_SIZE
    collage_quality: int = DEFAULT_QUALITY
    collage_max_bytes: int | None = None  # off: collages of any size
    collage_min_quality: int = DEFAULT_MIN_QUALITY  # the floor collage_max_bytes may push to
    worker_concurrency: int = DEFAULT_CONCURRENCY
    build_cpu_s: int = DEFAULT_BUILD_CPU_S
    build_memory_mb: int = DEFAULT_BUILD_MEMORY_MB
    temp_dir: Path = field(default_factory=lambda: _default_temp_dir())
    metrics_port: int | None = None
    web_host: str = DEFAULT_WEB_HOST
    web_port: int = DEFAULT_WEB_PORT
    # Unlocks the console's actions; None: the console is read-only.
    web_token: str | None = field(default=None, repr=False)

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
            s3_endpoint=_required(env, "S3_ENDPOINT", _http_url),
            s3_access_key=_required(env, "S3_ACCESS_KEY", str),
            s3_secret_key=_required(env, "S3_SECRET_KEY", str),
            s3_bucket=_optional(env, "S3_BUCKET", _bucket, DEFAULT_BUCKET),
            s3_region=_optional(env, "S3_REGION", str, DEFAULT_REGION),
            s3_public_url=_optional(env, "S3_PUBLIC_URL", _http_url, ""),
            s3_originals_prefix=_optional(
                env, "S3_ORIGINALS_PREFIX", _originals_prefix, DEFAULT_ORIGINALS_PREFIX
            ),
            batch_size=_optional(env, "BATCH_SIZE", _int_between(1, 10_000), DEFAULT_BATCH_SIZE),
            collage_quality=_optional(
                env, "COLLAGE_QUALITY", _int_between(1, 100), DEFAULT_QUALITY
            ),
            collage_max_bytes=_optional(
                env, "COLLAGE_MAX_BYTES", _int_between(1024, 2**31 - 1), None
            ),
            collage_min_quality=_optional(
                env, "COLLAGE_MIN_QUALITY", _int_between(1, 100), DEFAULT_MIN_QUALITY
            ),
            worker_concurrency=_optional(
                env, "WORKER_CONCURRENCY", _int_between(1, 64), DEFAULT_CONCURRENCY
            ),
            build_cpu_s=_optional(
                env, "COLLAGE_CPU_LIMIT_S", _int_between(1, 3600), DEFAULT_BUILD_CPU_S
            ),
            build_memory_mb=_optional(
                env, "COLLAGE_MEMORY_LIMIT_MB", _int_between(256, 65536), DEFAULT_BUILD_MEMORY_MB
            ),
            temp_dir=_optional(env, "TEMP_DIR", Path, None) or _default_temp_dir(),
            metrics_port=_optional(env, "METRICS_PORT", _int_between(1, 65535), None),
            web_host=_optional(env, "WEB_HOST", _host, DEFAULT_WEB_HOST),
            web_port=_optional(env, "WEB_PORT", _int_between(1, 65535), DEFAULT_WEB_PORT),
            web_token=_optional(env, "WEB_TOKEN", _token, None),
        )

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


def _required(env: Mapping[str, str], name: str, parse: Callable[[str], T]) -> T:
    raw = env.get(name, "").strip()
    if not raw:
        raise ConfigError(f"{name} is not set")
    return _parse(name, raw, parse)


def _optional(env: Mapping[str, str], name: str, parse: Callable[[str], T], default: T) -> T:
    raw = env.get(name, "").strip()
    return _parse(name, raw, parse) if raw else default


def _parse(name: str, raw: str, parse: Callable[[str], T]) -> T:
    try:
        return parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} is invalid: {exc}") from None


def _dsn(raw: str) -> str:
    try:
        conninfo_to_dict(raw)
    except psycopg.ProgrammingError:
        raise ValueError("expected a postgresql://user@host:port/dbname URL") from None
    return raw


def _http_url(raw: str) -> str:
    try:
        parts = urlsplit(raw)
        hostname = parts.hostname
    except ValueError:
        raise ValueError("expected an http(s)://host URL") from None
    if parts.username is not None or parts.password is not None:
        # It would be printed by `collage health` and written into every collage_url.
        raise ValueError("must not hold credentials; use S3_ACCESS_KEY and S3_SECRET_KEY")
    if parts.scheme not in {"http", "https"} or not hostname:
        raise ValueError(f"expected an http(s)://host URL, got {raw!r}")
    return raw


def _originals_prefix(raw: str) -> str:
    segments = raw.split("/")
    if (
        not raw.endswith("/")
        or raw.startswith("/")
        or any(s in {"", ".", ".."} for s in segments[:-1])
    ):
        raise ValueError(f"expected a key prefix such as originals/, got {raw!r}")
    if raw.startswith(f"{COLLAGE_PREFIX}/"):
        raise ValueError(f"{COLLAGE_PREFIX}/ is where collages are written, never read")
    return raw


def _bucket(raw: str) -> str:
    if not (3 <= len(raw) <= 63) or not all(c.isalnum() or c in "-." for c in raw):
        raise ValueError(f"{raw!r} is not a valid bucket name")
    return raw


def _int_between(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"expected a whole number, got {raw!r}") from None
        if not low <= value <= high:
            raise ValueError(f"{value} is outside {low}..{high}")
        return value

    return parse


def _host(raw: str) -> str:
    if any(c.isspace() or c in "/[]@" for c in raw.strip("[]")):
        raise ValueError(f"expected an address or host name such as 127.0.0.1, got {raw!r}")
    return raw.strip("[]")


def _token(raw: str) -> str:
    # Whoever has it can requeue and cancel every SKU: it must not be guessable.
    if len(raw) < MIN_WEB_TOKEN_CHARS:
        raise ValueError(f"must be at least {MIN_WEB_TOKEN_CHARS} characters (it is {len(raw)})")
    return raw
