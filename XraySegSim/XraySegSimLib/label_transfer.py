"""Label transfer: the bone labels of a labelled CT (the atlas) onto a CT that has none, by registration.

Steps (SimpleITK, all in physical space, so any orientation works):

1. Working images at ``working_spacing_mm`` (smoothed, then resampled): a *tissue* image (HU clipped to
   [-1000, 1000]) for the global alignment and a *bone* image (0 below 100 HU, 1 above 600 HU) for the rest.
2. Initial alignment: centres of mass of bone, then an exhaustive search of the head-foot shift on the tissue
   images (lungs and shoulders are not periodic, vertebrae and ribs are), because the two CTs may cover
   different lengths of the body (the atlas ``chest-ct`` ends at the clavicles, the ``chest-full-ct`` goes from
   the neck to the upper abdomen).
3. Affine registration (correlation, multi-resolution, tissue images), then B-spline deformable registration
   (mean squares, bone images). The metric only samples the atlas's field of view (the moving mask, 12 mm
   clear of its edge; scanner padding counts as air), so a truncated atlas is fine.
4. Labels resampled nearest-neighbour onto the target grid, then refined by the target's HU
   (:func:`.label_refine.refine_labels`). Target voxels outside the atlas's field of view stay unlabelled.

On ``chest-ct`` -> ``chest-full-ct`` (two shared CPU cores, ~8 min): T12 Dice 0.77 with the sdist's mask.

The fixed image is the target and the moving image the atlas: ITK's transform maps target points to atlas
points, which is what resampling the atlas labels onto the target grid needs.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from .errors import InputError

Progress = Callable[[float, str], None]  # (fraction done 0..1, what is happening)


@dataclass(frozen=True)
class TransferSettings:
    """Registration and refinement settings; the defaults are what built ``chest-full-ct-labelled``."""

    working_spacing_mm: float = 3.0
    z_search_mm: float = 120.0  # head-foot shifts tried around the centre-of-mass alignment
    z_search_step_mm: float = 6.0
    affine_iterations: int = 150
    bspline_mesh_mm: float = 40.0  # control-point spacing of the B-spline grid
    bspline_iterations: int = 80
    sampling_fraction: float = 0.2  # of the working voxels, for the global alignment
    bspline_sampling_fraction: float = 0.05  # B-spline metric derivatives cost ~64x more per sample
    seed: int = 7  # metric sampling seed: the same inputs and settings give the same result
    keep_hu: float = 150.0
    marrow_hu: float | None = 60.0  # inside a registered bone (> interior_mm from its edge) marrow suffices
    interior_mm: float = 3.0
    grow_mm: float = 3.0
    bone_hu: float = 200.0  # the quality threshold ("bone voxels")
    atlas_padding_hu: float = -1500.0  # atlas voxels at or below this are outside its scan field


@dataclass
class TransferResult:
    """The transferred label map (a SimpleITK image on the target grid) and its quality report."""

    labels: Any
    report: dict = field(default_factory=dict)


def _read(image_or_path: Any, what: str):
    import SimpleITK as sitk

    if isinstance(image_or_path, sitk.Image):
        return image_or_path
    path = Path(image_or_path)
    if not path.exists():
        raise InputError(f"{what} not found: {path}; give an existing NIfTI, NRRD or MHA file or DICOM folder")
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        files = reader.GetGDCMSeriesFileNames(str(path))
        if not files:
            raise InputError(f"{what}: no DICOM series in {path}; give a volume file or a DICOM folder")
        reader.SetFileNames(files)
        return reader.Execute()
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise InputError(f"{what}: cannot read {path} ({str(error).strip().splitlines()[-1][:160]}); "
                         "give a NIfTI, NRRD or MHA file") from None


def _resampled_hu(image, spacing: float):
    """Smooth (anti-alias), then resample to an isotropic ``spacing`` grid with the same centre and axes."""
    import SimpleITK as sitk

    smoothed = sitk.SmoothingRecursiveGaussian(image, spacing / 2.0)
    size = [max(4, int(round(n * s / spacing))) for n, s in zip(image.GetSize(), image.GetSpacing())]
    centre = image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in image.GetSize()])
    direction = np.array(image.GetDirection()).reshape(3, 3)
    origin = np.array(centre) - direction @ (np.array([(n - 1) / 2.0 for n in size]) * spacing)
    return sitk.Resample(smoothed, size, sitk.Transform(), sitk.sitkLinear, origin.tolist(), [spacing] * 3,
                         image.GetDirection(), -1000.0, sitk.sitkFloat32)


def _unit_ramp(image, low: float, high: float):
    """0 at ``low`` HU and below, 1 at ``high`` and above, linear between."""
    import SimpleITK as sitk

    return sitk.Clamp((image - low) / (high - low), sitk.sitkFloat32, 0.0, 1.0)


def _centre_of_mass(image, threshold: float) -> np.ndarray:
    import SimpleITK as sitk

    mask = sitk.BinaryThreshold(image, threshold, 1e9, 1, 0)
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(mask)
    if not stats.HasLabel(1):
        raise InputError("a CT has no voxel above 200 HU (no bone); check that it is a CT in Hounsfield units")
    return np.array(stats.GetCentroid(1))


def _method(fixed_mask, moving_mask, settings: TransferSettings, shrink: list[int], sampling: float,
            mean_squares: bool = False):
    import SimpleITK as sitk

    method = sitk.ImageRegistrationMethod()
    if mean_squares:  # the bone images are absolute (HU ramps), so the cheaper metric fits them
        method.SetMetricAsMeanSquares()
    else:
        method.SetMetricAsCorrelation()
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(sampling, settings.seed)
    method.SetInterpolator(sitk.sitkLinear)
    if fixed_mask is not None:
        method.SetMetricFixedMask(fixed_mask)
    method.SetMetricMovingMask(moving_mask)
    method.SetShrinkFactorsPerLevel(shrink)
    method.SetSmoothingSigmasPerLevel([s / 2.0 if s > 1 else 0.0 for s in shrink])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    return method


def _z_search(fixed, moving, moving_mask, initial, settings: TransferSettings) -> tuple[Any, float]:
    """Best head-foot shift (exhaustive, coarse) around ``initial`` (a translation)."""
    import SimpleITK as sitk

    # shifts that leave less than ~60% of the shorter CT overlapping can score well by chance: not tried
    lengths = [float(np.abs(np.array(img.GetDirection()).reshape(3, 3)[2]) @ (np.array(img.GetSize()) *
                                                                           np.array(img.GetSpacing())))
               for img in (fixed, moving)]  # head-foot extents in mm, whatever the axes
    steps = int(min(settings.z_search_mm, 0.4 * min(lengths)) // settings.z_search_step_mm)
    method = _method(None, moving_mask, settings, [2], settings.sampling_fraction)
    method.SetOptimizerAsExhaustive([0, 0, steps], settings.z_search_step_mm)
    method.SetOptimizerScales([1.0, 1.0, 1.0])
    search = sitk.TranslationTransform(3, initial.GetOffset())
    method.SetInitialTransform(search, inPlace=True)
    scores: list[tuple[float, tuple]] = []
    method.AddCommand(sitk.sitkIterationEvent,
                      lambda: scores.append((method.GetMetricValue(), tuple(method.GetOptimizerPosition()))))
    method.Execute(fixed, moving)
    best_value, best_offset = min(scores)  # ITK's correlation metric is negative: lower is better
    return sitk.TranslationTransform(3, best_offset), float(best_value)


def _report_iterations(method, iterations: int, levels: int, span: tuple[float, float], name: str,
                       progress: Progress | None) -> None:
    """Call ``progress`` every 10 optimizer iterations, the fraction moving through ``span``."""
    import SimpleITK as sitk

    if progress is None:
        return
    count = [0]

    def tick() -> None:
        count[0] += 1
        if count[0] % 10 == 0:
            done = min(1.0, count[0] / float(iterations * levels))
            progress(span[0] + done * (span[1] - span[0]), f"{name}: iteration {count[0]}")

    method.AddCommand(sitk.sitkIterationEvent, tick)


def _affine(fixed, moving, moving_mask, initial, settings: TransferSettings, progress: Progress | None = None):
    import SimpleITK as sitk

    centre = fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in fixed.GetSize()])
    affine = sitk.AffineTransform(3)
    affine.SetCenter(centre)
    affine.SetTranslation(initial.GetOffset())
    method = _method(None, moving_mask, settings, [4, 2, 1], settings.sampling_fraction)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3,
                                                    numberOfIterations=settings.affine_iterations,
                                                    gradientMagnitudeTolerance=1e-6)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetInitialTransform(affine, inPlace=True)
    _report_iterations(method, settings.affine_iterations, 3, (0.15, 0.45), "affine", progress)
    method.Execute(fixed, moving)
    return affine, float(method.GetMetricValue())


def _bspline(fixed, moving, fixed_mask, moving_mask, affine, settings: TransferSettings,
             progress: Progress | None = None):
    import SimpleITK as sitk

    extent = [n * s for n, s in zip(fixed.GetSize(), fixed.GetSpacing())]
    mesh = [max(2, int(round(e / settings.bspline_mesh_mm))) for e in extent]
    bspline = sitk.BSplineTransformInitializer(fixed, mesh, order=3)
    method = _method(fixed_mask, moving_mask, settings, [2, 1], settings.bspline_sampling_fraction, True)
    method.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-6, numberOfIterations=settings.bspline_iterations,
                                maximumNumberOfCorrections=5,
                                maximumNumberOfFunctionEvaluations=2 * settings.bspline_iterations)
    method.SetMovingInitialTransform(affine)
    # one mesh for both levels (a mesh refined between levels converged worse here: T12 Dice 0.57 vs 0.72)
    method.SetInitialTransformAsBSpline(bspline, inPlace=False, scaleFactors=[1, 1])
    _report_iterations(method, settings.bspline_iterations, 2, (0.45, 0.85), "b-spline", progress)
    result = sitk.CompositeTransform(method.Execute(fixed, moving))  # holds the one refined B-spline
    optimised = sitk.BSplineTransform(result.GetNthTransform(result.GetNumberOfTransforms() - 1))
    # ITK applies the last transform of a composite first: atlas point = affine(bspline(target point))
    composite = sitk.CompositeTransform([affine, optimised])
    return composite, float(method.GetMetricValue()), [list(mesh), list(optimised.GetTransformDomainMeshSize())]


def _quality_warnings(report: dict) -> list[str]:
    """Signs of a failed registration, for the user to read before using the labels."""
    warnings = []
    if report["target_fraction_in_atlas_view"] < 0.3:
        warnings.append(f"the atlas covers only {100 * report['target_fraction_in_atlas_view']:.0f}% of the "
                        "target: the CTs show different body regions; choose an atlas of the same region")
    if report["moved_labels_on_bone"] < 0.25:
        warnings.append(f"only {100 * report['moved_labels_on_bone']:.0f}% of the registered labels lie on bone "
                        "(42% on chest-ct -> chest-full-ct, a good transfer): the registration probably "
                        "failed; check the labels")
    return warnings


def atlas_bone_values(atlas_labels: np.ndarray, names: dict[int, str] | None = None) -> list[int]:
    """The bone label values (TotalSegmentator bones of our names table) present in an atlas label map."""
    from .labels import LabelClasses

    bones = LabelClasses.totalsegmentator_bones().values if names is None else set(names)
    return sorted(int(v) for v in np.unique(atlas_labels) if int(v) in bones)


def transfer_labels(atlas_ct: Any, atlas_labels: Any, target_ct: Any, *, label_values: Iterable[int] | None = None,
                    settings: TransferSettings = TransferSettings(), progress: Progress | None = None,
                    reference: Any = None, reference_value: int | None = None,
                    carry_values: Iterable[int] = ()) -> TransferResult:
    """Transfer the atlas's labels (default: its bones) onto ``target_ct``; images or paths (NIfTI, NRRD, DICOM).

    ``carry_values``: atlas labels moved as well but not refined by bone HU, written where no bone label is:
    the heart, vessels and enhancing organs, so that ``export --suppress-contrast`` can find the contrast
    (:mod:`.contrast` grows them over the target's enhanced voxels). They do not count in the quality figures.

    ``reference``: a binary mask of one structure on the target (any grid), compared with label
    ``reference_value`` (Dice in the report). ``progress(fraction, message)`` is called between the stages.
    """
    import SimpleITK as sitk

    from . import label_refine

    report_progress = progress or (lambda fraction, message: None)
    started, timings = time.perf_counter(), {}

    def stage(name: str, fraction: float) -> None:
        timings[name] = round(time.perf_counter() - started - sum(timings.values()), 2)
        report_progress(fraction, name)

    atlas_image = sitk.Cast(_read(atlas_ct, "atlas CT"), sitk.sitkFloat32)
    target_image = sitk.Cast(_read(target_ct, "target CT"), sitk.sitkFloat32)
    label_image = _read(atlas_labels, "atlas labels")
    if label_image.GetSize() != atlas_image.GetSize():
        raise InputError(f"the atlas labels ({label_image.GetSize()}) are not on the atlas CT grid "
                         f"({atlas_image.GetSize()}); give the label map that belongs to the atlas CT")
    atlas_array = sitk.GetArrayViewFromImage(label_image)
    values = sorted(set(int(v) for v in label_values)) if label_values is not None else atlas_bone_values(atlas_array)
    if not values:
        raise InputError("the atlas label map has none of the labels to transfer; give a bone label map "
                         "(TotalSegmentator values) or choose label values present in it")
    spacing = settings.working_spacing_mm
    report_progress(0.0, "preparing working images")
    field_of_view = sitk.BinaryThreshold(atlas_image, settings.atlas_padding_hu + 1e-3, 1e9, 1, 0)
    # scanner padding (-2048, -3024) as air, so smoothing does not smear it into the scan
    atlas_in_air = sitk.Mask(atlas_image, field_of_view, outsideValue=-1000.0)
    fixed_hu, moving_hu = _resampled_hu(target_image, spacing), _resampled_hu(atlas_in_air, spacing)
    fixed_tissue, moving_tissue = _unit_ramp(fixed_hu, -1000, 1000), _unit_ramp(moving_hu, -1000, 1000)
    fixed_bone, moving_bone = _unit_ramp(fixed_hu, 100, 600), _unit_ramp(moving_hu, 100, 600)
    moving_mask = sitk.Resample(field_of_view, moving_bone, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                                sitk.sitkUInt8)
    # the metric keeps clear of the scan-field edge (and of the blur across it) by ~4 working voxels
    moving_mask = sitk.BinaryErode(moving_mask, [4, 4, 4], sitk.sitkBall, 0, 1, True)
    stage("working images", 0.05)

    target_centre = _centre_of_mass(target_image, settings.bone_hu)
    atlas_centre = _centre_of_mass(atlas_image, settings.bone_hu)
    shift = sitk.TranslationTransform(3, (atlas_centre - target_centre).tolist())
    # on the tissue images: lungs, body outline and shoulders are not periodic as vertebrae and ribs are
    shift, z_metric = _z_search(fixed_tissue, moving_tissue, moving_mask, shift, settings)
    stage("initial alignment", 0.15)
    affine, affine_metric = _affine(fixed_tissue, moving_tissue, moving_mask, shift, settings, progress)
    stage("affine", 0.45)
    # The B-spline metric only counts target points that the affine maps into the atlas's field of view.
    overlap = sitk.Resample(moving_mask, fixed_bone, affine, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    transform, bspline_metric, mesh = _bspline(fixed_bone, moving_bone, overlap, moving_mask, affine, settings,
                                               progress)
    stage("b-spline", 0.85)

    labels_only = sitk.GetImageFromArray(np.where(np.isin(atlas_array, values), atlas_array, 0).astype(np.uint16))
    labels_only.CopyInformation(label_image)
    moved = sitk.Resample(labels_only, target_image, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt16)
    in_view = sitk.GetArrayFromImage(sitk.Resample(field_of_view, target_image, transform,
                                                   sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)).astype(bool)
    # The atlas's other labels (heart, vessels, liver, kidneys...) mark where HU > 200 is contrast, not bone:
    # moved too, dilated by 5 mm, they give a second coverage figure that leaves them out.
    organ_mask = sitk.GetImageFromArray(((atlas_array > 0) & ~np.isin(atlas_array, values)).astype(np.uint8))
    organ_mask.CopyInformation(label_image)
    organ_moved = sitk.Resample(organ_mask, target_image, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    radius = [max(1, int(round(5.0 / s))) for s in target_image.GetSpacing()]
    organs = sitk.GetArrayFromImage(sitk.BinaryDilate(organ_moved, radius)).astype(bool)
    target_hu = sitk.GetArrayFromImage(target_image).astype(np.float32)
    voxel_spacing = target_image.GetSpacing()
    moved_array = sitk.GetArrayFromImage(moved)
    refined = label_refine.refine_labels(moved_array, target_hu, voxel_spacing, settings.keep_hu,
                                         settings.grow_mm, allowed=in_view, marrow_hu=settings.marrow_hu,
                                         interior_mm=settings.interior_mm)
    carried = sorted(set(int(v) for v in carry_values) - set(values))
    labelled = refined
    if carried:
        carried_only = sitk.GetImageFromArray(np.where(np.isin(atlas_array, carried), atlas_array, 0)
                                              .astype(np.uint16))
        carried_only.CopyInformation(label_image)
        moved_carried = sitk.GetArrayFromImage(sitk.Resample(carried_only, target_image, transform,
                                                             sitk.sitkNearestNeighbor, 0, sitk.sitkUInt16))
        labelled = np.where((refined == 0) & in_view, moved_carried, refined)
    out_dtype = np.uint8 if max(values + carried) < 256 else np.uint16
    result = sitk.GetImageFromArray(labelled.astype(out_dtype))
    result.CopyInformation(target_image)
    stage("labels and refinement", 1.0)

    report: dict[str, Any] = {
        "label_values": values,
        "carried_values": carried,
        "settings": asdict(settings),
        "metric": {"z_search": round(z_metric, 4), "affine": round(affine_metric, 4),
                   "bspline": round(bspline_metric, 4)},
        "bspline_mesh": mesh,
        "affine_matrix": np.array(affine.GetMatrix()).reshape(3, 3).round(4).tolist(),
        "affine_translation_mm": np.round(affine.GetTranslation(), 2).tolist(),
        "target_fraction_in_atlas_view": round(float(in_view.mean()), 4),
        "bone_coverage": round(label_refine.bone_coverage(refined, target_hu, settings.bone_hu), 4),
        "bone_coverage_in_atlas_view": round(label_refine.bone_coverage(refined, target_hu, settings.bone_hu,
                                                                        in_view), 4),
        "bone_coverage_outside_organs": round(label_refine.bone_coverage(
            refined, target_hu, settings.bone_hu, ~organs), 4),
        "bone_coverage_before_refinement": round(label_refine.bone_coverage(moved_array, target_hu,
                                                                            settings.bone_hu), 4),
        "moved_labels_on_bone": round(float((target_hu[moved_array > 0] > settings.keep_hu).mean())
                                      if moved_array.any() else 0.0, 4),
        "seconds": timings,
    }
    report["warnings"] = _quality_warnings(report)
    if reference is not None and reference_value is not None:
        ref = sitk.Resample(_read(reference, "reference mask"), target_image, sitk.Transform(),
                            sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        ref_mask = sitk.GetArrayFromImage(ref) > 0
        report["reference_dice"] = {
            "label_value": int(reference_value),
            "dice": round(label_refine.dice(refined == reference_value, ref_mask), 4),
            "dice_before_refinement": round(label_refine.dice(moved_array == reference_value, ref_mask), 4),
        }
    return TransferResult(result, report)


def write_transfer_outputs(result: TransferResult, out_dir: str | Path, names_path: str | Path | None = None,
                           names: dict[int, str] | None = None) -> dict[str, Path]:
    """Write ``labels.nii.gz`` then ``transfer.json`` (the report, with label volumes and SHA-256s) into
    ``out_dir``, each to a temporary name first and renamed, the report last."""
    import SimpleITK as sitk

    from .io import atomic_path, write_json
    from .label_refine import label_volumes_ml
    from .sample_data import sha256_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"labels": out / "labels.nii.gz", "report": out / "transfer.json"}
    with atomic_path(paths["labels"]) as tmp:
        sitk.WriteImage(result.labels, str(tmp.with_suffix(".nii.gz")), useCompression=True)
        tmp.with_suffix(".nii.gz").replace(tmp)  # SimpleITK picks the format from the suffix
    if names is None:
        from .export_inputs import names_table

        names = names_table(names_path)
    array = sitk.GetArrayViewFromImage(result.labels)
    report = dict(result.report)
    report["label_volumes_ml"] = label_volumes_ml(array, result.labels.GetSpacing(), names)
    report["files_sha256"] = {"labels": sha256_file(paths["labels"])}
    if names_path is not None:
        report["files_sha256"]["names"] = sha256_file(names_path)
    write_json(paths["report"], report)
    return paths
