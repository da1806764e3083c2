"""Virtual patients (issue 10, item 3): one CT and its labels turned into many plausible bodies at export.

Each virtual patient is one random draw, made from ``default_rng([seed, crc32(ct_id), 0x5650, index])`` so the
same seed gives the same bodies whatever the order of work:

* **Smooth deformation**: a cubic B-spline displacement field on a coarse lattice (control points every
  ``deform_spacing_mm``, each displaced by N(0, ``deform_mm``) mm per axis), applied as a backward warp
  ``x_in = x_out + u(x_out)``. Near the CT's faces the component of ``u`` normal to the face fades to zero (over
  ``taper_mm``), so the cut faces stay where they are and no air is pulled into a cut body (the truncation mask
  stays right). With the defaults the largest displacement gradient stays far below 1: the warp is one-to-one.
* **Anisotropic scaling** about the grid centre along R, A and S (body width, depth and height): applied to the
  grid's IJK->RAS matrix, exactly, with no resampling.
* **Soft-tissue thickness and bone density**: the mass density of soft tissue (-500 to 100 HU: fat, muscle,
  organs) is multiplied by ``soft_tissue``, that of bone (above 200 HU) by ``bone_density``, blended linearly
  between 100 and 200 HU and from -600 to -500 HU (lungs and air are unchanged). In projection, scaling a
  tissue's density is scaling its thickness (the line integral is density x length). Bone stays bone: scaled HU
  stop below ``materials.METAL_HU`` (at x2.5 all from about 600 HU up end at 2999 HU); metal is left as it is.
* **Shoulder pose** (off by default): each shoulder girdle turned in the coronal plane about its
  sternoclavicular joint by ``shoulder_deg`` (drawn per side; :mod:`shoulder_pose`), CTs being scanned with
  the arms raised and PA radiographs taken with the arms down.
* **Scanner resolution** (off by default): the HU blurred by a 3D Gaussian of FWHM ``blur_fwhm_mm`` (drawn per
  patient), so that a sharp source (a mesh phantom, a thin-slice CT) also looks like a thick-slice CT, whose
  partial volume dims thin cortex and endplates. The blur conserves mass (HU x volume); labels are not blurred.
  Its FWHM is in the CT's own grid, before the anisotropic scaling (which scales it with the body). It needs a
  float copy of the HU and SciPy's buffers (about 4-5 volumes of 4 bytes) while the patient is set up.

HU is interpolated trilinearly, labels by nearest neighbour, both in one numba pass over the projector's packed
voxels (low 16 bits HU, high 16 bits class): the deformed CT is never held as float, so memory is one more
packed copy (4 bytes a voxel). About 1-2 s a virtual patient for the 512x512x133 sample CT on 2 cores.
"""

from __future__ import annotations

import copy
import dataclasses
import zlib
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np

from .errors import InputError
from .materials import METAL_HU
from .truncation import BODY_HU
from .unknown_region import UNKNOWN_SHORTFALL_VOXELS


@dataclass(frozen=True)
class VirtualPatientRanges:
    """The random ranges of a virtual patient (uniform draws; deformation amplitude and lattice in mm)."""

    deform_mm: float = 8.0
    deform_spacing_mm: float = 80.0
    taper_mm: float = 40.0
    scale: tuple[float, float] = (0.9, 1.1)
    soft_tissue: tuple[float, float] = (0.85, 1.15)
    bone_density: tuple[float, float] = (0.85, 1.15)
    blur_fwhm_mm: tuple[float, float] = (0.0, 0.0)
    shoulder_deg: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        if not 0.0 <= self.deform_mm <= 30.0:
            raise InputError(f"--deform-mm {self.deform_mm} is outside [0, 30] mm; use a smaller amplitude")
        if not 20.0 <= self.deform_spacing_mm <= 400.0:
            raise InputError(f"deformation lattice {self.deform_spacing_mm} mm is outside [20, 400] mm")
        for name, low_high, bounds in (("--scale-range", self.scale, (0.5, 2.0)),
                                       ("--soft-tissue-range", self.soft_tissue, (0.3, 3.0)),
                                       ("--bone-density-range", self.bone_density, (0.3, 3.0)),
                                       ("--ct-blur-range", self.blur_fwhm_mm, (0.0, 10.0)),
                                       ("--shoulder-range", self.shoulder_deg, (-30.0, 30.0))):
            low, high = low_high
            if not bounds[0] <= low <= high <= bounds[1]:
                raise InputError(f"{name} {low},{high}: need {bounds[0]} <= LOW <= HIGH <= {bounds[1]}")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "VirtualPatientRanges":
        """From ``to_dict`` output (lists back to tuples); unknown names are an input error."""
        data = dict(data or {})
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise InputError(f"unknown virtual-patient options: {', '.join(sorted(unknown))}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def patient_rng(seed: int, ct_id: str, index: int) -> np.random.Generator:
    """The generator of virtual patient ``index`` of CT ``ct_id``: independent of the samples' generators."""
    return np.random.default_rng([int(seed), zlib.crc32(ct_id.encode()), 0x5650, int(index)])


def draw_patient(ranges: VirtualPatientRanges, rng: np.random.Generator, index: int = 0) -> dict[str, Any]:
    """The values of one virtual patient (what the sidecar records), in a fixed draw order."""
    scale = [float(rng.uniform(*ranges.scale)) for _ in range(3)]
    values = {"index": int(index), "scale_ras": scale, "soft_tissue": float(rng.uniform(*ranges.soft_tissue)),
              "bone_density": float(rng.uniform(*ranges.bone_density)), "deform_mm": ranges.deform_mm,
              "deform_spacing_mm": ranges.deform_spacing_mm, "taper_mm": ranges.taper_mm,
              "field_seed": int(rng.integers(0, 2**63 - 1)),
              # drawn last, and only when on, so that the other values of a seed do not change with it
              "blur_fwhm_mm": float(rng.uniform(*ranges.blur_fwhm_mm)) if ranges.blur_fwhm_mm[1] > 0 else 0.0}
    if ranges.shoulder_deg != (0.0, 0.0):  # after the blur, for the same reason: (right, left) elevation, degrees
        values["shoulder_deg"] = [float(rng.uniform(*ranges.shoulder_deg)) for _ in range(2)]
    return values


def density_lut(soft_tissue: float, bone_density: float) -> np.ndarray:
    """int16 HU -> int16 HU (indexed by the uint16 bit pattern) with the soft-tissue and bone density factors."""
    hu = np.arange(65536, dtype=np.uint16).view(np.int16).astype(np.float64)
    factor = np.interp(hu, [-600.0, -500.0, 100.0, 200.0], [1.0, soft_tissue, soft_tissue, bone_density])
    out = (1.0 + hu / 1000.0) * factor * 1000.0 - 1000.0
    # a factor > 1 must not turn cortical bone into the titanium of the physics (materials.METAL_HU)
    out = np.where(hu >= METAL_HU, hu, np.minimum(out, METAL_HU - 1.0))
    return np.clip(np.round(np.where(hu <= -600.0, hu, out)), -32768, 32767).astype(np.int16)


def _bspline_basis(n: int, spacing_mm: float, lattice_mm: float) -> np.ndarray:
    """(n, n_controls) dense cubic B-spline weights of voxel positions 0..n-1 on a lattice of ``lattice_mm``."""
    u = np.arange(n) * spacing_mm / lattice_mm
    base = np.floor(u).astype(int)
    t = u - base
    weights = np.stack([(1 - t) ** 3, 3 * t ** 3 - 6 * t ** 2 + 4, -3 * t ** 3 + 3 * t ** 2 + 3 * t + 1, t ** 3]) / 6
    basis = np.zeros((n, int(base.max()) + 4))
    for m in range(4):
        basis[np.arange(n), base + m] = weights[m]
    return basis


def _taper(n: int, spacing_mm: float, taper_mm: float) -> np.ndarray:
    """Smoothstep from 0 on the outer voxel faces to 1 at ``taper_mm`` inside."""
    x = np.arange(n) * spacing_mm
    distance = np.minimum(x + 0.5 * spacing_mm, (n - 0.5) * spacing_mm - x)
    s = np.clip(distance / max(taper_mm, 1e-6), 0.0, 1.0)
    return (s * s * (3 - 2 * s)).astype(np.float32)


def displacement_lattice(shape_kji: tuple[int, int, int], spacing_ijk: np.ndarray, values: dict) -> tuple:
    """(controls (3, Kc, Jc, Ic) mm, basis_k, basis_j, basis_i) of the patient's deformation."""
    nk, nj, ni = shape_kji
    lattice = float(values["deform_spacing_mm"])
    basis_i = _bspline_basis(ni, float(spacing_ijk[0]), lattice)
    basis_j = _bspline_basis(nj, float(spacing_ijk[1]), lattice)
    basis_k = _bspline_basis(nk, float(spacing_ijk[2]), lattice)
    rng = np.random.default_rng(int(values["field_seed"]))
    shape = (3, basis_k.shape[1], basis_j.shape[1], basis_i.shape[1])
    sigma = float(values["deform_mm"])
    controls = np.clip(rng.normal(0.0, sigma, shape), -2.5 * sigma, 2.5 * sigma)  # no rare folds from the tails
    return controls, basis_k, basis_j, basis_i


@numba.njit(parallel=True, cache=True, nogil=True, boundscheck=False)
def _warp_packed(packed, planes, basis_k, taper_i, taper_j, taper_k, to_voxels, hu_lut, extra, extra_steps,
                 out, unknown):  # pragma: no cover
    """out[k, j, i] = packed sampled at (i, j, k) + u + e: HU trilinear (then the density LUT), class nearest.

    ``planes`` (3, Kc, nj, ni): the field contracted over the i and j lattice axes; u = basis_k[k] . planes.
    ``extra`` (3, Kd, Jd, Id): a second field in voxels on cells of ``extra_steps`` (i, j, k) voxels (the
    shoulder pose), sampled trilinearly and cut short where it would sample beyond a face; ``unknown`` (Kd, Jd,
    Id) gets 1 in the cells of the voxels whose turn was cut short at body (:mod:`unknown_region`)."""
    nk, nj, ni = packed.shape
    n_controls = basis_k.shape[1]
    ek, ej, ei = extra.shape[1], extra.shape[2], extra.shape[3]
    has_extra = ek * ej * ei > 1
    for k in numba.prange(nk):
        for j in range(nj):
            for i in range(ni):
                ui = 0.0
                uj = 0.0
                uk = 0.0
                for m in range(n_controls):
                    w = basis_k[k, m]
                    if w != 0.0:
                        ui += w * planes[0, m, j, i]
                        uj += w * planes[1, m, j, i]
                        uk += w * planes[2, m, j, i]
                ex = ey = ez = 0.0
                if has_extra:  # (a shoulder pose; without one the warp costs what it did)
                    gx = min(max((i + 0.5) / extra_steps[0] - 0.5, 0.0), ei - 1.0)
                    gy = min(max((j + 0.5) / extra_steps[1] - 0.5, 0.0), ej - 1.0)
                    gz = min(max((k + 0.5) / extra_steps[2] - 0.5, 0.0), ek - 1.0)
                    ax, ay = min(int(gx), max(ei - 2, 0)), min(int(gy), max(ej - 2, 0))
                    az = min(int(gz), max(ek - 2, 0))
                    for dz in range(2):
                        wz = (gz - az) if dz else 1.0 - (gz - az)
                        for dy in range(2):
                            wy = (gy - ay) if dy else 1.0 - (gy - ay)
                            for dx in range(2):
                                w = wz * wy * ((gx - ax) if dx else 1.0 - (gx - ax))
                                if w != 0.0:
                                    cz, cy, cx = min(az + dz, ek - 1), min(ay + dy, ej - 1), min(ax + dx, ei - 1)
                                    ex += w * extra[0, cz, cy, cx]
                                    ey += w * extra[1, cz, cy, cx]
                                    ez += w * extra[2, cz, cy, cx]
                x = min(max(i + ui * to_voxels[0] * taper_i[i], 0.0), ni - 1.0)
                y = min(max(j + uj * to_voxels[1] * taper_j[j], 0.0), nj - 1.0)
                z = min(max(k + uk * to_voxels[2] * taper_k[k], 0.0), nk - 1.0)
                short = False
                if has_extra:  # the turn is cut short where it would sample beyond a face (nothing known there)
                    cut = 1.0
                    for p, e, n in ((x, ex, ni), (y, ey, nj), (z, ez, nk)):
                        if p + e > n - 1.0:
                            cut = min(cut, (n - 1.0 - p) / e)
                        elif p + e < 0.0:
                            cut = min(cut, -p / e)
                    x, y, z = x + cut * ex, y + cut * ey, z + cut * ez
                    short = (1.0 - cut) * np.sqrt(ex * ex + ey * ey + ez * ez) > UNKNOWN_SHORTFALL_VOXELS
                x0 = min(int(x), ni - 2) if ni > 1 else 0
                y0 = min(int(y), nj - 2) if nj > 1 else 0
                z0 = min(int(z), nk - 2) if nk > 1 else 0
                fx, fy, fz = x - x0, y - y0, z - z0
                hu = 0.0
                for dz in range(2):
                    wz = fz if dz else 1.0 - fz
                    for dy in range(2):
                        wy = fy if dy else 1.0 - fy
                        for dx in range(2):
                            wx = fx if dx else 1.0 - fx
                            word = np.int64(packed[min(z0 + dz, nk - 1), min(y0 + dy, nj - 1), min(x0 + dx, ni - 1)])
                            hu += wx * wy * wz * np.int16(word & 0xFFFF)
                nearest = np.int64(packed[int(z + 0.5), int(y + 0.5), int(x + 0.5)])
                code = np.uint16(hu_lut[np.uint16(np.int16(min(max(round(hu), -32768), 32767)))])
                out[k, j, i] = np.uint32((nearest >> 16) << 16) | np.uint32(code)
                if short and (hu > BODY_HU or nearest >> 16 != 0):  # body at the face: it went on beyond it
                    unknown[min(int(k / extra_steps[2]), ek - 1), min(int(j / extra_steps[1]), ej - 1),
                            min(int(i / extra_steps[0]), ei - 1)] = 1  # (every thread writes the same 1)


def warp_packed(packed: np.ndarray, ijk_to_ras: np.ndarray, values: dict, threads: int | None = None,
                class_names: list[str] | None = None) -> np.ndarray:
    """The patient's deformation and density factors applied to packed voxels (same grid; see the docstring).
    With ``values["shoulder_deg"]`` (right, left) not zero and ``class_names`` naming a clavicle, each shoulder
    girdle is turned too (:mod:`shoulder_pose`); what was applied goes into ``values``."""
    return warp_packed_and_unknown(packed, ijk_to_ras, values, threads, class_names)[0]


def warp_packed_and_unknown(packed: np.ndarray, ijk_to_ras: np.ndarray, values: dict, threads: int | None = None,
                            class_names: list[str] | None = None
                            ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """:func:`warp_packed`, with the unknown cells of its shoulder pose: (voxels, cells (Kd, Jd, Id) bool or None
    without a turn, voxels per cell along i, j, k or None); see :mod:`unknown_region`."""
    spacing = np.linalg.norm(np.asarray(ijk_to_ras, float)[:3, :3], axis=0)
    extra, extra_steps = np.zeros((3, 1, 1, 1), np.float32), np.ones(3, np.float32)
    angles = values.get("shoulder_deg", [0.0, 0.0])
    turned = None
    if any(angles) and class_names:
        from .shoulder_pose import shoulder_field

        turned = shoulder_field(packed, ijk_to_ras, class_names, (float(angles[0]), float(angles[1])))
        if turned is not None:
            extra, extra_steps, info = turned
            values.update(info)
    unknown = np.zeros(extra.shape[1:], np.uint8)
    controls, basis_k, basis_j, basis_i = displacement_lattice(packed.shape, spacing, values)
    # Contract the field over the j and i lattice axes once: (3, Kc, nj, ni); the kernel finishes along k.
    planes = np.einsum("ja,ckab,ib->ckji", basis_j, controls, basis_i, optimize=True).astype(np.float32)
    taper = [_taper(n, float(s), float(values["taper_mm"])) for n, s in zip(packed.shape[::-1], spacing)]
    lut = density_lut(float(values["soft_tissue"]), float(values["bone_density"]))
    out = np.empty_like(packed)
    previous = numba.get_num_threads()
    if threads:
        numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    try:
        _warp_packed(packed, planes, np.ascontiguousarray(basis_k, np.float32), taper[0], taper[1], taper[2],
                     (1.0 / spacing).astype(np.float32), lut, extra, extra_steps, out, unknown)
    finally:
        numba.set_num_threads(previous)
    out = blur_packed_hu(out, spacing, float(values.get("blur_fwhm_mm", 0.0)))
    if turned is None:
        return out, None, None
    return out, unknown.astype(bool), extra_steps.astype(np.float64)


def blur_packed_hu(packed: np.ndarray, spacing_ijk: np.ndarray, fwhm_mm: float) -> np.ndarray:
    """Packed voxels with their HU blurred by a Gaussian of ``fwhm_mm`` (labels kept); unchanged when 0."""
    if fwhm_mm <= 0.0:
        return packed
    from scipy import ndimage

    hu = (packed & 0xFFFF).astype(np.uint16).view(np.int16).astype(np.float32)
    sigma_kji = fwhm_mm / (2.0 * np.sqrt(2.0 * np.log(2.0))) / np.asarray(spacing_ijk, float)[::-1]
    ndimage.gaussian_filter(hu, sigma_kji, output=hu, mode="nearest")
    codes = np.clip(np.round(hu), -32768, 32767).astype(np.int16).view(np.uint16)
    return (packed & np.uint32(0xFFFF0000)) | codes.astype(np.uint32)


def scaled_ijk_to_ras(ijk_to_ras: np.ndarray, shape_kji: tuple[int, int, int], scale_ras) -> np.ndarray:
    """IJK->RAS with the body scaled by ``scale_ras`` (R, A, S) about the grid centre."""
    m = np.asarray(ijk_to_ras, float)
    centre_ijk = (np.array(shape_kji[::-1], float) - 1) / 2
    centre = m[:3, :3] @ centre_ijk + m[:3, 3]
    scaled = np.eye(4)
    scaled[:3, :3] = np.diag(np.asarray(scale_ras, float)) @ m[:3, :3]
    scaled[:3, 3] = centre + np.diag(np.asarray(scale_ras, float)) @ (m[:3, 3] - centre)
    return scaled


def jacobian_range(shape_kji, spacing_ijk, values: dict, step_mm: float = 4.0) -> tuple[float, float, float]:
    """(min det J, max det J, max |u| mm) of the warp x -> x + u(x) (taper included), on a lattice of about
    ``step_mm``: det J > 0 everywhere means the warp is one-to-one (diffeomorphic), det J is the local volume
    ratio."""
    controls, basis_k, basis_j, basis_i = displacement_lattice(shape_kji, spacing_ijk, values)
    steps = [max(1, int(round(step_mm / float(s)))) for s in spacing_ijk]  # i, j, k
    bk, bj, bi = basis_k[::steps[2]], basis_j[::steps[1]], basis_i[::steps[0]]
    u = np.einsum("ka,jb,ic,xabc->xkji", bk, bj, bi, controls, optimize=True)
    n_i, n_j, n_k = shape_kji[2], shape_kji[1], shape_kji[0]
    taper = [_taper(n, float(s), float(values["taper_mm"]))[::st] for n, s, st in
             zip((n_i, n_j, n_k), spacing_ijk, steps)]
    u[0] *= taper[0][None, None, :]
    u[1] *= taper[1][None, :, None]
    u[2] *= taper[2][:, None, None]
    det = jacobian_determinants(u, [float(s) * st for s, st in zip(spacing_ijk, steps)])
    return float(det.min()), float(det.max()), float(np.sqrt((u ** 2).sum(0)).max())


def jacobian_determinants(u: np.ndarray, h_ijk) -> np.ndarray:
    """det(I + du/dx) of a displacement field ``u`` (3, k, j, i; components i, j, k) sampled every ``h_ijk``
    along i, j, k (u and h in the same unit: mm, or voxels)."""
    # gradient[a][b] = du_a / dx_b; array axes are (k, j, i)
    grad = [[np.gradient(u[a], h_ijk[b], axis=2 - b) if u.shape[3 - b] > 1 else np.zeros_like(u[a])
             for b in range(3)] for a in range(3)]
    jac = np.empty(u.shape[1:] + (3, 3))
    for a in range(3):
        for b in range(3):
            jac[..., a, b] = (a == b) + grad[a][b]
    return np.linalg.det(jac)


def virtual_projector(projector, values: dict, threads: int | None = None):
    """A ``DrrProjector`` of the virtual patient: the base projector's classes and materials, the warped voxels,
    the scaled grid. The base projector is left as it was."""
    return virtual_projector_and_unknown(projector, values, threads)[0]


def virtual_projector_and_unknown(projector, values: dict, threads: int | None = None):
    """(:func:`virtual_projector`, its :class:`~unknown_region.UnknownRegion` or None without a shoulder turn)."""
    from .projector_palette import palette_from_words
    from .unknown_region import UnknownRegion
    from .volume import Volume

    packed, cells, steps = warp_packed_and_unknown(projector.packed, projector.ct.ijk_to_ras, values, threads,
                                                   projector.classes.names)
    ijk_to_ras = scaled_ijk_to_ras(projector.ct.ijk_to_ras, packed.shape, values["scale_ras"])
    clone = copy.copy(projector)
    placeholder = np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), packed.shape, (0, 0, 0))
    clone.ct = Volume(placeholder, ijk_to_ras, f"{projector.ct.name} (virtual patient {values['index']})")
    # The setter makes again what the projector derives from its voxels (the empty-space hull: the body moved)
    # and drops the device copy; the traversal then reads a 2-byte palette of the words (projector_palette).
    clone.packed = packed
    clone.palette = palette_from_words(packed, len(projector.classes))
    unknown = None if cells is None else UnknownRegion(cells, steps, clone.ct.ras_to_ijk)
    if unknown is not None:
        values["shoulder_unknown_ml"] = round(unknown.volume_ml(), 1)
    return clone, unknown


def patient_of_view(view: int, n_patients: int) -> int:
    """Virtual patient of sample ``view``: views cycle over the patients (0, 1, ..., N-1, 0, ...)."""
    return int(view) % int(n_patients)


__all__ = ["VirtualPatientRanges", "blur_packed_hu", "density_lut", "draw_patient", "jacobian_determinants",
           "jacobian_range", "patient_of_view", "patient_rng", "scaled_ijk_to_ras", "virtual_projector",
           "virtual_projector_and_unknown", "warp_packed", "warp_packed_and_unknown"]


@dataclass
class PatientSetup:
    """What the export needs per virtual patient: its values (for the sidecars) and its projector, aim point,
    body hull and cut faces."""

    values: dict
    projector: Any
    isocenter: np.ndarray
    body_ras: np.ndarray | None
    voxel_axes: np.ndarray
    cut_faces: Any


def setup_patient(base_projector, ranges: VirtualPatientRanges, seed: int, ct_id: str, index: int,
                  aim_at_labels: bool = True, body_hull: bool = True, cut_faces: bool = True,
                  threads: int | None = None) -> PatientSetup:
    """Draw virtual patient ``index`` of CT ``ct_id`` and build everything the export renders it with."""
    from .export_geometry import body_points_ras, labelled_centroid_ras
    from .truncation import CutFaces

    values = draw_patient(ranges, patient_rng(seed, ct_id, index), index)
    projector, unknown = virtual_projector_and_unknown(base_projector, values, threads)
    grid = projector.ct
    low, high, largest = jacobian_range(projector.packed.shape, np.linalg.norm(base_projector.ct.ijk_to_ras[:3, :3],
                                                                               axis=0), values)
    values.update(jacobian_min=round(low, 4), jacobian_max=round(high, 4), max_displacement_mm=round(largest, 3))
    iso = labelled_centroid_ras(projector.packed, grid.ijk_to_ras) if aim_at_labels and len(projector.classes) \
        else None
    setup = PatientSetup(values, projector, grid.center_ras if iso is None else iso,
                         body_points_ras(projector.packed, grid.ijk_to_ras) if body_hull else None,
                         grid.ijk_to_ras[:3, :3],
                         CutFaces(projector.packed, grid.ras_to_ijk, unknown=unknown) if cut_faces else None)
    projector.release_packed()  # the renders read the palette, when there is one
    return setup
