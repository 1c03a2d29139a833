"""The package as pip installs it (not editable) carries its migrations and can migrate."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from collage.db import migrate

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_a_plain_pip_install_ships_the_migrations_and_runs_collage_migrate(
    tmp_path: Path, empty_db: str
) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("collage-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {m.name for m in migrate.project_migrations()}
    assert {f"collage/migrations/{name}" for name in shipped} <= names
    assert not any(name.startswith(("dev/", "tests/", "migrations/")) for name in names)
    assert any(n.startswith("collage/web/templates/") and n.endswith(".html") for n in names)
    assert any(n.startswith("collage/web/static/") for n in names)

    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), wheel],
        check=True,
        capture_output=True,
        timeout=300,
    )
    # Run from elsewhere, with the installed copy first on the path: not the checkout.
    env = {
        **os.environ,
        "PYTHONPATH": str(target),
        "STAGING_DB_URL": empty_db,
        "S3_ENDPOINT": "http://127.0.0.1:9",
        "S3_ACCESS_KEY": "unused",
        "S3_SECRET_KEY": "unused",
    }
    env.pop("STAGING_DB_SESSION_URL", None)
    where = subprocess.run(
        [sys.executable, "-c", "import collage.db.migrate as m; print(m.shipped_migrations())"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.strip().startswith(str(target))
    result = subprocess.run(
        [sys.executable, "-m", "collage", "migrate"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert all(f"applied {name}" in result.stdout for name in shipped), result.stdout
    assert migrate.status(empty_db).pending == []
