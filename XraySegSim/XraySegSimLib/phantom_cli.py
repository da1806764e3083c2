"""``xrayseg phantom wrist | lumbar | hip``: write a labelled virtual wrist, lumbar spine or pair of hips (CT in HU,
label map, names) from a seed."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .errors import InputError

POSE_OPTIONS = {  # option -> (WristParams/WristPose field, help)
    "flexion": ("flexion_deg", "wrist flexion in degrees (+ palmar, - dorsal)"),
    "deviation": ("deviation_deg", "wrist deviation in degrees (+ radial, - ulnar)"),
    "finger_spread": ("finger_spread_deg", "finger spread in degrees"),
    "finger_flexion": ("finger_flexion_deg", "flexion at each finger joint in degrees"),
    "scale": ("scale", "overall size factor"),
    "width_scale": ("width_scale", "width and thickness against length (proportions)"),
    "bone_density": ("bone_density", "bone density factor (scales the bone HU)"),
    "cortical_mm": ("cortical_mm", "cortical shell thickness in mm (thicker along the shafts)"),
    "soft_tissue_scale": ("soft_tissue_scale", "soft-tissue thickness factor"),
    "fat_mm": ("fat_mm", "subcutaneous fat thickness in mm"),
}


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    """Register ``xrayseg phantom wrist``."""
    from .phantom.wrist import RANGES

    phantom = sub.add_parser("phantom", help="write a labelled virtual phantom (CT + labels + names)")
    kinds = phantom.add_subparsers(dest="phantom_kind", required=True)
    wrist = kinds.add_parser(
        "wrist", help="a wrist and hand with 10 carpal/forearm bones, metacarpals and phalanges",
        description="Write DIR/ct.nii.gz (HU), DIR/labels.nii.gz, DIR/names.csv (value,name) and DIR/phantom.json "
                    "from the OpenSim hand and forearm meshes of the pose2sim==0.3.7 wheel (BSD-3-Clause; fetched "
                    "by pip on first use). Every value not given is drawn from the seed. Then e.g.: xrayseg export "
                    "--ct DIR/ct.nii.gz --labels DIR/labels.nii.gz --names DIR/names.csv --classes all "
                    "--view wrist-pa")
    wrist.add_argument("--out", type=Path, required=True, help="output folder")
    wrist.add_argument("--seed", type=int, default=0, help="random seed (default 0): same seed, same phantom")
    for option, (name, text) in POSE_OPTIONS.items():
        low, high = RANGES[name]
        wrist.add_argument(f"--{option.replace('_', '-')}", dest=option, type=float,
                           help=f"{text}; default: drawn in [{low:g}, {high:g}]")
    wrist.add_argument("--side", choices=("right", "left"), default="right", help="which hand (default right)")
    wrist.add_argument("--voxel-mm", type=float, default=0.5, help="voxel size in mm (default 0.5)")
    wrist.add_argument("--extent", choices=("wrist", "hand"), default="wrist",
                       help="'wrist' (default): distal forearm to the proximal phalanges; 'hand': to the fingertips")
    wrist.add_argument("--forearm-mm", type=float, default=60.0,
                       help="forearm length kept proximal of the distal radius, in mm (default 60)")
    wrist.set_defaults(handler=run_wrist)
    lumbar = kinds.add_parser(
        "lumbar", help="a lumbar spine (L1-L5, S1, sacrum, hip bones) in an abdomen",
        description="Write DIR/ct.nii.gz, DIR/labels.nii.gz (TotalSegmentator v2 values and names), DIR/names.csv "
                    "and DIR/phantom.json from the OpenSim lumbar, sacrum and pelvis meshes of pose2sim==0.3.7 "
                    "(BSD-3-Clause). Lordosis, size, bone density, abdomen and bowel gas are drawn from the seed.")
    lumbar.add_argument("--out", type=Path, required=True, help="output folder")
    lumbar.add_argument("--seed", type=int, default=0, help="random seed (default 0): same seed, same phantom")
    lumbar.add_argument("--voxel-mm", type=float, default=1.5, help="voxel size in mm (default 1.5)")
    lumbar.set_defaults(handler=run_lumbar)
    hip = kinds.add_parser(
        "hip", help="both hips (proximal femurs, hip bones, sacrum) in a pelvis, randomly posed",
        description="Write DIR/ct.nii.gz, DIR/labels.nii.gz (TotalSegmentator v2 values and names: femur_left, "
                    "femur_right, hip_left, hip_right, sacrum), DIR/names.csv and DIR/phantom.json from the OpenSim "
                    "femur, pelvis and sacrum meshes of pose2sim==0.3.7 (BSD-3-Clause). Hip flexion, adduction and "
                    "rotation per side, size, bone density, cortex, soft tissue, neck screws, scanner blur and noise "
                    "are drawn from the seed. Then: xrayseg femur-data ... --phantoms DIR")
    hip.add_argument("--out", type=Path, required=True, help="output folder")
    hip.add_argument("--seed", type=int, default=0, help="random seed (default 0): same seed, same phantom")
    hip.add_argument("--voxel-mm", type=float, default=1.5, help="voxel size in mm (default 1.5)")
    hip.set_defaults(handler=run_hip)


def _write_and_report(kind: str, write, params, args: argparse.Namespace) -> int:
    """``write(args.out, params)``, then one line: the phantom's seed, grid, voxel size and time."""
    started = time.perf_counter()
    files = write(args.out, params)
    shape = "x".join(str(n) for n in json.loads(files["json"].read_text())["shape_ijk"])
    print(f"wrote a {kind} phantom (seed {args.seed}, {shape} voxels of {args.voxel_mm:g} mm) in "
          f"{time.perf_counter() - started:.1f} s -> {args.out}")
    return 0


def run_wrist(args: argparse.Namespace) -> int:
    from .phantom.wrist import random_params, write_wrist_phantom

    if not 0.2 <= args.voxel_mm <= 1.5:
        raise InputError(f"--voxel-mm {args.voxel_mm}: use 0.2 to 1.5 mm (0.3-0.5 mm resolves the carpals)")
    if args.forearm_mm <= 0:
        raise InputError("--forearm-mm must be positive")
    fixed = {name: getattr(args, option) for option, (name, _) in POSE_OPTIONS.items()}
    for key in ("scale", "width_scale", "bone_density", "soft_tissue_scale"):
        if fixed[key] is not None and fixed[key] <= 0:
            raise InputError(f"--{key.replace('_', '-')} must be positive")
    params = random_params(args.seed, side=args.side, voxel_mm=args.voxel_mm, extent=args.extent,
                           forearm_mm=args.forearm_mm, **fixed)
    return _write_and_report("wrist", write_wrist_phantom, params, args)


def run_lumbar(args: argparse.Namespace) -> int:
    import dataclasses

    from .phantom.lumbar import random_params, write_lumbar_phantom

    if not 0.5 <= args.voxel_mm <= 3.0:
        raise InputError(f"--voxel-mm {args.voxel_mm}: use 0.5 to 3 mm")
    params = dataclasses.replace(random_params(args.seed), voxel_mm=args.voxel_mm)
    return _write_and_report("lumbar", write_lumbar_phantom, params, args)


def run_hip(args: argparse.Namespace) -> int:
    from .phantom.hip import random_params, write_hip_phantom

    if not 0.5 <= args.voxel_mm <= 3.0:
        raise InputError(f"--voxel-mm {args.voxel_mm}: use 0.5 to 3 mm")
    return _write_and_report("hip", write_hip_phantom, random_params(args.seed, voxel_mm=args.voxel_mm), args)
