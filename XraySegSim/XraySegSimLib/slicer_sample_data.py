"""Our CT samples in Slicer's Sample Data module.

No download host is reachable, so Slicer cannot fetch these from a URL. Each source's ``uris`` are ``file://``
URLs of the files in our cache (where :func:`.sample_data.fetch_sample` puts them), with their SHA-256 as
Slicer's checksums. Its ``customDownloader`` (what the Sample Data button calls) first fetches the sample with
our registry (pip, SHA-256) and then lets Slicer's own logic copy and load the files; a scripted
``SampleData.downloadSample(name)`` works once the sample is cached. Nothing here imports Qt at module level.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from .sample_data import SAMPLES, expected_sha256, get_sample, sample_paths

CATEGORY = "XraySeg"
# sample -> [(file key, Slicer file type, node name suffix)]: what loads as a node (CT volume, label segmentation)
LOADED_FILES: dict[str, list[tuple[str, str, str]]] = {
    "chest-ct": [("ct", "VolumeFile", "CT"), ("labels", "SegmentationFile", "bones")],
    "chest-full-ct": [("ct", "VolumeFile", "CT")],
    "chest-full-ct-labelled": [("ct", "VolumeFile", "CT"), ("labels", "SegmentationFile", "bones")],
    "abdomen-pelvis-ct": [("ct", "VolumeFile", "CT"), ("labels", "SegmentationFile", "labels")],
}


def _node_prefix(sample_name: str) -> str:
    return "XraySeg_" + "".join(part.capitalize() for part in sample_name.split("-"))


def sample_data_sources(cache_dir: str | Path | None = None,
                        fetch: Callable[[str], Any] | None = None) -> list[dict[str, Any]]:
    """Keyword arguments of ``SampleDataLogic.registerCustomSampleDataSource``, one dict per CT sample.

    Built samples (``chest-full-ct-labelled``) have no recorded file SHA-256 (registration may differ in the
    last voxel between machines), so Slicer checks nothing for them; our registry checks its own report.
    """
    from .sample_data import fetch_sample

    fetch = fetch or (lambda name: fetch_sample(name, cache_dir))
    sources = []
    for name, files in LOADED_FILES.items():
        paths = sample_paths(name, cache_dir)
        built = get_sample(name).archive is None  # its labels come from our registration, not an archive
        checksums = [None if built and key == "labels" else
                     f"SHA256:{_file_sha('chest-full-ct' if built else name, key)}" for key, _, _ in files]
        prefix = _node_prefix(name)
        sources.append({
            "category": CATEGORY,
            "sampleName": prefix,
            "uris": [Path(paths[key]).resolve().as_uri() for key, _, _ in files],
            # Slicer copies each file into its own cache under this name: unique per sample
            "fileNames": [f"{prefix}_{Path(paths[key]).name}" for key, _, _ in files],
            "nodeNames": [f"{prefix}_{suffix}" for _, _, suffix in files],
            "loadFileType": [file_type for _, file_type, _ in files],
            "checksums": checksums,
            "customDownloader": _downloader(name, fetch),
        })
    return sources


def _file_sha(sample_name: str, key: str) -> str:
    sample = SAMPLES[sample_name]
    return expected_sha256(sample, next(item for item in sample.files if item.key == key))


def _downloader(sample_name: str, fetch: Callable[[str], Any]) -> Callable[[Any], list]:
    def download(source: Any) -> list:
        """Fetch with our registry (pip, SHA-256), then let Slicer copy and load the files."""
        import SampleData  # Slicer's module: only inside the application

        fetch(sample_name)
        return SampleData.SampleDataLogic().downloadFromSource(source)

    download.__name__ = f"download_{sample_name.replace('-', '_')}"
    return download


def register_sample_data(cache_dir: str | Path | None = None) -> int:
    """Register our CT samples with Slicer's Sample Data module (call once at startup); returns how many."""
    import SampleData

    sources = sample_data_sources(cache_dir)
    for arguments in sources:
        SampleData.SampleDataLogic.registerCustomSampleDataSource(**arguments)
    return len(sources)
