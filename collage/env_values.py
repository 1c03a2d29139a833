"""How each kind of environment value is read and checked: one line naming a bad one."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar
from urllib.parse import urlsplit

from collage.constants import COLLAGE_PREFIX
from collage.errors import ConfigError

T = TypeVar("T")
MIN_WEB_TOKEN_CHARS = 16
CANNED_ACLS = frozenset(
    {
        "private",
        "public-read",
        "authenticated-read",
        "bucket-owner-read",
        "bucket-owner-full-control",
    }
)


def required(env: Mapping[str, str], name: str, parse: Callable[[str], T]) -> T:
    raw = env.get(name, "").strip()
    if not raw:
        raise ConfigError(f"{name} is not set")
    return parse_value(name, raw, parse)


def optional(env: Mapping[str, str], name: str, parse: Callable[[str], T], default: T) -> T:
    raw = env.get(name, "").strip()
    return parse_value(name, raw, parse) if raw else default


def parse_value(name: str, raw: str, parse: Callable[[str], T]) -> T:
    try:
        return parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} is invalid: {exc}") from None


def dsn(raw: str) -> str:
    import psycopg  # here: what reads no database setting need not import it
    from psycopg.conninfo import conninfo_to_dict

    try:
        conninfo_to_dict(raw)
    except psycopg.ProgrammingError:
        raise ValueError("expected a postgresql://user@host:port/dbname URL") from None
    return raw


def http_url(raw: str) -> str:
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


def originals_prefix(raw: str) -> str:
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


def bucket(raw: str) -> str:
    if not (3 <= len(raw) <= 63) or not all(c.isalnum() or c in "-." for c in raw):
        raise ValueError(f"{raw!r} is not a valid bucket name")
    return raw


def acl(raw: str) -> str | None:
    if raw == "none":
        return None
    if raw not in CANNED_ACLS:
        raise ValueError(f"expected none or one of {', '.join(sorted(CANNED_ACLS))}, got {raw!r}")
    return raw


def header_value(raw: str) -> str:
    if not raw.isprintable() or not raw.isascii():
        raise ValueError(f"expected printable ASCII for an HTTP header, got {raw!r}")
    return raw


def int_between(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"expected a whole number, got {raw!r}") from None
        if not low <= value <= high:
            raise ValueError(f"{value} is outside {low}..{high}")
        return value

    return parse


def host(raw: str) -> str:
    if any(c.isspace() or c in "/[]@" for c in raw.strip("[]")):
        raise ValueError(f"expected an address or host name such as 127.0.0.1, got {raw!r}")
    return raw.strip("[]")


def token(raw: str) -> str:
    # Whoever has it can requeue and cancel every SKU: it must not be guessable.
    if len(raw) < MIN_WEB_TOKEN_CHARS:
        raise ValueError(f"must be at least {MIN_WEB_TOKEN_CHARS} characters (it is {len(raw)})")
    return raw


def hosts(raw: str) -> tuple[str, ...]:
    """A comma-separated list of host names; '*.example.com' allows its subdomains."""
    names = tuple(name.strip().lower() for name in raw.split(",") if name.strip())
    if not names:
        raise ValueError("expected host names separated by commas, got none")
    for name in names:
        wildcard = name.startswith("*.") and "*" not in name[1:]
        if name == "*" or ("*" in name and not wildcard):
            raise ValueError(f"expected a host name or *.domain, got {name!r}")
        if any(c.isspace() or c in "/@" for c in name):
            raise ValueError(f"expected a host name such as console.example.com, got {name!r}")
    return names


def boolean(raw: str) -> bool:
    words = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
    found = words.get(raw.strip().lower())
    if found is None:
        raise ValueError(f"expected true or false, got {raw!r}")
    return found
