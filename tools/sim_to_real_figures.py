"""Figures of issue 10's export features on the sample chest CT (README): truncation mask, virtual patients,
domain randomisation, contrast suppression. Not run by the tests.

    .venv/bin/python tools/sim_to_real_figures.py      # writes Resources/Screenshots/export-*.png (~1 min)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "XraySegSim"), str(REPO / "XraySegInfer")]
OUT = REPO / "Resources" / "Screenshots"
SIZE = 320


def _setup():
    from XraySegSimLib import DrrProjector, LabelClasses, read_volume, views
    from XraySegSimLib.export_geometry import labelled_centroid_ras
    from XraySegSimLib.materials import MaterialModel
    from XraySegSimLib.sample_data import fetch_sample_chest_ct

    os.environ.setdefault("XRAYSEG_CACHE", str(REPO / ".cache" / "xrayseg"))
    sample = fetch_sample_chest_ct()
    ct, labels = read_volume(sample.ct_path), read_volume(sample.labels_path)
    projector = DrrProjector(ct, labels, LabelClasses.totalsegmentator_bones(), materials=MaterialModel())
    iso = labelled_centroid_ras(projector.packed, projector.ct.ijk_to_ras)
    projector.release_packed()
    return projector, views.from_preset("chest-pa", iso, SIZE)


def _tile(image: np.ndarray, caption: str, rgb: np.ndarray | None = None):
    from PIL import Image, ImageDraw, ImageFont

    pixels = rgb if rgb is not None else np.repeat((np.clip(image, 0, 1) * 255).astype(np.uint8)[..., None], 3, 2)
    tile = Image.fromarray(pixels)
    canvas = Image.new("RGB", (tile.width, tile.height + 34), (255, 255, 255))
    canvas.paste(tile, (0, 0))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=12)
    for n, line in enumerate(caption.split("\n")[:2]):
        draw.text((4, tile.height + 3 + 15 * n), line, fill=(0, 0, 0), font=font)
    return canvas


def _row(tiles, path: Path) -> None:
    from PIL import Image

    width = sum(t.width for t in tiles) + 6 * (len(tiles) - 1)
    canvas = Image.new("RGB", (width, max(t.height for t in tiles)), (255, 255, 255))
    x = 0
    for t in tiles:
        canvas.paste(t, (x, 0))
        x += t.width + 6
    canvas.save(path, optimize=True)
    print(f"wrote {path}")


def truncation_figure(projector, geometry) -> None:
    from XraySegSimLib import physics
    from XraySegSimLib.truncation import CutFaces

    result = projector.render(geometry)
    image = physics.simulate_radiograph(result, "chest-pa", rng=0).image
    mask = CutFaces(projector.packed, projector.ct.ras_to_ijk).mask(geometry)
    rgb = np.repeat((image * 255).astype(np.uint8)[..., None], 3, 2)
    rows, cols = np.indices(mask.shape)
    rgb[mask & ((rows + cols) % 8 < 3)] = (255, 0, 255)
    bones = result.masks().any(axis=0)
    edge = bones & ~np.roll(bones, 1, 0) | bones & ~np.roll(bones, 1, 1)
    rgb[edge & ~mask] = (0, 220, 90)
    _row([_tile(image, "simulated chest PA of the sample CT\n(its scan ends at the clavicles)"),
          _tile(image, f"ignore (magenta): {mask.mean():.0%} of pixels,\nrays through the body beyond a cut face",
                rgb)], OUT / "export-truncation.png")


def virtual_patients_figure(projector, geometry) -> None:
    from XraySegSimLib import physics
    from XraySegSimLib.virtual_patient import VirtualPatientRanges, setup_patient

    tiles = [_tile(physics.simulate_radiograph(projector.render(geometry), "chest-pa", rng=0).image,
                   "the CT as it is\n ")]
    for index in range(3):
        patient = setup_patient(projector, VirtualPatientRanges(), 0, "sample", index, threads=2)
        v = patient.values
        result = patient.projector.render(geometry)
        tiles.append(_tile(physics.simulate_radiograph(result, "chest-pa", rng=0).image,
                           "scale R/A/S " + "/".join(f"{s:.2f}" for s in v["scale_ras"])
                           + f"\nsoft {v['soft_tissue']:.2f} bone {v['bone_density']:.2f} |u|<{v['max_displacement_mm']:.0f}mm"))
    _row(tiles, OUT / "export-virtual-patients.png")


def domain_figure(projector, geometry) -> None:
    import copy

    from XraySegSimLib import physics
    from XraySegSimLib.domain_randomisation import add_devices, apply, domain_rng, draw_plan

    base = projector.render(geometry)
    tiles = []
    for view in (1, 3, 4, 6, 9):
        plan = draw_plan("strong", domain_rng(0, "sample", view), base.line_integral.shape)
        result = copy.deepcopy(base)
        add_devices(result, plan)
        image = apply(physics.simulate_radiograph(result, "chest-pa", rng=view).image, plan)
        extras = [name for name, on in (("devices", plan["devices"]), ("collimation", plan["collimation"]),
                                        ("text", plan["text"]), ("dropout", plan["dropout"]),
                                        ("inverted", plan["inversion"])) if on]
        tiles.append(_tile(image, f"{plan['style']}, {plan['lut']['kind']} LUT\n{', '.join(extras) or '-'}"))
    _row(tiles, OUT / "export-domain-randomisation.png")


def contrast_figure(geometry) -> None:
    """The sample CT as it is (contrast-enhanced) and made virtual non-contrast, same view and noise."""
    from XraySegSimLib import DrrProjector, LabelClasses, physics, read_volume
    from XraySegSimLib.contrast import suppress_contrast
    from XraySegSimLib.export_inputs import names_table
    from XraySegSimLib.materials import MaterialModel
    from XraySegSimLib.sample_data import fetch_sample
    from XraySegSimLib.volume import Volume

    sample = fetch_sample("chest-ct")
    ct, labels = read_volume(sample["ct"]), read_volume(sample["labels"])
    hu, report = suppress_contrast(ct.array, labels.array, names_table(str(sample["names"])),
                                   np.linalg.norm(ct.ijk_to_ras[:3, :3], axis=0))
    tiles, images = [], []
    for volume, caption in ((ct, "the sample CT as it is\n(heart, aorta, veins with iodine)"),
                            (Volume(hu, ct.ijk_to_ras, ct.name),
                             f"--suppress-contrast: {report['suppressed_ml']:.0f} ml\n"
                             f"from median {report['median_hu_before']:.0f} HU to 40 HU")):
        projector = DrrProjector(volume, labels, LabelClasses.totalsegmentator_bones(), materials=MaterialModel())
        # the log signal before the vendor processing, which would equalise the difference away
        images.append(physics.simulate_radiograph(projector.render(geometry), "chest-pa", rng=0).log_image)
        tiles.append(caption)
    low, high = np.percentile(np.concatenate([i.ravel() for i in images]), [1, 99.5])
    shown = [np.clip((i - low) / (high - low), 0, 1) for i in images]
    difference = np.clip((images[0] - images[1]) / max(float((images[0] - images[1]).max()), 1e-6), 0, 1)
    _row([_tile(shown[0], tiles[0]), _tile(shown[1], tiles[1]),
          _tile(difference, "difference of the two (log signal),\nwhite = most")], OUT / "export-contrast.png")


if __name__ == "__main__":
    projector, geometry = _setup()
    if sys.argv[1:] == ["contrast"]:
        contrast_figure(geometry)
        raise SystemExit(0)
    truncation_figure(projector, geometry)
    virtual_patients_figure(projector, geometry)
    domain_figure(projector, geometry)
    contrast_figure(geometry)
