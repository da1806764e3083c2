"""Issue 12, as a table: every bad input or fault a new user tried, through the real ``xrayseg`` command.

One row per numbered item of the issue (here items 1-6; items 7-10 in test_safety_faults.py, what already held in
test_safety_held.py; the table's machinery in safety_table.py). Each row runs the command (``entry.main`` in this
process, or a subprocess where a signal, a kill or a file-size limit is involved) on small real files written to
tmp_path, and asserts the exit status, the message (one line, no traceback), and what is
on disk afterwards: nothing half-written, nothing lost, and for the crafted pickles, no code ran (the pickle would
create a marker file).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from safety_table import Case, copy_package, crafted_pickle, expect, export_args, new_table, run_row
from safety_table import dataset, files  # noqa: F401 (fixtures)

ROWS, row = new_table()


@row("1-train-resume-crafted-pickle-checkpoint")
def _(tmp, f, dataset):
    out = tmp / "run"
    crafted_pickle(out / "checkpoint_last.pt", tmp / "PWNED", step=1)
    return Case(["train", str(dataset), "--out", str(out), "--resume", "--steps", "2", "--quiet"], 2,
                r"weights_only=True.*could run code.*--trust-pickle",
                lambda: expect(not (tmp / "PWNED").exists() and not (out / "model").exists()), watch=out)


@row("1-train-resume-truncated-checkpoint")
def _(tmp, f, dataset):
    out = tmp / "run"
    out.mkdir()
    (out / "checkpoint_last.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"x\"")
    return Case(["train", str(dataset), "--out", str(out), "--resume", "--steps", "2", "--quiet"], 2,
                r"checkpoint .* cannot be read \(truncated", watch=out)


@row("1-train-resume-other-architecture", slow=True)
def _(tmp, f, dataset):
    from XraySegInferLib.entry import main

    out = tmp / "run"
    quick = ["--recipe", "quick", "--patch-size", "32", "--threads", "1", "--quiet", "--val-every", "2"]
    assert main(["train", str(dataset), "--out", str(out), "--steps", "2", *quick]) == 0
    assert (out / "checkpoint_last.safetensors").is_file() and not list(out.glob("*.pt"))
    return Case(["train", str(dataset), "--out", str(out), "--resume", "--steps", "4", "--channels", "4", "8",
                 *quick], 2, r"cannot resume from .*checkpoint_last.safetensors: it was trained with architecture",
                watch=out)


def _nnunet_folder(tmp: Path, marker: Path) -> Path:
    results = tmp / "nnUNetTrainer__nnUNetPlans__2d"
    results.mkdir()
    (results / "plans.json").write_text(json.dumps({"dataset_name": "x", "configurations": {}}))
    (results / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "rib": 1}}))
    crafted_pickle(results / "fold_0" / "checkpoint_final.pth", marker)
    return results


@row("2-infer-nnunet-crafted-pickle")
def _(tmp, f, dataset):
    results = _nnunet_folder(tmp, tmp / "PWNED")
    return Case(["infer", str(f["xray.png"]), "--model", str(results), "--out", str(tmp / "out")], 2,
                r"refusing to load this nnU-Net checkpoint: torch.load\(weights_only=True\) cannot read it.*"
                r"(builtins|io).open.*--trust-pickle",
                lambda: expect(not (tmp / "PWNED").exists() and not (tmp / "out").exists()))


@row("2-infer-nnunet-trust-pickle-overrides", slow=True)
def _(tmp, f, dataset):
    pytest.importorskip("nnunetv2")
    results = _nnunet_folder(tmp, tmp / "PWNED")
    # The override does unpickle (the marker appears: the refusal above is what protects), warns, and the broken
    # folder still ends in one line.
    return Case(["infer", str(f["xray.png"]), "--model", str(results), "--out", str(tmp / "out"), "--trust-pickle"],
                2, r"warning: --trust-pickle: unpickling(.|\n)*nnU-Net could not load this results folder",
                lambda: expect((tmp / "PWNED").exists() and not (tmp / "out").exists()), subprocess=True)


@row("3-export-resume-other-ct-same-name-elsewhere")
def _(tmp, f, dataset):
    from XraySegInferLib.entry import main

    out = tmp / "out"
    assert main(export_args(f["ct"], f["labels"], out)) == 0
    return Case(export_args(f["other_ct"], f["labels"], out, "--resume"), 2,
                r"cannot resume .*: the CT of ct was .*ct.nii.gz \(sha256 [0-9a-f]{12}\.\.\.\) and is now "
                r".*other/ct.nii.gz.*nothing was changed", watch=out)


@row("3-export-resume-ct-overwritten-in-place")
def _(tmp, f, dataset):
    import shutil

    from XraySegInferLib.entry import main

    out, ct = tmp / "out", tmp / "ct.nii.gz"
    shutil.copyfile(f["ct"], ct)
    assert main(export_args(ct, f["labels"], out)) == 0
    shutil.copyfile(f["other_ct"], ct)  # same path, other content
    return Case(export_args(ct, f["labels"], out, "--resume"), 2, r"the CT of ct was .*\(sha256 .*and is now", watch=out)


@row("4-constant-radiograph")
def _(tmp, f, dataset):
    return Case(["infer", str(f["constant.png"]), "--model", str(f["package"]), "--out", str(tmp / "out")], 2,
                r"constant image \(every pixel 90\)", lambda: expect(not (tmp / "out").exists()))


@row("4-tiny-radiograph")
def _(tmp, f, dataset):
    return Case(["infer", str(f["tiny.png"]), "--model", str(f["package"]), "--out", str(tmp / "out")], 2,
                r"8x8 pixels is too small to be a radiograph", lambda: expect(not (tmp / "out").exists()))


def _edited_card(tmp, f, edit) -> Case:
    package = copy_package(f["package"], tmp / "package")
    card = json.loads((package / "model.json").read_text())
    edit(card)
    (package / "model.json").write_text(json.dumps(card))
    return Case(["infer", str(f["xray.png"]), "--model", str(package), "--out", str(tmp / "out")], 2,
                r"model.json: SHA-256 .* does not match the manifest.*the model card was edited.*xrayseg seal-model",
                lambda: expect(not (tmp / "out").exists()))


@row("4-model-card-permuted-class-names")
def _(tmp, f, dataset):
    def permute(card):
        card["classes"][0]["name"], card["classes"][1]["name"] = card["classes"][1]["name"], card["classes"][0]["name"]
    return _edited_card(tmp, f, permute)


@row("4-model-card-other-pixel-spacing")
def _(tmp, f, dataset):
    return _edited_card(tmp, f, lambda card: card["input"].update(pixel_spacing_mm=[0.5, 0.5]))


@row("4-model-card-edit-sealed-on-purpose-loads")
def _(tmp, f, dataset):
    from XraySegInferLib.entry import main

    package = copy_package(f["package"], tmp / "package")
    card = json.loads((package / "model.json").read_text())
    card["description"] = "edited on purpose"
    (package / "model.json").write_text(json.dumps(card))
    assert main(["seal-model", str(package)]) == 0
    return Case(["infer", str(f["xray.png"]), "--model", str(package), "--out", str(tmp / "out"),
                 "--spacing", "1", "1"], 0, "",
                lambda: expect((tmp / "out" / "segmentation.json").is_file()))


@row("4-ct-full-of-nan")
def _(tmp, f, dataset):
    return Case(["render", "--ct", str(f["nan_ct"]), "--size", "32", "--out", str(tmp / "out")], 2,
                r"64000 of 64000 voxels are NaN or infinite", lambda: expect(not (tmp / "out").exists()))


def _geometry(tmp, f) -> dict:
    from XraySegInferLib.entry import main

    assert main(["render", "--ct", str(f["ct"]), "--size", "32", "--out", str(tmp / "ref")]) == 0
    return json.loads((tmp / "ref" / "drr.json").read_text())["geometry"]


@row("4-detector-behind-source")
def _(tmp, f, dataset):
    g = _geometry(tmp, f)
    s, d = np.array(g["source_ras"]), np.array(g["detector_center_ras"])
    (tmp / "g.json").write_text(json.dumps(dict(g, detector_center_ras=(2 * s - d).tolist())))
    return Case(["render", "--ct", str(f["ct"]), "--geometry", str(tmp / "g.json"), "--out", str(tmp / "out")], 2,
                r"the CT lies behind the source", lambda: expect(not (tmp / "out").exists()))


@row("4-flipped-projection-matrix")
def _(tmp, f, dataset):
    g = _geometry(tmp, f)
    p = np.array(g["projection_matrix"])
    p[0] = -p[0]  # mirrored columns: P puts the detector beside the CT
    np.savetxt(tmp / "p.txt", p)
    spacing = [str(s) for s in g["detector_spacing_mm"]]
    return Case(["render", "--ct", str(f["ct"]), "--projection-matrix", str(tmp / "p.txt"), "--pixel-spacing",
                 *spacing, "--detector-pixels", "32", "32", "--out", str(tmp / "out")], 2,
                r"the CT projects outside the detector", lambda: expect(not (tmp / "out").exists()))


@row("5-rerender-without-labels-leaves-no-stale-files")
def _(tmp, f, dataset):
    from XraySegInferLib.entry import main

    out = tmp / "out"
    assert main(["render", "--ct", str(f["ct"]), "--labels", str(f["labels"]), "--size", "32", "--out", str(out)]) == 0
    assert (out / "labels.seg.nrrd").is_file()
    return Case(["render", "--ct", str(f["ct"]), "--size", "32", "--out", str(out)], 0, "",
                lambda: expect(sorted(p.name for p in out.iterdir()) == ["drr.json", "drr.nrrd", "drr.png"]
                                and json.loads((out / "drr.json").read_text())["labels"] is None
                                and not [p for p in tmp.iterdir() if p.name.startswith(".")]))


@row("5-render-failing-midway-keeps-the-old-render")
def _(tmp, f, dataset):
    from XraySegInferLib.entry import main

    out = tmp / "out"
    assert main(["render", "--ct", str(f["ct"]), "--labels", str(f["labels"]), "--size", "32", "--out", str(out)]) == 0
    # The same render once without a limit, so that numba's kernel cache is written before the limit applies.
    assert main(["render", "--ct", str(f["ct"]), "--size", "128", "--out", str(tmp / "warm")]) == 0
    # A file-size limit makes the OS refuse the writes part-way, as a full disk does.
    return Case(["render", "--ct", str(f["ct"]), "--size", "128", "--out", str(out)], 2,
                r"render not written: File too large.*is unchanged", watch=out,
                after=lambda: expect(not [p for p in tmp.iterdir() if p.name.startswith(".")]),
                env={"file_size_limit": 1000})


@row("5-render-refuses-a-folder-of-other-files")
def _(tmp, f, dataset):
    out = tmp / "out"
    out.mkdir()
    (out / "thesis.docx").write_text("months of work")
    return Case(["render", "--ct", str(f["ct"]), "--size", "32", "--out", str(out)], 2,
                r"holds files that are not an earlier render's \(e.g. thesis.docx\)", watch=out)


@row("5-rerender-into-a-writable-out-whose-parent-is-not")
def _(tmp, f, dataset):
    from XraySegInferLib.entry import main

    if os.geteuid() == 0:
        pytest.skip("root may write anywhere: the fallback is not reached")
    parent, out = tmp / "shared", tmp / "shared" / "mine"
    out.mkdir(parents=True)
    assert main(["render", "--ct", str(f["ct"]), "--labels", str(f["labels"]), "--size", "32", "--out", str(out)]) == 0
    parent.chmod(0o555)  # the render is staged inside --out and swapped in file by file
    return Case(["render", "--ct", str(f["ct"]), "--size", "32", "--out", str(out)], 0, "",
                lambda: expect(sorted(p.name for p in out.iterdir()) == ["drr.json", "drr.nrrd", "drr.png"]))


@row("6-infer-batch-same-base-names-and-a-bad-file")
def _(tmp, f, dataset):
    d = f["xray.png"].parent
    out = tmp / "out"
    return Case(["infer", str(d / "a" / "chest.png"), str(f["text.dcm"]), str(d / "b" / "chest.png"), "--model",
                 str(f["package"]), "--out", str(out), "--spacing", "1", "1"], 2,
                r"text.dcm: not a DICOM file(.|\n)*1 of 3 radiographs failed",
                lambda: expect(sorted(p.name for p in out.iterdir()) == ["a_chest", "b_chest"]
                                and json.loads((out / "a_chest" / "segmentation.json").read_text())["input"]
                                != json.loads((out / "b_chest" / "segmentation.json").read_text())["input"]))


@pytest.mark.parametrize("make", list(ROWS.values()))
def test_table(make, files, dataset, tmp_path, capsys):
    run_row(make, files, dataset, tmp_path, capsys)
