"""Releases: CHANGELOG.md in Keep a Changelog form, its newest release is ``__version__`` (and CITATION.cff's)."""

from __future__ import annotations

import re
import subprocess
from datetime import date
from pathlib import Path

import pytest

import DiffusionAnomalyLib

ROOT = Path(__file__).resolve().parents[2]
CHANGELOG = (ROOT / "CHANGELOG.md").read_text()
RELEASE = re.compile(r"^## \[(\d+\.\d+\.\d+)\] - (\d{4}-\d{2}-\d{2})$", re.MULTILINE)
SECTIONS = ("Added", "Changed", "Deprecated", "Removed", "Fixed", "Security")


def _releases() -> list[tuple[tuple[int, ...], date]]:
    return [(tuple(map(int, v.split("."))), date.fromisoformat(d)) for v, d in RELEASE.findall(CHANGELOG)]


def test_the_newest_release_is_the_library_version():
    newest = ".".join(map(str, _releases()[0][0]))
    assert newest == DiffusionAnomalyLib.__version__, "raise __version__ with a release (or add the release)"
    assert re.search(rf"^version: {re.escape(newest)}$", (ROOT / "CITATION.cff").read_text(), re.MULTILINE)


def test_the_changelog_keeps_a_changelog():
    assert CHANGELOG.startswith("# Changelog\n") and "\n## [Unreleased]\n" in CHANGELOG
    releases = _releases()
    assert len(releases) >= 3
    assert [v for v, _ in releases] == sorted((v for v, _ in releases), reverse=True), "newest version first"
    assert [d for _, d in releases] == sorted((d for _, d in releases), reverse=True), "dates in order"
    versions = [".".join(map(str, v)) for v, _ in releases]
    for v in ["Unreleased", *versions]:  # every heading has its link
        assert re.search(rf"^\[{re.escape(v)}\]: https://\S+$", CHANGELOG, re.MULTILINE), v
    parts = RELEASE.split(CHANGELOG)[1:]  # version, date, text, ...
    for v, text in zip(parts[0::3], parts[2::3], strict=True):
        text = text.split("\n## ")[0]
        headings = re.findall(r"^### (.+)$", text, re.MULTILINE)
        assert headings and set(headings) <= set(SECTIONS), f"{v}: sections {headings}"


def test_each_release_tag_names_a_release():
    try:
        tags = subprocess.run(["git", "tag", "-l", "v*"], cwd=ROOT, capture_output=True, text=True, check=True,
                              timeout=30).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    versions = {v for v, _ in RELEASE.findall(CHANGELOG)}
    assert [t for t in tags if t[1:] not in versions] == []
