"""The package's shape: modules a reader can take in whole, and a README map drawn from the tree."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "collage"
MAX_LINES = 300


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name not in {"__init__.py", "__main__.py"})


def architecture() -> dict[str, set[str]]:
    """The README's architecture block: each folder of the package and the modules it lists."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Architecture", 1)[1].split("```", 2)[1].strip("\n").splitlines()
    assert block[0].startswith("collage/")
    listed: dict[str, set[str]] = {}
    folder = ""
    for line in block[1:]:
        if re.match(r"^\S", line):  # the next top-level entry: the package's part has ended
            break
        if found := re.match(r"^  (\w+)/\s", line):
            folder = found[1]
        elif found := re.match(r"^  (\w+\.py)\s", line):
            folder = ""
            listed.setdefault("", set()).add(found[1])
        elif (found := re.match(r"^    (\w+\.py)\s", line)) and folder:
            listed.setdefault(folder, set()).add(found[1])
    return {folder: names - {"__init__.py"} for folder, names in listed.items()}


def test_no_module_is_longer_than_a_reader_takes_in_whole() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in modules()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_the_readme_maps_every_module_of_the_package_and_no_other() -> None:
    tree: dict[str, set[str]] = {}
    for path in modules():
        folder = path.parent.relative_to(PACKAGE).as_posix()
        tree.setdefault("" if folder == "." else folder, set()).add(path.name)
    mapped = architecture()
    assert mapped == tree
