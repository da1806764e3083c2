"""``XraySeg.json``, our entry for Slicer's ExtensionsIndex, passes the checks the index runs on new entries.

Slicer/ExtensionsIndex checks each changed ``<Name>.json`` (``scripts/check_description_files.py`` in its
"Extension Validation" workflow, and pre-commit hooks in its "Lint" workflow). Re-stated here, offline:

* the entry is valid against the catalog-entry JSON schema its ``$schema`` names (a copy in Testing/Data);
* ``category`` is one of the index's accepted categories (and matches EXTENSION_CATEGORY in CMake);
* ``scm_url`` is ``scheme://host/path`` with scheme git or https, and the repository name contains "Slicer";
* the top-level CMakeLists.txt's first ``project()`` is the entry's file name; it sets EXTENSION_ICONURL and at
  least one EXTENSION_SCREENSHOTURLS, all http(s) image URLs (the index downloads them; we check that each
  points into this repository at ``scm_revision`` and that the file there is a PNG/JPEG/GIF);
* a license file sits at the repository root;
* (ours, not the index's) EXTENSION_HOMEPAGE is the repository that ``scm_url`` clones;
* every ``build_dependencies`` name is an entry of the index (and the same set as EXTENSION_DEPENDS);
* the file is formatted as the index's prettier hook leaves it (2-space JSON, arrays one item per line, a final
  newline, no tabs or trailing blanks).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest

REPO = Path(__file__).resolve().parents[2]
ENTRY = REPO / "XraySeg.json"
SCHEMAS = REPO / "Testing" / "Data" / "ExtensionsIndex"

# The categories check_description_files.py accepts (its ACCEPTED_EXTENSION_CATEGORIES).
ACCEPTED_CATEGORIES = {
    "Active Learning", "Analysis", "Auto3dgm", "BigImage", "Cardiac", "Chest Imaging Platform", "Conda",
    "Converters", "DICOM", "DSCI", "Developer Tools", "Diffusion", "Examples", "Exporter", "FTV Segmentation",
    "Filtering", "Filtering.Morphology", "Filtering.Vesselness", "Holographic Display", "IGT", "Informatics",
    "Netstim", "Neuroimaging", "Nuclear Medicine", "Orthodontics", "Osteotomy Planning", "Otolaryngology",
    "Photogrammetry", "Pipelines", "Planning", "Printing", "Quantification", "Radiotherapy", "Registration",
    "Remote", "Rendering", "SPHARM", "Segmentation", "Sequences", "Shape Analysis", "Shape Regression",
    "Shape Visualization", "Simulation", "SlicerCMF", "SlicerMorph", "Spectral Imaging", "Supervisely",
    "Surface Models", "SurfaceLearner", "Tomographic Reconstruction", "Tracking", "Tractography", "Training",
    "Ultrasound", "Utilities", "Vascular Modeling Toolkit", "Virtual Reality", "VisSimTools",
    "Web System Tools", "Wizards",
}
# Entries of the index that we may depend on, each seen as <Name>.json at the index's root.
KNOWN_INDEX_ENTRIES = {"PyTorch", "NNUNet", "SlicerElastix"}
LICENSE_NAMES = ("LICENSE", "LICENCE", "License.txt", "license.txt", "LICENSE.txt", "COPYING", "COPYING.txt")
IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a")


def cmake_settings(text: str) -> dict[str, str]:
    """``set(EXTENSION_X "value")`` lines of a CMakeLists.txt, plus ``PROJECT``: the first ``project()`` name.
    As strict as the index's own parsing: the closing parenthesis follows the quoted value."""
    settings = {key: value for key, value in re.findall(r'set\s*\((EXTENSION_\w+)\s*"([^"]+)"\)', text, re.I)}
    project = re.search(r'project\s*\(\s*([^\s)]+)', text, re.I)
    if project:
        settings["PROJECT"] = project.group(1).strip("\"'")
    return settings


def schema_for(entry: dict) -> dict:
    """The local copy of the schema that the entry's ``$schema`` names (fragment dropped, as the index does)."""
    name = str(entry.get("$schema", "")).split("#")[0].rsplit("/", 1)[-1]
    path = SCHEMAS / name
    if not name or not path.is_file():
        raise AssertionError(f"$schema {entry.get('$schema')!r} names no schema we hold in {SCHEMAS}")
    return json.loads(path.read_text())


def local_file_of(url: str, scm_url: str, revision: str) -> Path | None:
    """The repository file a raw.githubusercontent.com URL serves, if it is this repository at ``revision``."""
    owner_repo = urlsplit(scm_url).path.strip("/").removesuffix(".git")
    prefix = f"https://raw.githubusercontent.com/{owner_repo}/{revision}/"
    return REPO / url[len(prefix):] if url.startswith(prefix) else None


def entry_problems(entry: dict, name: str, cmake_text: str) -> list[str]:
    """Everything the index's checks would object to, one line each (empty: the entry passes)."""
    import jsonschema

    problems = [f"schema: {e.message} at {'/'.join(map(str, e.absolute_path)) or '(root)'}"
                for e in jsonschema.Draft7Validator(schema_for(entry)).iter_errors(entry)]
    cmake = cmake_settings(cmake_text)
    category = entry.get("category")
    if category not in ACCEPTED_CATEGORIES:
        problems.append(f"category {category!r} is not one the index accepts")
    if category != cmake.get("EXTENSION_CATEGORY"):
        problems.append(f"category {category!r} differs from EXTENSION_CATEGORY {cmake.get('EXTENSION_CATEGORY')!r}")
    scm_url = str(entry.get("scm_url", ""))
    if "://" not in scm_url or urlsplit(scm_url).scheme not in ("git", "https"):
        problems.append(f"scm_url {scm_url!r} is not git:// or https://")
    repository = Path(urlsplit(scm_url).path.rstrip("/").split("/")[-1]).stem
    if "slicer" not in repository.lower():
        problems.append(f"repository name {repository!r} does not contain 'Slicer'")
    homepage = cmake.get("EXTENSION_HOMEPAGE", "").rstrip("/")
    if homepage.removesuffix(".git") != scm_url.rstrip("/").removesuffix(".git"):  # our own consistency rule
        problems.append(f"EXTENSION_HOMEPAGE {homepage!r} is not the repository of scm_url {scm_url!r}")
    if cmake.get("PROJECT") != name:
        problems.append(f"CMake project {cmake.get('PROJECT')!r} is not the entry name {name!r}")
    revision = entry.get("scm_revision", "main")
    icons = cmake.get("EXTENSION_ICONURL", "").split()
    screenshots = cmake.get("EXTENSION_SCREENSHOTURLS", "").split()
    if len(icons) != 1:
        problems.append("EXTENSION_ICONURL is missing")
    if not screenshots:
        problems.append("EXTENSION_SCREENSHOTURLS is missing")
    for url in icons + screenshots:
        local = local_file_of(url, scm_url, revision)
        if not url.startswith("http"):
            problems.append(f"image URL {url!r} does not start with http")
        elif local is None or not local.is_file():
            problems.append(f"image URL {url!r} is not a file of this repository at {revision!r}")
        elif not local.read_bytes()[:8].startswith(IMAGE_MAGIC):
            problems.append(f"image URL {url!r} is not a PNG, JPEG or GIF")
    if not any((REPO / n).is_file() for n in LICENSE_NAMES):
        problems.append("no license file at the repository root")
    dependencies = entry.get("build_dependencies", [])
    unknown = sorted(set(dependencies) - KNOWN_INDEX_ENTRIES)
    if unknown:
        problems.append(f"build_dependencies not in the index: {unknown}")
    depends = cmake.get("EXTENSION_DEPENDS", "NA").replace(";", " ").split()
    if sorted(set(dependencies)) != sorted(set(depends) - {"NA"}):
        problems.append(f"build_dependencies {dependencies} differ from EXTENSION_DEPENDS {depends}")
    return problems


@pytest.fixture(scope="module")
def cmake_text() -> str:
    return (REPO / "CMakeLists.txt").read_text()


def test_entry_passes_the_index_checks(cmake_text):
    entry = json.loads(ENTRY.read_text())
    assert entry_problems(entry, ENTRY.stem, cmake_text) == []
    assert entry["build_dependencies"] == ["PyTorch"] and entry["scm_revision"] == "main"


def test_entry_is_formatted_as_the_index_lint_leaves_it():
    text = ENTRY.read_text()
    assert text == json.dumps(json.loads(text), indent=2) + "\n"  # prettier: 2 spaces, one array item per line
    assert "\t" not in text and "\r" not in text and not any(line != line.rstrip() for line in text.splitlines())


@pytest.mark.parametrize("change, expected", [
    (lambda e: e.pop("scm_url"), "schema: 'scm_url' is a required property"),
    (lambda e: e.update(scmurl=e["scm_url"]), "schema: Additional properties are not allowed"),
    (lambda e: e.update(tier=7), "schema: 7 is greater than the maximum of 5"),
    (lambda e: e.update(scm_type="svn"), "schema: 'svn' is not one of"),
    (lambda e: e.update(category="Bones"), "category 'Bones' is not one the index accepts"),
    (lambda e: e.update(scm_url="ftp://example.org/SlicerXraySeg"), "is not git:// or https://"),
    (lambda e: e.update(scm_url="https://github.com/xrayseg/XraySeg.git"), "does not contain 'Slicer'"),
    (lambda e: e.update(scm_url="https://github.com/someone/SlicerXraySeg.git"), "is not the repository of"),
    (lambda e: e.update(build_dependencies=["PyTorch", "NoSuchExtension"]), "not in the index"),
    (lambda e: e.update(scm_revision="release"), "is not a file of this repository at 'release'"),
    (lambda e: e.update({"$schema": "https://example.org/other-schema.json#"}), "names no schema"),
])
def test_the_checks_catch_a_broken_entry(cmake_text, change, expected):
    entry = copy.deepcopy(json.loads(ENTRY.read_text()))
    change(entry)
    try:
        problems = entry_problems(entry, ENTRY.stem, cmake_text)
    except AssertionError as error:
        problems = [str(error)]
    assert any(expected in p for p in problems), problems


def test_cmake_checks_catch_a_renamed_project_and_a_missing_screenshot(cmake_text):
    entry = json.loads(ENTRY.read_text())
    renamed = re.sub(r"project\s*\(\s*XraySeg\b", "project(XraySegExtension", cmake_text, flags=re.I)
    assert renamed != cmake_text
    assert any("is not the entry name 'XraySeg'" in p for p in entry_problems(entry, "XraySeg", renamed))
    no_screenshot = re.sub(r'set\s*\(EXTENSION_SCREENSHOTURLS\s*"[^"]*"\s*\)', "", cmake_text)
    assert no_screenshot != cmake_text
    assert "EXTENSION_SCREENSHOTURLS is missing" in entry_problems(entry, "XraySeg", no_screenshot)
