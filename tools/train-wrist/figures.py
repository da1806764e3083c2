"""The README's wrist pictures (Resources/Screenshots/wrist-*.png), from a phantom with a seed never trained on.

1. ``wrist-phantom-3d.png``: the phantom's bones (surfaces of the label map; the 10 bones of the wrist paper in
   their class colours, metacarpals and phalanges grey) inside its translucent skin, rendered offscreen by VTK.
2. ``wrist-drr-pa-lateral.png``: PA and lateral radiographs (realistic wrist physics) with the 10 projected labels.
3. ``wrist-model-result.png`` (with ``--model``): the bundled model's segmentation of the same PA and lateral
   views, outlines over the radiograph, with the Dice against the projected labels in the title row.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "XraySegSim"), str(ROOT / "XraySegInfer")]

from XraySegSimLib.io import write_png  # noqa: E402

CLASSES = ROOT / "tools" / "train-wrist" / "classes.json"
SEED = 4242


def class_colors() -> dict[str, tuple[float, float, float]]:
    return {c["name"]: tuple(c["color"]) for c in json.loads(CLASSES.read_text())["classes"]}


def render_3d(phantom: Path, out: Path, size=(900, 700)) -> None:
    import vtk

    from XraySegSimLib.labels import read_names_table
    from XraySegSimLib.volume import read_volume

    names = {v: n for v, (n, _) in read_names_table(phantom / "names.csv").items()}
    colors = class_colors()
    renderer = vtk.vtkRenderer()
    renderer.SetBackground(1.0, 1.0, 1.0)
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(*size)
    window.AddRenderer(renderer)

    def image_data(volume, array):
        from vtk.util.numpy_support import numpy_to_vtk

        image = vtk.vtkImageData()
        image.SetDimensions(*volume.shape_ijk)
        image.SetSpacing(*volume.spacing)
        image.SetOrigin(*volume.ijk_to_ras[:3, 3])
        image.GetPointData().SetScalars(numpy_to_vtk(np.ascontiguousarray(array).ravel(), deep=True))
        return image

    def add_surface(source, color, opacity=1.0):
        smooth = vtk.vtkWindowedSincPolyDataFilter()
        smooth.SetInputConnection(source.GetOutputPort())
        smooth.SetNumberOfIterations(15)
        smooth.SetPassBand(0.05)
        normals = vtk.vtkPolyDataNormals()
        normals.SetInputConnection(smooth.GetOutputPort())
        mapper = vtk.vtkPolyDataMapper()
        mapper.SetInputConnection(normals.GetOutputPort())
        mapper.ScalarVisibilityOff()
        actor = vtk.vtkActor()
        actor.SetMapper(mapper)
        actor.GetProperty().SetColor(*color)
        actor.GetProperty().SetOpacity(opacity)
        renderer.AddActor(actor)

    labels = read_volume(phantom / "labels.nii.gz")
    ct = read_volume(phantom / "ct.nii.gz")
    label_image = image_data(labels, labels.array.astype(np.uint8))
    for value, name in names.items():
        surface = vtk.vtkDiscreteFlyingEdges3D()
        surface.SetInputData(label_image)
        surface.SetValue(0, value)
        add_surface(surface, colors.get(name, (0.82, 0.80, 0.74)))
    skin = vtk.vtkFlyingEdges3D()
    skin.SetInputData(image_data(ct, ct.array.astype(np.float32)))
    skin.SetValue(0, -400.0)
    add_surface(skin, (0.95, 0.75, 0.65), 0.18)
    camera = renderer.GetActiveCamera()
    centre = labels.centroid_ras(np.isin(labels.array, list(range(1, 11))))
    camera.SetFocalPoint(*centre)
    camera.SetPosition(*(centre + np.array([-260.0, -320.0, 60.0])))  # from behind (dorsal), ulnar side, above
    camera.SetViewUp(0.0, 0.0, -1.0)  # fingers up, as on the radiographs
    renderer.ResetCamera()
    camera.Zoom(1.35)
    window.Render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.Update()
    from vtk.util.numpy_support import vtk_to_numpy

    image = grab.GetOutput()
    w, h, _ = image.GetDimensions()
    rgb = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(h, w, -1)[::-1, :, :3]
    write_png(out, np.ascontiguousarray(rgb))


def render_views(phantom: Path, size: int = 384):
    """{view: (radiograph in [0, 1], projected masks (10, H, W), spacing, classes)} for PA and lateral."""
    from XraySegSimLib import DrrProjector, physics, read_volume, views
    from XraySegSimLib.export_inputs import load_mapping, names_table
    from XraySegSimLib.materials import MaterialModel

    ct = read_volume(phantom / "ct.nii.gz")
    labels = read_volume(phantom / "labels.nii.gz")
    classes = load_mapping(str(CLASSES)).classes_for(names_table(str(phantom / "names.csv")))
    projector = DrrProjector(ct, labels, classes, threads=2, materials=MaterialModel())
    isocenter = ct.centroid_ras(np.isin(labels.array, sorted(classes.values))) + np.array([0.0, 0.0, -25.0])
    out = {}
    for view, preset in (("PA", "wrist-pa"), ("lateral", "wrist-lateral")):
        geometry = views.from_preset(preset, isocenter, size=size, detector_mm=(165.0, 165.0))
        result = projector.render(geometry)
        sim = physics.simulate_radiograph(result, preset, rng=SEED)
        spacing = (float(geometry.spacing[1]), float(geometry.spacing[0]))
        out[view] = (sim.image, result.masks() > 0, spacing, classes)
    return out


def _overlay(image: np.ndarray, masks: np.ndarray, colors, fill: float) -> np.ndarray:
    from XraySegSimLib.overlay import mask_outline

    rgb = np.repeat(np.clip(image, 0, 1)[..., None], 3, axis=2)
    for mask, color in zip(masks, colors):
        color = np.asarray(color, float)
        rgb[mask] = (1 - fill) * rgb[mask] + fill * color
        rgb[mask_outline(mask)] = color
    return (rgb * 255).astype(np.uint8)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "Resources" / "Screenshots")
    parser.add_argument("--model", type=Path, help="model package: also write wrist-model-result.png")
    args = parser.parse_args()
    from XraySegSimLib.phantom.wrist import random_params, write_wrist_phantom

    with tempfile.TemporaryDirectory() as tmp:
        phantom = Path(tmp)
        write_wrist_phantom(phantom, random_params(SEED))
        render_3d(phantom, args.out / "wrist-phantom-3d.png")
        rendered = render_views(phantom)
    colors = [c for c in class_colors().values()]
    panels = []
    for image, masks, _, _ in rendered.values():
        panels += [(np.clip(image, 0, 1) * 255).astype(np.uint8)[..., None].repeat(3, 2),
                   _overlay(image, masks, colors, 0.35)]
    write_png(args.out / "wrist-drr-pa-lateral.png", np.concatenate(panels, axis=1))
    if args.model:
        from XraySegInferLib.inference import Predictor
        from XraySegInferLib.metrics import per_class_metrics
        from XraySegInferLib.reader import Radiograph

        predictor = Predictor.from_package(args.model, "cpu")
        panels, report = [], {}
        for view, (image, masks, spacing, classes) in rendered.items():
            prediction = predictor.predict(Radiograph(image, "MONOCHROME2", spacing, view))
            dice = per_class_metrics(prediction.masks, masks, spacing, hd95=False)["dice"]
            report[view] = {"mean_dice": float(np.nanmean(dice)),
                            "per_class": dict(zip(classes.names, [round(float(d), 3) for d in dice]))}
            panels += [_overlay(image, masks, colors, 0.0), _overlay(image, prediction.masks.astype(bool), colors, 0.35)]
        write_png(args.out / "wrist-model-result.png", np.concatenate(panels, axis=1))
        print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
