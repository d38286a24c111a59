"""The user documentation: the README stays short with the Slicer install first, relative links resolve, and
no user-facing text refers to the source works by their internal seed numbers or to files outside the
repository."""

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "DEVELOPERS.md", *sorted((ROOT / "docs").glob("*.md")),
         *sorted((ROOT / "Resources" / "Models").glob("*/README.md"))]
USER_TEXT = [*PAGES, ROOT / "Resources" / "UI" / "DiffusionAnomaly.ui", ROOT / "CITATION.cff"]
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)\s]*)?\)|src=\"([^\"]+)\"")


def test_readme_is_short_and_starts_with_slicer():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200
    install = next(i for i, line in enumerate(lines) if line.startswith("## "))
    assert lines[install] == "## Install in 3D Slicer" and install < 30, "the first section is the Slicer install"
    head = "\n".join(lines[: install + 12])
    assert "5.10" in head and "Extensions Manager" in head and "not a medical device" in head


@pytest.mark.parametrize("page", USER_TEXT, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_seed_numbers_or_outside_files(page):
    text = page.read_text()
    assert not re.search(r"seeds?\s+00\d", text, re.IGNORECASE), f"{page}: cite the works by name (docs/method.md)"
    assert "DESIGN.md" not in text and "../shared" not in text.replace("`../shared/data`", "").replace(
        "../shared/slicer-python", "")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    for match in LINK.finditer(page.read_text()):
        target = match.group(1) or match.group(3)
        if re.match(r"[a-z]+:", target):
            continue
        assert (page.parent / target).exists(), f"{page.relative_to(ROOT)}: broken link {target}"


def test_picture_is_small():
    assert (ROOT / "docs" / "images" / "overview.png").stat().st_size < 300_000


def test_licence_and_citation():
    assert "Apache License" in (ROOT / "LICENSE").read_text() and "Version 2.0" in (ROOT / "LICENSE").read_text()
    cff = (ROOT / "CITATION.cff").read_text()
    assert "license: Apache-2.0" in cff and cff.count("- type:") == 5
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert (project["license"], project["license-files"]) == ("Apache-2.0", ["LICENSE"])  # PEP 639
