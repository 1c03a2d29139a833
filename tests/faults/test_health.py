"""`collage health` answers inside Docker's HEALTHCHECK timeout even when its services hang."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from collage.queue.health import CHECK_TIMEOUT_S
from dev.s3proxy import SilentServer
from tests.support.workers import collage_command

HEALTHCHECK_TIMEOUT_S = 20  # the Dockerfile's and compose's


@pytest.mark.slow
def test_health_finishes_in_time_when_s3_and_the_database_hang(tmp_path) -> None:
    s3, database = SilentServer(), SilentServer()
    port = database.endpoint.rsplit(":", 1)[1]
    env = {
        **os.environ,
        "STAGING_DB_URL": f"postgresql://postgres@127.0.0.1:{port}/x",
        "S3_ENDPOINT": s3.endpoint,
        "S3_ACCESS_KEY": "k",
        "S3_SECRET_KEY": "k",
        "TEMP_DIR": str(tmp_path),
        "LOG_FORMAT": "json",
    }
    env.pop("STAGING_DB_SESSION_URL", None)
    started = time.monotonic()
    try:
        result = subprocess.run(
            [*collage_command(), "health"],
            env=env,
            capture_output=True,
            text=True,
            timeout=HEALTHCHECK_TIMEOUT_S + 10,
            check=False,
        )
    finally:
        s3.close()
        database.close()
    took = time.monotonic() - started
    print(f"\nhealth with S3 and the database hung: exit {result.returncode} after {took:.1f}s")
    print(result.stdout)
    assert result.returncode == 1
    assert took < HEALTHCHECK_TIMEOUT_S - 3
    assert f"FAIL bucket: no answer within {CHECK_TIMEOUT_S:.0f}s" in result.stdout
    assert "FAIL database:" in result.stdout and "FAIL worker here:" in result.stdout
    assert "Traceback" not in result.stderr
