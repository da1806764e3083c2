"""The Sim subcommands of ``xrayseg`` (render, demo, fetch-sample, views, export).

The command itself is ``XraySegInferLib.entry`` (Infer may import Sim, never the reverse); it turns an
``XraySegError`` into one line and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from . import views
from .errors import GeometryError, InputError, XraySegError
from .export_inputs import names_table
from .geometry import XrayGeometry
from .labels import LabelClasses, parse_group_spec
from .materials import MaterialModel
from .projector import MU_WATER_60KEV_PER_MM, DrrProjector
from .volume import Volume, read_volume

CLASS_CHOICES_HELP = (
    "which labels to project: 'bones' (default: every TotalSegmentator bone as its own class), 'all' (every "
    "label value present), or groups such as \"ribs = rib_left_1..12, rib_right_1..12; spine = vertebrae_*\" "
    "given inline or as a path to a text file with one group per line"
)


def _add_geometry_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("geometry (RAS millimetres; see README 'Geometry conventions')")
    g.add_argument("--view", default="chest-pa", choices=views.PRESET_NAMES,
                   help="clinical view preset (default: chest-pa)")
    g.add_argument("--size", type=int, default=512,
                   help="detector pixels along its longer side; pixels are square (default: 512)")
    g.add_argument("--sdd", type=float, help="source-to-detector distance, mm (default: the preset's)")
    g.add_argument("--sid", type=float, help="source-to-isocentre distance, mm (default: the preset's)")
    g.add_argument("--detector-mm", type=float, nargs=2, metavar=("WIDTH", "HEIGHT"),
                   help="physical detector size, mm (default: the preset's)")
    g.add_argument("--isocenter", default="labels",
                   help="point the view is aimed at: 'labels' (centroid of the projected labels, default; the CT "
                        "centre if there are none), 'center' (CT grid centre), or 'R,A,S' in mm")
    g.add_argument("--lao", type=float, default=0.0, help="rotate the set-up: LAO (+) / RAO (-) degrees")
    g.add_argument("--cranial", type=float, default=0.0, help="rotate the set-up: cranial (+) / caudal (-) degrees")
    g.add_argument("--geometry", type=Path,
                   help="JSON geometry (as written in drr.json 'geometry'); overrides the preset options")
    g.add_argument("--projection-matrix", type=Path,
                   help="3x4 projection matrix (text, 3 rows of 4 numbers, RAS -> pixel); needs --pixel-spacing")
    g.add_argument("--pixel-spacing", type=float, nargs=2, metavar=("COLUMN_MM", "ROW_MM"),
                   help="detector pixel spacing for --projection-matrix")
    g.add_argument("--detector-pixels", type=int, nargs=2, metavar=("COLUMNS", "ROWS"),
                   help="detector size in pixels for --projection-matrix (default: --size square)")


def build_parser() -> argparse.ArgumentParser:
    """The Sim subcommands alone (the full ``xrayseg`` parser is XraySegInferLib.entry.build_parser)."""
    parser = argparse.ArgumentParser(
        prog="xrayseg",
        description="XraySeg: simulated radiographs (DRRs) with exactly projected bone labels from CT.",
    )
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    return parser


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    """Register render, demo, fetch-sample, views and export; each sets ``handler`` (args -> exit status)."""
    render = sub.add_parser(
        "render", help="render one DRR with projected labels",
        description="Render a DRR of a CT and project its label map in the same pass. Writes drr.nrrd "
                    "(line integral, placed on the detector in RAS), drr.png, labels.nrrd (single label), "
                    "labels.seg.nrrd (overlapping masks), labels.png, overlay.png and drr.json (geometry, P).",
    )
    render.add_argument("--ct", type=Path, required=True, help="CT volume in HU: NIfTI, NRRD, MHA or DICOM folder")
    render.add_argument("--labels", type=Path, help="label map on the CT grid, or bone meshes (a folder of "
                                                    ".stl/.obj/.ply/.vtk/.vtp in RAS mm named by file, or a CSV "
                                                    "file,name[,value]); optional: DRR only without it")
    render.add_argument("--names", default="totalsegmentator",
                        help="label value names: 'totalsegmentator' (v1 table, default), 'none' (label_<value>), "
                             "or a CSV with columns value,name")
    render.add_argument("--classes", default="bones", help=CLASS_CHOICES_HELP)
    render.add_argument("--out", type=Path, required=True, help="output folder (created if needed)")
    render.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    render.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"),
                        help="where to trace the rays: cpu (default), cuda (an error without a CUDA GPU) or auto "
                        "(the GPU when there is one)")
    render.add_argument("--mu-water", type=float, default=MU_WATER_60KEV_PER_MM,
                        help=f"attenuation of water, 1/mm (default {MU_WATER_60KEV_PER_MM}, water at 60 keV)")
    render.add_argument("--save-thickness", action="store_true", help="also write thickness.nrrd (mm per class)")
    render.add_argument("--physics", default="none",
                        help="realistic radiograph too (radiograph.nrrd/.png): a physics preset (chest-pa, wrist-pa, "
                             "wrist-lateral, lumbar-lateral, pelvis-ap, hip-ap), 'auto' (the view's preset, if any), "
                             "or 'none' (default)")
    render.add_argument("--seed", type=int, default=0, help="seed of the physics noise (default 0)")
    _add_geometry_options(render)
    render.set_defaults(handler=lambda args: _done(run_render(args)))

    demo = sub.add_parser("demo", help="fetch the sample chest CT and render a PA chest DRR with all bone labels")
    demo.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder (default: out/demo)")
    demo.add_argument("--size", type=int, default=512, help="detector pixels (default: 512)")
    demo.set_defaults(handler=lambda args: _done(run_demo(args)))

    from .samples_cli import add_subcommands as add_sample_subcommands  # fetch-sample, label-transfer

    add_sample_subcommands(sub)
    views_parser = sub.add_parser("views", help="list the view presets with their distances and detector sizes")
    views_parser.set_defaults(handler=run_views)
    from .export_cli import add_export_parser, run_export_command  # xrayseg export (batch training sets)

    add_export_parser(sub).set_defaults(handler=run_export_command)


def _done(_result: object) -> int:
    return 0


def _names_table(option: str) -> dict[int, str] | None:
    if option == "none":
        return None
    return names_table(option)


def _classes(option: str, names_option: str, names: dict[int, str] | None) -> LabelClasses | None:
    """None means: one class per label value present."""
    if option == "all" or (option == "bones" and names_option != "totalsegmentator"):
        return None if names is None else LabelClasses.from_values(names)
    if option == "bones":
        return LabelClasses.totalsegmentator_bones()
    if names is None:
        raise InputError("--classes with group names needs a names table (--names)")
    text = Path(option).read_text() if Path(option).is_file() else option
    return LabelClasses.from_names(names, parse_group_spec(text, list(names.values())))


def _isocenter(option: str, ct: Volume, projector: DrrProjector) -> np.ndarray:
    if option == "center":
        return ct.center_ras
    if option == "labels":
        labelled = projector.packed >> 16 != 0
        projector.release_packed()  # the render reads the palette, when there is one
        return ct.centroid_ras(labelled) if labelled.any() else ct.center_ras
    try:
        point = np.array([float(x) for x in option.split(",")])
    except ValueError:
        point = np.zeros(0)
    if point.shape != (3,):
        raise InputError(f"--isocenter must be 'labels', 'center' or 'R,A,S' in mm, got '{option}'")
    return point


MIN_DETECTOR_PIXELS = 8


def check_geometry_options(args: argparse.Namespace) -> None:
    """Refuse impossible numbers before any file is read (one line each, with the fix)."""
    def positive(name: str, values) -> None:
        if values is not None and not all(np.isfinite(v) and v > 0 for v in np.atleast_1d(values)):
            raise InputError(f"{name} must be positive, got {values}")

    if args.size < MIN_DETECTOR_PIXELS:
        raise InputError(f"--size must be at least {MIN_DETECTOR_PIXELS} pixels, got {args.size}")
    positive("--sdd", args.sdd)
    positive("--sid", args.sid)
    positive("--detector-mm", args.detector_mm)
    positive("--pixel-spacing", args.pixel_spacing)
    if args.detector_pixels is not None and min(args.detector_pixels) < 1:
        raise InputError(f"--detector-pixels must be at least 1 1, got {args.detector_pixels}")
    sdd = args.sdd or (views.PRESETS[args.view].source_to_detector_mm if args.view in views.PRESETS else None)
    if args.sid is not None and sdd is not None and args.sid >= sdd:
        raise InputError(f"--sid {args.sid:g} mm must be smaller than the source-to-detector distance {sdd:g} mm "
                         "(the isocentre lies between source and detector)")


def _geometry_file(path: Path) -> XrayGeometry:
    if not path.is_file():
        raise InputError(f"geometry JSON not found: {path}")
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return XrayGeometry.from_dict(data.get("geometry", data))
    except GeometryError as error:
        raise InputError(f"--geometry {path}: {error}") from None
    except (ValueError, TypeError, UnicodeDecodeError) as error:
        raise InputError(f"--geometry {path} is not a geometry JSON ({type(error).__name__}: {error}); give a "
                         "drr.json or its 'geometry' object") from None


def _projection_matrix(path: Path) -> np.ndarray:
    if not path.is_file():
        raise InputError(f"projection matrix file not found: {path}")
    try:
        matrix = np.loadtxt(path, ndmin=2)
    except (ValueError, UnicodeDecodeError) as error:
        raise InputError(f"--projection-matrix {path}: not a text file of numbers ({error})") from None
    if matrix.size != 12 or not np.all(np.isfinite(matrix)):
        raise InputError(f"--projection-matrix {path}: expected 3 rows of 4 finite numbers, got "
                         f"{matrix.size} values")
    return matrix.reshape(3, 4)


def geometry_from_args(args: argparse.Namespace, isocenter: np.ndarray) -> XrayGeometry:
    if args.geometry:
        return _geometry_file(args.geometry)
    if args.projection_matrix:
        if not args.pixel_spacing:
            raise InputError("--projection-matrix needs --pixel-spacing COLUMN_MM ROW_MM (P does not contain it)")
        matrix = _projection_matrix(args.projection_matrix)
        pixels = tuple(args.detector_pixels) if args.detector_pixels else (args.size, args.size)
        return XrayGeometry.from_projection_matrix(matrix, pixels, tuple(args.pixel_spacing), in_front=isocenter)
    return views.from_preset(
        args.view, isocenter, args.size, args.sdd, args.sid,
        tuple(args.detector_mm) if args.detector_mm else None, args.lao, args.cranial,
    )


def check_geometry_sees_volume(geometry: XrayGeometry, ct: Volume) -> None:
    """Refuse a set-up in which no ray crosses the CT (it would render an all-zero image): the CT wholly behind
    the source, wholly beyond the detector, or projecting outside the detector."""
    corners = ct.corners_ras()
    n = geometry.principal_direction
    depth = (corners - geometry.source) @ n
    sdd = geometry.source_to_detector_distance
    if depth.max() <= 0:
        raise GeometryError("the CT lies behind the source (the detector is on the other side of the source); "
                            "put the CT between the source and the detector")
    if depth.min() >= sdd:
        raise GeometryError("the CT lies beyond the detector; put the detector behind the CT, seen from the source")
    if depth.min() <= 0:
        return  # the source is at or inside the CT's box: the projector's own check decides
    pixels = geometry.project(corners)
    cols, rows = geometry.size
    if (pixels[:, 0].max() < -0.5 or pixels[:, 0].min() > cols - 0.5 or pixels[:, 1].max() < -0.5
            or pixels[:, 1].min() > rows - 0.5):
        raise GeometryError("the CT projects outside the detector (no ray crosses it); aim the view at the CT "
                            "(--isocenter) or enlarge the detector")


# Everything ``render`` may write into its --out (a folder holding anything else is not replaced).
RENDER_FILES = frozenset({"drr.nrrd", "drr.png", "drr.json", "labels.nrrd", "labels.seg.nrrd", "labels.png",
                          "overlay.png", "thickness.nrrd", "radiograph.nrrd", "radiograph.png",
                          "radiograph_overlay.png"})


def run_render(args: argparse.Namespace) -> dict[str, Path]:
    from .io import check_output_folder, replace_folder

    check_geometry_options(args)
    check_output_folder(args.out, RENDER_FILES, "render")  # before the (long) work
    ct = read_volume(args.ct, "CT")
    from .mesh_labels import is_mesh_labels_source, load_mesh_labels

    if args.labels and is_mesh_labels_source(args.labels):  # bone meshes: voxelised onto the CT grid
        meshes = load_mesh_labels(args.labels, ct)
        for note in meshes.notes:
            print(f"note: {note}", file=sys.stderr)
        labels, names = meshes.labels, meshes.names
        classes = _classes("all" if args.classes == "bones" else args.classes, "meshes", names)
    else:
        labels = read_volume(args.labels, "label map") if args.labels else None
        names = _names_table(args.names) if labels is not None else None
        classes = _classes(args.classes, args.names, names) if labels is not None else None
    physics_preset = _physics_preset(args.physics, args.view)
    materials = MaterialModel() if physics_preset else None
    projector = DrrProjector(ct, labels, classes, args.mu_water, args.threads, names, materials,
                             device=getattr(args, "device", "cpu"))
    if labels is not None and len(projector.classes) == 0:
        raise InputError(
            f"the label map {args.labels} holds none of the requested classes ({args.classes}); it may be "
            "empty, or use other label values: try --classes all or --names none"
        )
    geometry = geometry_from_args(args, _isocenter(args.isocenter, ct, projector))
    check_geometry_sees_volume(geometry, ct)
    started = time.perf_counter()
    result = projector.render(geometry)
    elapsed_ms = (time.perf_counter() - started) * 1000
    from .io import write_render_outputs

    sidecar = {"ct": str(args.ct), "labels": str(args.labels) if args.labels else None,
               "mu_water_per_mm": args.mu_water, "render_ms": round(elapsed_ms, 1)}
    if physics_preset:
        from . import physics

        simulated = physics.simulate_radiograph(result, physics_preset, rng=args.seed)
        sidecar["physics"] = {"preset": physics_preset, "seed": args.seed,
                              "params": dataclasses.asdict(simulated.params)}
    # A fresh folder swapped in at the end: no mixture with an earlier render, no stale label files.
    with replace_folder(args.out, RENDER_FILES, "render") as staging:
        paths = write_render_outputs(result, staging, sidecar, args.save_thickness)
        if physics_preset:
            paths.update(_write_radiograph(simulated.image, result, staging))
    paths = {kind: Path(args.out) / path.name for kind, path in paths.items()}
    if result.unknown_label_values:
        print(f"note: label values {result.unknown_label_values} are not in the names table; ignored",
              file=sys.stderr)
    print(f"rendered {geometry.size[0]}x{geometry.size[1]} {geometry.view} with {len(result.classes)} classes "
          f"in {elapsed_ms:.0f} ms -> {args.out}")
    return paths


def _physics_preset(option: str, view: str) -> str | None:
    if option == "none":
        return None
    from . import physics

    if option == "auto":
        from .export import PHYSICS_FOR_VIEW

        view = view if view in physics.PRESETS else PHYSICS_FOR_VIEW.get(view, view)
        return view if view in physics.PRESETS else None
    if option not in physics.PRESETS:
        raise InputError(f"--physics: unknown preset '{option}'; use one of {', '.join(sorted(physics.PRESETS))}, "
                         "auto or none")
    return option


def _write_radiograph(image: np.ndarray, result, out_dir: Path) -> dict[str, Path]:
    """The realistic radiograph (float32 in [0, 1], MONOCHROME2) on the detector, its PNG and its overlay."""
    from .io import write_detector_image, write_png
    from .overlay import overlay_rgb

    out = Path(out_dir)
    paths = {"radiograph": out / "radiograph.nrrd", "radiograph_png": out / "radiograph.png"}
    write_detector_image(paths["radiograph"], image.astype(np.float32), result.geometry)
    gray = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    write_png(paths["radiograph_png"], gray)
    if len(result.classes):
        paths["radiograph_overlay_png"] = out / "radiograph_overlay.png"
        write_png(paths["radiograph_overlay_png"],
                  overlay_rgb(gray, result.masks(), result.label_image(), result.classes))
    return paths


def run_demo(args: argparse.Namespace) -> dict[str, Path]:
    from .sample_data import fetch_sample_chest_ct

    sample = fetch_sample_chest_ct()
    render_args = build_parser().parse_args([
        "render", "--ct", str(sample.ct_path), "--labels", str(sample.labels_path), "--view", "chest-pa",
        "--size", str(args.size), "--out", str(args.out), "--physics", "chest-pa",
    ])
    paths = run_render(render_args)
    for kind, path in paths.items():
        print(f"  {kind:13s} {path}")
    return paths


def run_views(args: argparse.Namespace) -> int:
    for preset in views.PRESETS.values():
        print(f"{preset.name:15s} SDD {preset.source_to_detector_mm:6.0f}  SID "
              f"{preset.source_to_isocenter_mm:6.0f}  detector {preset.detector_mm[0]:.0f}x"
              f"{preset.detector_mm[1]:.0f} mm  {preset.description}")
    return 0
