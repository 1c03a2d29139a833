from __future__ import annotations

from pathlib import Path

import pytest

from collage.errors import ConfigError
from collage.settings import Database, Settings, redact

BASE = {
    "STAGING_DB_URL": "postgresql://app:s3cret@db:6432/staging",
    "S3_ENDPOINT": "https://fsn1.your-objectstorage.com",
    "S3_ACCESS_KEY": "AKIAEXAMPLE",
    "S3_SECRET_KEY": "very-secret",
}


def test_defaults_follow_the_documented_table() -> None:
    settings = Settings.from_env(BASE)
    assert settings.db_session_url == BASE["STAGING_DB_URL"]
    assert settings.s3_bucket == "unde-images"
    assert settings.s3_public_url == "https://unde-images.fsn1.your-objectstorage.com"
    assert (settings.batch_size, settings.collage_quality, settings.worker_concurrency) == (
        100,
        95,
        2,
    )
    assert settings.metrics_port is None
    assert isinstance(settings.temp_dir, Path)


def test_every_variable_is_read() -> None:
    env = {
        **BASE,
        "STAGING_DB_SESSION_URL": "postgresql://app@db:6433/staging",
        "S3_BUCKET": "other-bucket",
        "S3_REGION": "fsn1",
        "S3_PUBLIC_URL": "https://cdn.example.com/",
        "BATCH_SIZE": "7",
        "COLLAGE_QUALITY": "90",
        "WORKER_CONCURRENCY": "4",
        "TEMP_DIR": "/var/tmp/c",
        "METRICS_PORT": "9100",
        "S3_ORIGINALS_PREFIX": "photos/raw/",
        "COLLAGE_CPU_LIMIT_S": "12",
        "COLLAGE_MAX_BYTES": "10000000",
        "COLLAGE_MIN_QUALITY": "80",
        "COLLAGE_MEMORY_LIMIT_MB": "900",
    }
    settings = Settings.from_env(env)
    assert (settings.build_cpu_s, settings.build_memory_mb) == (12, 900)
    assert (settings.collage_max_bytes, settings.collage_min_quality) == (10_000_000, 80)
    assert settings.s3_originals_prefix == "photos/raw/"
    assert settings.db_session_url.endswith(":6433/staging")
    assert settings.s3_public_url == "https://cdn.example.com"
    assert (settings.s3_bucket, settings.s3_region) == ("other-bucket", "fsn1")
    assert (settings.batch_size, settings.collage_quality, settings.worker_concurrency) == (
        7,
        90,
        4,
    )
    assert settings.temp_dir == Path("/var/tmp/c")
    assert settings.metrics_port == 9100


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("STAGING_DB_URL", "", "STAGING_DB_URL is not set"),
        ("STAGING_DB_URL", "mysql://x/y", "STAGING_DB_URL is invalid"),
        ("S3_ENDPOINT", "fsn1.example.com", "S3_ENDPOINT is invalid"),
        ("S3_SECRET_KEY", "  ", "S3_SECRET_KEY is not set"),
        ("COLLAGE_QUALITY", "101", "COLLAGE_QUALITY is invalid: 101 is outside 1..100"),
        ("COLLAGE_QUALITY", "high", "COLLAGE_QUALITY is invalid: expected a whole number"),
        ("BATCH_SIZE", "0", "BATCH_SIZE is invalid"),
        ("WORKER_CONCURRENCY", "-1", "WORKER_CONCURRENCY is invalid"),
        ("S3_BUCKET", "a/b", "S3_BUCKET is invalid"),
        ("METRICS_PORT", "70000", "METRICS_PORT is invalid"),
        ("S3_ENDPOINT", "https://key:secret@s3.example.com", "S3_ENDPOINT is invalid: must not"),
        ("S3_ENDPOINT", "https://key@s3.example.com", "S3_ENDPOINT is invalid: must not hold"),
        ("S3_PUBLIC_URL", "https://u:p@cdn.example.com", "S3_PUBLIC_URL is invalid: must not"),
        ("S3_ENDPOINT", "http://[::1", "S3_ENDPOINT is invalid: expected an http(s)://host"),
        ("S3_ORIGINALS_PREFIX", "originals", "S3_ORIGINALS_PREFIX is invalid: expected a key"),
        ("COLLAGE_MAX_BYTES", "10MB", "COLLAGE_MAX_BYTES is invalid: expected a whole number"),
        ("COLLAGE_MAX_BYTES", "0", "COLLAGE_MAX_BYTES is invalid: 0 is outside 1024..2147483647"),
        ("COLLAGE_MIN_QUALITY", "0", "COLLAGE_MIN_QUALITY is invalid: 0 is outside 1..100"),
        ("S3_ORIGINALS_PREFIX", "/originals/", "S3_ORIGINALS_PREFIX is invalid"),
        ("S3_ORIGINALS_PREFIX", "a/../b/", "S3_ORIGINALS_PREFIX is invalid"),
        ("S3_ORIGINALS_PREFIX", "collages/x/", "S3_ORIGINALS_PREFIX is invalid: collages/ is"),
    ],
)
def test_a_bad_value_names_the_variable(name: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({**BASE, name: value})
    assert str(info.value).startswith(expected)
    assert "\n" not in str(info.value)


def test_the_database_alone_needs_no_s3_settings() -> None:
    database = Database.from_env({"STAGING_DB_URL": "postgresql://u:pw@db:6432/staging"})
    assert database.url == database.session_url == "postgresql://u:pw@db:6432/staging"
    assert "pw" not in repr(database)
    split = Database.from_env(
        {
            "STAGING_DB_URL": "postgresql://db:6432/s",
            "STAGING_DB_SESSION_URL": "postgresql://db:6433/s",
        }
    )
    assert (split.url, split.session_url) == ("postgresql://db:6432/s", "postgresql://db:6433/s")
    with pytest.raises(ConfigError, match="STAGING_DB_SESSION_URL is invalid"):
        Database.from_env(
            {"STAGING_DB_URL": "postgresql://db/s", "STAGING_DB_SESSION_URL": "x://y"}
        )


def test_secrets_stay_out_of_the_repr() -> None:
    text = repr(Settings.from_env(BASE))
    assert "very-secret" not in text
    assert "s3cret" not in text
    assert "AKIAEXAMPLE" not in text
    assert "fsn1.your-objectstorage.com" in text


def test_redact_hides_every_libpq_secret() -> None:
    url = "postgresql://u@h/db?sslpassword=k3y&oauth_client_secret=t0k&sslmode=require"
    assert (
        redact(url) == "postgresql://u@h/db?sslpassword=***&oauth_client_secret=***&sslmode=require"
    )
    shown = redact("host=db user=app sslpassword=k3y sslkey=/etc/key.pem")
    assert "k3y" not in shown and "/etc/key.pem" in shown


def test_redact_hides_only_the_password() -> None:
    assert redact("postgresql://app:s3cret@db:6432/x") == "postgresql://app:***@db:6432/x"
    assert redact("postgresql://app@db/x") == "postgresql://app@db/x"
    assert "s3cret" not in redact("host=db dbname=x user=app password=s3cret")
    assert redact("host=db dbname=x") == "host=db dbname=x"
    assert (
        redact("postgresql://u@h/db?password=secret&sslmode=require")
        == "postgresql://u@h/db?password=***&sslmode=require"
    )
    assert redact("postgresql://u@h/db?sslmode=require") == "postgresql://u@h/db?sslmode=require"


def test_key_value_connection_strings_are_accepted() -> None:
    settings = Settings.from_env({**BASE, "STAGING_DB_URL": "host=db port=6432 dbname=staging"})
    assert settings.db_url == "host=db port=6432 dbname=staging"


def test_a_floor_above_the_quality_is_refused_only_with_a_size_limit() -> None:
    low = {**BASE, "COLLAGE_QUALITY": "60"}
    assert Settings.from_env(low).collage_min_quality == 70  # no limit: the floor is unused
    with pytest.raises(
        ConfigError, match="COLLAGE_MIN_QUALITY is invalid: 70 is above COLLAGE_QUALITY 60"
    ):
        Settings.from_env({**low, "COLLAGE_MAX_BYTES": "5000000"})
