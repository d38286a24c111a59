"""The entry for Slicer's Extensions Index (ExtensionsIndex/<index branch>/DiffusionAnomaly.json): valid under
Slicer's schema (Testing/Data, a copy of Slicer's Schemas/ file), formatted as the index keeps its files, and
consistent with the top-level CMakeLists.txt as the index's pull-request checklist asks (name, repository,
category, dependencies, icon and screenshots in this repository). Offline: nothing here opens a connection."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = ROOT / "Testing" / "Data" / "slicer-extension-catalog-entry-schema-v1.0.1.json"
INDEX_DIR = ROOT / "ExtensionsIndex"
BRANCHES = ("main", "5.10")  # the ExtensionsIndex branches the project submits to
ENTRIES = sorted(INDEX_DIR.glob("*/*.json"))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def _cmake() -> str:
    return (ROOT / "CMakeLists.txt").read_text()


def _cmake_set(name: str) -> str:
    """The value of ``set(<name> "...")`` or ``set(<name> value)`` in the top-level CMakeLists.txt."""
    found = re.findall(rf'^set\(\s*{name}\s+(?:"([^"]*)"|([^\s)]+))\s*\)', _cmake(), re.MULTILINE)
    assert len(found) == 1, f"CMakeLists.txt: expected one set({name} ...), found {len(found)}"
    quoted, bare = found[0]
    return quoted or bare


def _raw_base() -> str:
    """https://raw.githubusercontent.com/<owner>/<repo>/main/ for the repository named by EXTENSION_HOMEPAGE."""
    owner_repo = urlsplit(_cmake_set("EXTENSION_HOMEPAGE")).path.strip("/")
    return f"https://raw.githubusercontent.com/{owner_repo}/main/"


def _repo_file(url: str) -> Path:
    base = _raw_base()
    assert url.startswith(base), f"{url}: not a raw URL of this repository's main branch ({base}...)"
    return ROOT / url[len(base):]


def test_the_schema_is_slicers_v1_0_1_and_a_valid_json_schema():
    schema = _schema()
    assert schema["$id"] == ("https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/"
                             "slicer-extension-catalog-entry-schema-v1.0.1.json#")
    jsonschema.Draft7Validator.check_schema(schema)
    notes = (SCHEMA_PATH.parent / "README.md").read_text()
    assert SCHEMA_PATH.name in notes and "github.com/Slicer/Slicer" in notes and "v5.10.0" in notes
    assert SCHEMA_PATH.with_suffix(".LICENSE.txt").read_text().count("3D Slicer Contribution and Software License")


def test_there_is_one_entry_per_index_branch():
    assert sorted(p.parent.name for p in ENTRIES) == sorted(BRANCHES), ENTRIES
    assert {p.name for p in ENTRIES} == {"DiffusionAnomaly.json"}


@pytest.mark.parametrize("path", ENTRIES, ids=lambda p: p.parent.name)
def test_entry_is_valid_under_slicers_schema(path):
    entry = json.loads(path.read_text())
    jsonschema.validate(entry, _schema(), cls=jsonschema.Draft7Validator)
    assert entry["$schema"] == _schema()["$id"]


@pytest.mark.parametrize("path", ENTRIES, ids=lambda p: p.parent.name)
def test_entry_is_formatted_as_the_index_keeps_its_files(path):
    """LF line endings (the index's check refuses CR), sorted keys, two-space indent, one item per array line
    (its prettier configuration), a final newline."""
    raw = path.read_bytes()
    assert b"\r" not in raw
    assert raw.decode() == json.dumps(json.loads(raw), indent=2, sort_keys=True) + "\n"


@pytest.mark.parametrize("path", ENTRIES, ids=lambda p: p.parent.name)
def test_entry_agrees_with_cmakelists(path):
    entry = json.loads(path.read_text())
    project = re.search(r"^project\(\s*([^\s)]+)", _cmake(), re.MULTILINE).group(1)
    assert path.stem == project == "DiffusionAnomaly"  # the index names the file after the extension
    assert not project.lower().startswith("slicer")  # the index's naming rule for extensions
    # the repository: the homepage, over https, named Slicer<Name> (the index's rule for repositories)
    url = urlsplit(entry["scm_url"])
    assert url.scheme == "https" and url.netloc == "github.com"
    assert entry["scm_url"].removesuffix(".git") == _cmake_set("EXTENSION_HOMEPAGE")
    assert Path(url.path).stem == f"Slicer{project}"
    assert entry.get("scm_type", "git") == "git"
    # the index branch's own revision of this repository (a branch name, as the index recommends)
    assert entry["scm_revision"] == path.parent.name
    assert entry["category"] == _cmake_set("EXTENSION_CATEGORY")
    depends = _cmake_set("EXTENSION_DEPENDS").split()
    assert sorted(entry["build_dependencies"]) == sorted(d for d in depends if d != "NA")
    assert "PyTorch" in entry["build_dependencies"]
    assert entry.get("build_subdirectory", ".") == "."  # not a superbuild


def test_the_entries_differ_only_in_scm_revision():
    entries = [json.loads(p.read_text()) for p in ENTRIES]
    for e in entries:
        e.pop("scm_revision")
    assert all(e == entries[0] for e in entries)


def test_icon_and_screenshots_are_pngs_in_this_repository():
    urls = _cmake_set("EXTENSION_SCREENSHOTURLS").split()
    # the index's check reads the list with this pattern: one quoted string, no space before ")"
    assert re.search(r'set\s*\(EXTENSION_SCREENSHOTURLS\s*"([^"]+)"\)', _cmake())
    assert len(urls) >= 1 and len(set(urls)) == len(urls)
    for url in [_cmake_set("EXTENSION_ICONURL"), *urls]:
        file = _repo_file(url)
        assert file.is_file(), f"{url}: {file.relative_to(ROOT)} is not in the repository"
        assert file.read_bytes()[:8] == PNG_MAGIC, f"{file.relative_to(ROOT)}: not a PNG"
        assert file.stat().st_size < 1_000_000, f"{file.relative_to(ROOT)}: keep screenshots under 1 MB"
    for url in urls:  # not in Resources/, which CMakeLists.txt installs into the extension package
        assert _repo_file(url).relative_to(ROOT).parts[0] == "Screenshots"
    listed = {_repo_file(u).name for u in urls}
    assert listed == {p.name for p in (ROOT / "Screenshots").glob("*.png")}, "every screenshot listed, none stale"
    captions = (ROOT / "Screenshots" / "README.md").read_text()
    assert all(f"`{name}`" in captions for name in listed), "each screenshot has a caption in Screenshots/README.md"


@pytest.mark.parametrize("breakage", ["unknown field", "no category", "dependencies as a string", "tier 0"])
def test_a_broken_entry_is_refused(breakage):
    """The schema check has teeth: typical mistakes in an entry fail validation."""
    entry = json.loads((INDEX_DIR / "main" / "DiffusionAnomaly.json").read_text())
    broken = copy.deepcopy(entry)
    if breakage == "unknown field":
        broken["screenshoturls"] = "https://example.org/1.png"  # belongs in CMakeLists.txt, not the entry
    elif breakage == "no category":
        del broken["category"]
    elif breakage == "dependencies as a string":
        broken["build_dependencies"] = "PyTorch"
    else:
        broken["tier"] = 0
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, _schema(), cls=jsonschema.Draft7Validator)
