"""bin/demo end to end, reduced in size: the command a newcomer runs first."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bin_demo_builds_collages_and_a_gallery(tmp_path: Path, admin_dsn: str) -> None:
    output = tmp_path / "demo"
    env = {**os.environ, "STAGING_DB_URL": admin_dsn}
    result = subprocess.run(
        [str(ROOT / "bin" / "demo"), "--skus", "10", "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "SKUs               10" in out
    assert "collages           9" in out and "errors             1" in out
    assert "pickup latency" in out and "time per collage" in out
    page = (output / "index.html").read_text()
    assert page.count("<section") == 10
    assert len(list((output / "collages").glob("*.jpg"))) == 9
    assert "Traceback" not in result.stderr
    assert "web console for this run: http://127.0.0.1:" in out
    assert (output / "console.png").stat().st_size > 10_000  # the browser's screenshot
    assert 'href="console.png"' in page or 'src="console.png"' in page


def test_bin_demo_refuses_to_wipe_a_folder_that_is_not_its_own(tmp_path: Path) -> None:
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    result = subprocess.run(
        [str(ROOT / "bin" / "demo"), "--skus", "1", "--output", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 1
    assert "is not empty and not a demo output" in result.stderr
    assert precious.read_text() == "keep me"
