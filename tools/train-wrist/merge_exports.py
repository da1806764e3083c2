"""One training folder from several exports of the same wrist phantoms (``make train-wrist``, lateral phase).

``xrayseg train`` reads one dataset. The lateral phase trains on the main export (views at any rotation about the
forearm) plus an extra export of lateral and near-lateral views of the same training phantoms. This links (no
copies) the images, overlapping mask stacks and sidecars of every export into one folder; the cases of the second
and later exports are renamed ``<ct>_v<1000 * k + i>``, and their CT ids are kept, so the CT-wise validation split
of ``xrayseg train`` stays the same wrists. Label images (``labelsTr``) are linked for the first export only: each
export numbers its overlap atoms itself, and ``xrayseg train`` reads the mask stacks. The folder is for our
trainer, not an nnU-Net raw dataset.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
from pathlib import Path

FILES = ("dataset.json", "classes.json", "atoms.json")


def _dataset(folder: Path) -> Path:
    found = [folder] if (folder / "dataset.json").is_file() else sorted(folder.glob("Dataset*/"))
    if len(found) != 1:
        raise SystemExit(f"{folder}: expected one Dataset*/ folder with a dataset.json")
    return found[0]


def merge(exports: list[Path], out: Path) -> int:
    """Write ``out`` (through a temporary folder, then renamed); return the number of training images."""
    sources = [_dataset(e) for e in exports]
    classes = [json.loads((s / "classes.json").read_text())["classes"] for s in sources]
    if any([c["name"] for c in cls] != [c["name"] for c in classes[0]] for cls in classes):
        raise SystemExit("the exports have different classes; export them with the same --classes")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for sub in ("imagesTr", "masksTr", "labelsTr", "sidecars"):
        (tmp / sub).mkdir(parents=True)
    rows = []
    for k, source in enumerate(sources):
        with open(source / "manifest.csv", newline="") as handle:
            manifest = [r for r in csv.DictReader(handle) if r.get("status", "ok") == "ok" and r["split"] == "train"]
        for row in manifest:
            case = row["case"]
            ct, index = case.rsplit("_v", 1)
            new = case if k == 0 else f"{ct}_v{1000 * k + int(index):04d}"
            links = [("imagesTr", f"{case}_0000.nrrd", f"{new}_0000.nrrd"), ("masksTr", f"{case}.nrrd", f"{new}.nrrd"),
                     ("sidecars", f"{case}.json", f"{new}.json")]
            if k == 0:
                links.append(("labelsTr", f"{case}.nrrd", f"{new}.nrrd"))
            for sub, name, target in links:
                os.symlink((source / sub / name).resolve(), tmp / sub / target)
            rows.append({**row, "case": new})
    with open(tmp / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for name in FILES:
        shutil.copyfile(sources[0] / name, tmp / name)
    dataset_json = json.loads((tmp / "dataset.json").read_text())
    dataset_json["numTraining"] = len(rows)
    dataset_json["description"] = "Merged for xrayseg train (merge_exports.py): " + ", ".join(s.name for s in sources)
    (tmp / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return len(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("exports", type=Path, nargs="+", help="export folders (the first one's tables are kept)")
    parser.add_argument("--out", type=Path, required=True, help="the merged Dataset<ID>_<Name> folder")
    args = parser.parse_args(argv)
    print(f"{merge(args.exports, args.out)} training images -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
