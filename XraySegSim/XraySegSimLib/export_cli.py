"""``xrayseg export``: the command-line front of :mod:`export` (options, progress bar, summary)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import views
from .errors import InputError

EXPORT_DESCRIPTION = (
    "Export a training set: randomised views of one or many CTs with exactly projected labels, in nnU-Net v2's raw "
    "layout (Dataset<ID>_<Name>/imagesTr, labelsTr with region-based overlap atoms, dataset.json), plus overlapping "
    "mask stacks, per-sample JSON sidecars (geometry, P, physics, random values), previews and manifest.csv. "
    "See XraySegSim/README-export.md."
)


def add_export_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("export", help="export a randomised training set (nnU-Net v2 layout)",
                       description=EXPORT_DESCRIPTION)
    src = p.add_argument_group("inputs (one of --ct, --folder, --pairs)")
    src.add_argument("--ct", type=Path, help="one CT: NIfTI, NRRD, MHA or DICOM folder")
    src.add_argument("--labels", type=Path, help="its labels: label map, .seg.nrrd, segmentations/ folder, or "
                                                 "bone meshes (a folder of .stl/.obj/.ply/.vtk/.vtp in RAS mm, "
                                                 "named by file, or a CSV file,name[,value])")
    src.add_argument("--folder", type=Path, help="a folder of CTs: <case>/ct.nii.gz + labels, or <case>_ct.*")
    src.add_argument("--pairs", type=Path, help="a CSV with columns ct,labels[,id,names,split]")
    p.add_argument("--names", default="totalsegmentator",
                   help="default label names table: 'totalsegmentator' (v1) or a CSV value,name")
    p.add_argument("--classes", "--mapping", dest="classes", default="bones",
                   help="class mapping: 'bones' (default), 'all' (every name of --names), a group spec inline or "
                        "in a text file, or a JSON file")
    p.add_argument("--out", type=Path, required=True, help="output folder; the dataset goes in Dataset<ID>_<Name>/")
    p.add_argument("--dataset-id", type=int, default=501, help="nnU-Net dataset id, 3 digits (default 501)")
    p.add_argument("--dataset-name", default="XraySeg", help="nnU-Net dataset name (default XraySeg)")
    p.add_argument("--view", default="chest-pa", choices=views.PRESET_NAMES, help="view preset (default chest-pa)")
    p.add_argument("--views-per-ct", type=int, default=10, help="randomised samples per CT (default 10)")
    p.add_argument("--size", type=int, default=512, help="detector pixels along the longer side (default 512)")
    p.add_argument("--physics", default="auto",
                   help="physics preset ('auto' = the view's, default), 'none' (normalised naive DRR), or a name")
    p.add_argument("--fixed-physics", action="store_true", help="use the preset's physics without randomising it")
    p.add_argument("--no-randomize", action="store_true", help="nominal geometry for every sample (no draws)")
    p.add_argument("--range", action="append", default=[], metavar="NAME=LOW,HIGH",
                   help="override a randomisation range, e.g. lao_deg=-20,20 (names: see README-export.md)")
    vp = p.add_argument_group("virtual patients (random bodies made from each CT; README: Sim-to-real)")
    vp.add_argument("--virtual-patients", type=int, default=0, metavar="N",
                    help="N random bodies per CT (sample v is body v %% N); 0 = the CT as it is (default)")
    vp.add_argument("--deform-mm", type=float, default=8.0,
                    help="smooth deformation: std of the B-spline control displacements, mm (default 8)")
    vp.add_argument("--deform-spacing-mm", type=float, default=80.0,
                    help="B-spline control-point spacing, mm (default 80)")
    vp.add_argument("--scale-range", default="0.9,1.1", metavar="LOW,HIGH",
                    help="body scale along R, A, S, each drawn in this range (default 0.9,1.1)")
    vp.add_argument("--soft-tissue-range", default="0.85,1.15", metavar="LOW,HIGH",
                    help="soft-tissue density (thickness in projection) factor (default 0.85,1.15)")
    vp.add_argument("--bone-density-range", default="0.85,1.15", metavar="LOW,HIGH",
                    help="bone density factor above 200 HU (default 0.85,1.15)")
    vp.add_argument("--ct-blur-range", default="0,0", metavar="LOW,HIGH",
                    help="scanner resolution: extra 3D Gaussian blur of the HU, FWHM in mm drawn in this range "
                         "(default 0,0: off), e.g. 1,4 so that a sharp phantom also looks like a thick-slice CT")
    vp.add_argument("--shoulder-range", default="0,0", metavar="LOW,HIGH",
                    help="shoulder pose: each shoulder girdle (labelled clavicle, scapula, humerus) turned about its "
                         "sternoclavicular joint by an angle drawn per side in this range, degrees, negative "
                         "lowering it (default 0,0: off), e.g. --shoulder-range=-20,5 towards the arms-down pose "
                         "of a PA chest")
    p.add_argument("--domain-randomisation", "--domain-randomization", default="none",
                   choices=("none", "light", "strong"),
                   help="image-domain randomisation: vendor processing, collimation, text, devices, noise, blur, "
                        "dropout, inversion (default none; README: Sim-to-real)")
    p.add_argument("--suppress-contrast", action="store_true",
                   help="virtual non-contrast: set iodine-enhanced blood and organs (found from the label map's "
                        "heart, vessel and organ labels) to 40 HU before rendering (README: Sim-to-real)")
    p.add_argument("--keep-truncated", action="store_true",
                   help="do not mark pixels whose ray crosses body beyond a cut face of the CT as 'ignore'")
    p.add_argument("--isocenter", choices=("labels", "center"), default="labels",
                   help="aim at the centroid of the projected labels (default) or the CT centre")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0): same seed, same dataset")
    p.add_argument("--test-fraction", type=float, default=0.2, help="fraction of CTs in the test split (default 0.2)")
    p.add_argument("--test-ids", help="comma-separated CT ids for the test split (overrides --test-fraction)")
    p.add_argument("--no-previews", action="store_true", help="do not write previews/<case>.png")
    p.add_argument("--preview-size", type=int, default=256, metavar="PX",
                   help="longest side of previews/<case>.png, reduced from the image by a whole factor "
                        "(default 256; 0: full resolution)")
    p.add_argument("--workers", type=int, default=1, help="local worker processes, one CT each (default 1)")
    p.add_argument("--threads", type=int, help="numba threads per worker (default: cores / workers)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"),
                   help="where the DRRs are traced: cpu (default), cuda (an error without a CUDA GPU) or auto")
    p.add_argument("--scheduler", help="Dask scheduler address (tcp://host:port): run the CTs on that cluster")
    p.add_argument("--resume", action="store_true", help="continue an interrupted export in the same --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _check_numbers(args: argparse.Namespace) -> None:
    """Impossible option values, refused before any CT is read."""
    if args.views_per_ct < 1:
        raise InputError(f"--views-per-ct must be at least 1, got {args.views_per_ct}")
    if args.size < 8:
        raise InputError(f"--size must be at least 8 pixels, got {args.size}")
    if args.preview_size != 0 and args.preview_size < 8:
        raise InputError(f"--preview-size must be 0 (full resolution) or at least 8 pixels, got {args.preview_size}")
    if args.workers < 1 or (args.threads is not None and args.threads < 1):
        raise InputError("--workers and --threads must be at least 1")
    if not 0 <= args.test_fraction < 1:
        raise InputError(f"--test-fraction must be in [0, 1), got {args.test_fraction}")


def _low_high(text: str, option: str) -> list[float]:
    try:
        low, high = (float(v) for v in str(text).split(","))
    except ValueError:
        raise InputError(f"{option} expects LOW,HIGH (two numbers), got '{text}'") from None
    return [low, high]


def run_export_command(args: argparse.Namespace) -> int:
    from .export import DEFAULT_RANGES, ExportConfig, run_export
    from .export_inputs import check_cases_exist, discover_folder, load_mapping, read_pairs_csv, single_case

    given = [x for x in (args.ct, args.folder, args.pairs) if x is not None]
    if len(given) != 1:
        raise InputError("give exactly one input: --ct CT [--labels L], --folder DIR, or --pairs CSV")
    _check_numbers(args)
    if args.ct is not None:
        cases = single_case(args.ct, args.labels)
    elif args.folder is not None:
        cases = discover_folder(args.folder)
    else:
        cases = read_pairs_csv(args.pairs)
    check_cases_exist(cases)
    mapping = load_mapping(args.classes, args.names)
    ranges = dict(DEFAULT_RANGES)
    for item in args.range:
        try:
            name, bounds = item.split("=", 1)
            low, high = (float(v) for v in bounds.split(","))
        except ValueError:
            raise InputError(f"--range expects NAME=LOW,HIGH, got '{item}'") from None
        if name not in DEFAULT_RANGES or low > high:
            raise InputError(f"--range {item}: name must be one of {', '.join(DEFAULT_RANGES)} and LOW <= HIGH")
        ranges[name] = (low, high)
    config = ExportConfig(
        out=str(args.out), dataset_id=args.dataset_id, dataset_name=args.dataset_name, view=args.view,
        views_per_ct=args.views_per_ct, size=args.size, physics=args.physics,
        randomize_physics=not args.fixed_physics, ranges=ranges, randomize_geometry=not args.no_randomize,
        seed=args.seed, test_fraction=args.test_fraction,
        test_ids=tuple(s.strip() for s in args.test_ids.split(",") if s.strip()) if args.test_ids else None,
        isocenter=args.isocenter, previews=not args.no_previews, preview_max_px=args.preview_size,
        ignore_truncated=not args.keep_truncated, suppress_contrast=args.suppress_contrast,
        domain_randomisation=args.domain_randomisation,
        virtual_patients=args.virtual_patients, virtual_patient_ranges={
            "deform_mm": args.deform_mm, "deform_spacing_mm": args.deform_spacing_mm,
            "scale": _low_high(args.scale_range, "--scale-range"),
            "soft_tissue": _low_high(args.soft_tissue_range, "--soft-tissue-range"),
            "bone_density": _low_high(args.bone_density_range, "--bone-density-range"),
            "blur_fwhm_mm": _low_high(args.ct_blur_range, "--ct-blur-range"),
            "shoulder_deg": _low_high(args.shoulder_range, "--shoulder-range")})
    bar = None
    progress = None
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=len(cases) * config.views_per_ct, unit="sample", desc="export", file=sys.stderr)

        def progress(done: int, total: int, message: str) -> None:
            bar.n = done
            bar.refresh()

    from .process_guard import StopOnSignals

    # First Ctrl-C / SIGTERM: finish the samples in flight, finalise what is complete; a second: stop at once.
    stop = StopOnSignals("\nxrayseg export: {signal}: stopping after the samples in progress (again to stop at once)",
                         "xrayseg export: stopped at once; the dataset is not finalised but resumable: rerun the "
                         "same command with --resume")
    try:
        with stop:
            report = run_export(cases, config, mapping, workers=args.workers, threads=args.threads,
                                scheduler=args.scheduler, resume=args.resume, progress=progress,
                                cancel=lambda: stop.requested, device=args.device)
    finally:
        if bar is not None:
            bar.close()
    if stop.requested:
        total = len(cases) * config.views_per_ct
        print(f"xrayseg export: interrupted by {stop.signal_name}: {report.n_ok} of {total} samples complete; the "
              f"dataset {report.root} is finalised with them and resumable: rerun the same command with --resume "
              "to finish", file=sys.stderr)
        return stop.exit_status
    failed = [s for s in report.samples if s.status == "failed"]
    print(f"exported {report.n_ok} of {len(cases) * config.views_per_ct} samples from {len(cases)} CTs in "
          f"{report.elapsed_s:.1f} s -> {report.root}")
    for ct_id, error in report.failed_cts.items():
        print(f"  failed CT {ct_id}: {error}", file=sys.stderr)
    for sample in failed[:10]:
        print(f"  failed sample {sample.case}: {sample.message}", file=sys.stderr)
    return 0 if report.n_ok else 2
