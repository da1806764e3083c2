"""Single-pass DRR projector: line integral of attenuation and per-class path lengths along every ray.

Model: the CT is piecewise constant over its voxels (nearest-voxel). Each ray, from the source to a detector
pixel centre, is traversed exactly, voxel by voxel (Amanatides & Woo 1987), so every voxel contributes
``mu * (exact length of the ray inside it)``. In the same pass the length inside each projected label class
is added up. The traversal works in continuous IJK coordinates, so oblique and anisotropic grids need no
resampling; lengths are converted to millimetres with the ray's RAS length.

HU -> linear attenuation (documented unit conversion)::

    mu(HU) = mu_water * max(0, 1 + HU / 1000)      [1/mm]

with ``mu_water`` = 0.0206 /mm by default: water at 60 keV (NIST XCOM: mu/rho = 0.2059 cm^2/g), a typical
effective energy of a diagnostic beam. The DRR ``line_integral`` is the dimensionless ``sum(mu * length)``
and ``transmission = exp(-line_integral)`` (I/I0). Realistic spectra belong to the physics module.

Masks: a pixel belongs to a class when its ray runs through at least ``min_mask_thickness_mm`` of it, by
default the CT's smallest voxel spacing. Rays that only clip the corner of a boundary voxel are thus left
out: that halo comes from the label map's voxel staircase, not from anatomy (on a smooth surface of radius R
the threshold h moves the edge by only h^2 / 8R, e.g. 0.01 mm for a 5 mm rib and 0.7 mm voxels).
Speed: each ray is first clipped to a polytope around the voxels that have attenuation or a label (empty-space
skipping, see projector_kernels); inside it the traversal is the exact one above. The traversal is bound by
memory traffic, so each voxel is stored in 2 bytes where it can: an index into a palette of the CT's (HU, class)
pairs (projector_palette), else one 32-bit word (HU and class). ``device="cuda"`` runs the same per-ray code as
a numba.cuda kernel (projector_gpu).

Masks keep overlaps (a pixel may belong to several classes). The single-label image gives each pixel the
class with the longest path through it (ties: the lower class index), 0 where none.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field

import numba
import numpy as np

from .errors import GeometryError, InputError
from .geometry import XrayGeometry
from .labels import LabelClasses, unknown_label_values
from .materials import MAX_MATERIALS, SOFT_BONE_KNEE_HU, MaterialModel
from .projector_kernels import (NO_PALETTE_CLASS, NO_PALETTE_HU, attenuation_table, box_hull, matter_hull,
                                pack_voxels, row_schedule, trace_rays_cpu)
from .projector_palette import PaletteVolume, build_palette_volume
from .volume import Volume

MU_WATER_60KEV_PER_MM = 0.0206
MAX_LABEL_VALUE = 65535  # largest label value accepted (uint16 label maps)
# Below this HU a voxel is pure soft tissue in every MaterialModel (checked when the table is built).
SOFT_ONLY_BELOW_HU = int(SOFT_BONE_KNEE_HU) + 1


@dataclass
class DrrResult:
    """What one render gives: arrays are indexed [row j, column i] like the detector (see geometry)."""

    geometry: XrayGeometry
    line_integral: np.ndarray  # (rows, cols) float32, dimensionless sum of mu * length
    thickness_mm: np.ndarray  # (n_classes, rows, cols) float32, path length through each class
    classes: LabelClasses
    unknown_label_values: list[int] = field(default_factory=list)
    min_mask_thickness_mm: float = 0.0  # default mask rule: path length through the class >= this
    material_g_cm2: np.ndarray | None = None  # (n_materials, rows, cols): density line integrals, if requested
    material_names: tuple[str, ...] = ()
    # (n_classes, rows) uint8 from the kernel: 0 where the row holds no path length through the class, 1 where
    # the render added some (lets per-row consumers such as the export's masks skip the ~85 % of class rows
    # that are empty). Code that zeroes path lengths afterwards (the collimator) may leave a 1: it means "may".
    class_rows: np.ndarray | None = None

    @property
    def transmission(self) -> np.ndarray:
        """Monoenergetic intensity image I/I0 = exp(-line integral)."""
        return np.exp(-self.line_integral)

    def masks(self, min_thickness_mm: float | None = None) -> np.ndarray:
        """Binary per-class masks (n_classes, rows, cols), overlaps kept: path length >= threshold
        (default ``min_mask_thickness_mm``; pass 0 to keep every ray that touches the class)."""
        threshold = self.min_mask_thickness_mm if min_thickness_mm is None else min_thickness_mm
        return (self.thickness_mm >= threshold) & (self.thickness_mm > 0)

    def label_image(self, min_thickness_mm: float | None = None) -> np.ndarray:
        """Single-label image: the class with the longest path wins (ties: lower index); 0 = none."""
        dtype = np.uint8 if len(self.classes) < 255 else np.uint16
        if len(self.classes) == 0:
            return np.zeros(self.line_integral.shape, dtype)
        winner = np.argmax(self.thickness_mm, axis=0).astype(dtype) + 1
        return np.where(self.masks(min_thickness_mm).any(axis=0), winner, 0).astype(dtype)


def _references(kept: list[np.ndarray], index: int) -> int:
    """sys.getrefcount of ``kept[index]`` through one fixed code path, so that a free array's count can be
    measured once (``ReusedOutputs``) instead of assumed: CPython versions count borrowed locals differently."""
    array = kept[index]
    return sys.getrefcount(array)


class ReusedOutputs:
    """Output arrays of earlier renders, handed out again once nothing else refers to them.

    A fresh array of tens of MB can come from the kernel as untouched pages whose first touch costs page faults
    (49 classes at 256^2: 3,136 pages, ~3 ms when all are touched fresh; measured 0 faults per render when
    reused, and no wall-time difference on a quiet machine, where the allocator reused its heap anyway). When a
    result has been dropped by the time a later render starts (a loop that renders and uses each view; the
    export, whose writer thread holds at most two results while the next one renders), its arrays are
    reused. An array the caller still holds (directly, through a DrrResult or a view) is never touched; it
    leaves the pool when ``keep`` newer ones are kept, or when the pool would hold more than ``max_bytes``
    (a projector kept open in Slicer holds at most that much while idle). The kernels overwrite every element.
    """

    def __init__(self, keep: int = 3, max_bytes: int = 512 * 2 ** 20) -> None:
        self.keep, self.max_bytes = keep, max_bytes
        self._arrays: dict[str, list[np.ndarray]] = {}
        self._lock = threading.Lock()  # check and hand out in one step if two threads render at once
        self._free_references = _references([np.empty(0)], 0)  # the count of an array only the pool holds

    def get(self, name: str, shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
        """An uninitialised array of ``shape``: a kept one when only this pool refers to it (one dtype per name)."""
        with self._lock:
            kept = self._arrays.setdefault(name, [])
            for index in range(len(kept)):  # not enumerate: its cached tuple would hold a reference
                if kept[index].shape == shape and _references(kept, index) <= self._free_references:
                    kept.append(kept.pop(index))  # most recently used last
                    return kept[-1]
            array = np.empty(shape, dtype)
            kept.append(array)
            del kept[:-self.keep]
            while len(kept) > 1 and sum(a.nbytes for a in self._all()) > self.max_bytes:
                del kept[0]
            return array

    def _all(self):
        return (a for arrays in self._arrays.values() for a in arrays)


class DrrProjector:
    """Projects one CT (and optionally its label map) for any number of geometries.

    Build it once per CT; ``render(geometry)`` is then the fast part. The CT and its label map are turned into
    one volume the traversal reads: 2 bytes per voxel (a palette of (HU, class) pairs) where the pairs fit, else
    4 (HU and class index), whatever the number of label values; the caller may then free the CT's voxels.
    """

    def __init__(
        self,
        ct: Volume,
        labels: Volume | None = None,
        classes: LabelClasses | None = None,
        mu_water_per_mm: float = MU_WATER_60KEV_PER_MM,
        threads: int | None = None,
        names_table: dict[int, object] | None = None,
        materials: MaterialModel | None = None,
        device: str = "cpu",
        skip_empty: bool = True,
    ) -> None:
        """``materials``: also integrate the partial density of each material (g/cm^2) in the same pass,
        for the polyenergetic physics (see ``materials``). ``device``: "cpu", "cuda" or "auto" (CUDA when a
        GPU is usable, else the CPU); "cuda" without a GPU raises InputError. ``skip_empty``: jump over
        the empty space around the body (same values; off only to check that claim)."""
        from .projector_gpu import resolve_device

        self.device = resolve_device(device)
        if min(ct.array.shape) < 2:
            raise InputError(
                f"{ct.name or 'CT'}: has shape {ct.array.shape[::-1]} (i, j, k); a CT must be a 3D volume "
                "with at least 2 voxels along every axis, not a single slice or a radiograph"
            )
        self.ct = ct.grid_only()  # the palette or packed words below are all we keep of the voxels
        self.mu_water_per_mm = float(mu_water_per_mm)
        self.threads = threads
        self.classes = LabelClasses(())
        self.unknown_values: list[int] = []
        self.materials = materials
        self.material_lut = materials.lookup_table() if materials else np.zeros((1, MAX_MATERIALS), np.float32)
        soft_codes = (np.arange(-32768, SOFT_ONLY_BELOW_HU, dtype=np.int64) & 0xFFFF)
        soft_line = np.maximum(0.0, 1.0 + np.arange(-32768, SOFT_ONLY_BELOW_HU) / 1000.0)
        # The kernel takes soft tissue below the knee from the mu sum: the model must agree with that line.
        if materials and (np.any(self.material_lut[soft_codes, 1:])
                          or not np.allclose(self.material_lut[soft_codes, 0], soft_line, atol=1e-6)):
            raise ValueError("material model puts non-soft-tissue below SOFT_ONLY_BELOW_HU; update the projector")
        class_lut = np.zeros(1, np.uint16)
        label_array = np.zeros((1, 1, 1), np.uint8)
        if labels is not None:
            class_lut, label_array = self._prepare_labels(ct, labels, classes, names_table)
        hu = np.ascontiguousarray(ct.array)
        self.mu_lut = attenuation_table(self.mu_water_per_mm / 1000.0, self.mu_water_per_mm)  # 512 KB
        # Two bytes per voxel where the (HU, class) pairs fit a 16-bit palette (projector_palette: the traversal
        # is bound by memory traffic), else one 32-bit word per voxel: low 16 bits HU (int16), high 16 bits
        # class index; one load per voxel step gives both either way.
        self._packed: np.ndarray | None = None
        self.palette = build_palette_volume(hu, label_array, class_lut, labels is not None, len(self.classes))
        if self.palette is None:
            self._packed = np.empty(ct.array.shape, np.uint32)
            pack_voxels(hu, label_array, class_lut, labels is not None, self._packed)
        # Empty-space skipping: rays start and end on a polytope around the voxels with attenuation or a label.
        self.skip_empty = skip_empty
        self.hull = matter_hull(*self.voxels()) if skip_empty else box_hull(ct.array.shape)
        self._gpu = None  # device copy of the traversal's voxels and tables, made on the first CUDA render
        self._outputs = ReusedOutputs()

    @property
    def packed(self) -> np.ndarray:
        """The voxels as 32-bit words (class index << 16 | HU as uint16), what the rest of the library reads
        (export geometry, truncation, virtual patients). Decoded from the palette on first use and kept."""
        if self._packed is None:
            self._packed = self.palette.packed()
        return self._packed

    @packed.setter
    def packed(self, words: np.ndarray) -> None:
        """Replace the voxels with 32-bit words (a virtual patient's): the palette, its tables and the device copy
        are dropped and the empty-space hull is made again (a palette may then be set from the words)."""
        self._packed, self.palette, self._gpu = words, None, None
        self.__dict__.pop("_palette_tables", None)
        self.hull = matter_hull(words) if self.skip_empty else box_hull(words.shape)

    def drop_palette(self) -> None:
        """Keep the voxels as 32-bit words only (decoded once), for a projector that never renders itself but
        feeds virtual patients, which are warped from the words. The voxels are the same, so the hull stays."""
        words = self.packed
        self._packed, self.palette, self._gpu = words, None, None
        self.__dict__.pop("_palette_tables", None)

    def voxels(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(voxels, pair HU, pair class) as the traversal reads them: the palette's uint16 indices and its pair
        tables, or the uint32 packed words with empty tables (see ``projector_kernels.row_extremes``)."""
        return self._traversal_volume()[:3]

    def release_packed(self) -> None:
        """Free the 32-bit words decoded for other readers when the palette holds the voxels (the next use of
        ``packed`` decodes them again); with no palette the words are the voxels and stay."""
        if self.palette is not None:
            self._packed = None

    def _traversal_volume(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(voxels, pair HU, pair class, attenuation table, material table) for the CPU kernel: the palette's
        with per-pair tables, or the packed words with tables per HU code and empty pair tables."""
        palette: PaletteVolume | None = self.palette
        if palette is None:
            return self._packed, NO_PALETTE_HU, NO_PALETTE_CLASS, self.mu_lut, self.material_lut
        if getattr(self, "_palette_tables", (None,))[0] is not palette:  # per-pair tables, made once per palette
            materials = palette.per_pair(self.material_lut) if self.materials else self.material_lut
            self._palette_tables = (palette, palette.per_pair(self.mu_lut), materials)
        _, mu_per_pair, materials_per_pair = self._palette_tables
        return palette.voxels, palette.hu, palette.class_index, mu_per_pair, materials_per_pair

    def _prepare_labels(self, ct, labels, classes, names_table) -> tuple[np.ndarray, np.ndarray]:
        if not labels.same_grid_as(ct):
            raise InputError(
                f"the label map grid differs from the CT grid: labels {labels.describe_grid()} vs CT "
                f"{ct.describe_grid()}. Resample the labels onto the CT grid (nearest neighbour), e.g. with "
                "Slicer's 'Resample Image (BRAINS)' or SimpleITK.Resample"
            )
        array = labels.array
        if not np.issubdtype(array.dtype, np.integer):
            if not np.all(array == np.round(array)):
                raise InputError("the label map holds non-integer values; it must be an integer label image")
            array = array.astype(np.int32)
        values = np.unique(array)
        if values.min() < 0:
            raise InputError("the label map holds negative values; label values must be 0 (background) or >= 1")
        if values.max() > MAX_LABEL_VALUE:  # the value -> class table would take GBs (2^31 - 1: 4.8 GB)
            raise InputError(f"the label map holds the value {int(values.max())}, beyond {MAX_LABEL_VALUE}; a label "
                             "map holds small integers (0 = background): is it a CT or an intensity image?")
        present = [int(v) for v in values if v != 0]
        requested = LabelClasses.from_values(present) if classes is None else classes
        self.classes = requested.restricted_to(present) if present else LabelClasses(())
        if len(self.classes) > 65535:
            raise InputError("at most 65535 output classes can be projected at once")
        if names_table is not None:
            self.unknown_values = unknown_label_values(present, names_table)
        lut = self.classes.lookup_table(int(values.max())).astype(np.uint16)
        return lut, np.ascontiguousarray(array)

    def check_geometry(self, geometry: XrayGeometry) -> None:
        """Raise GeometryError if the set-up cannot image this CT (source inside it)."""
        if self.ct.contains_ras(geometry.source):
            raise GeometryError(
                "the X-ray source lies inside the CT volume; increase the source-to-isocentre distance or "
                "move the isocentre so the source is outside the scanned region"
            )

    def render(self, geometry: XrayGeometry) -> DrrResult:
        """Trace every detector pixel once; returns the DRR and the per-class path lengths.

        The result's arrays may be those of an earlier result that nothing refers to any more (see
        ``ReusedOutputs``): keep the result, or any array or view of it, for as long as you use it; copies and
        arrays derived from it (``masks()``, ``transmission``) are always your own."""
        self.check_geometry(geometry)
        ras_to_ijk = self.ct.ras_to_ijk
        linear, shift = ras_to_ijk[:3, :3], ras_to_ijk[:3, 3] + 0.5  # +0.5: voxel v spans [v, v+1)
        source = linear @ geometry.source + shift
        origin = linear @ geometry.origin + shift
        column_step = linear @ (geometry.column_axis * geometry.spacing[0])
        row_step = linear @ (geometry.row_axis * geometry.spacing[1])
        ijk_to_ras = self.ct.ijk_to_ras[:3, :3]
        metric = ijk_to_ras.T @ ijk_to_ras  # squared RAS length of an IJK displacement
        cols, rows = geometry.size
        # Uninitialised: both kernels write every pixel (the CPU one zeroes each row on its thread first).
        line_integral = self._outputs.get("line_integral", (rows, cols))
        thickness = self._outputs.get("thickness", (len(self.classes), rows, cols))
        class_rows = self._outputs.get("class_rows", (len(self.classes), rows), np.uint8)
        n_materials = len(self.materials.channels) if self.materials else 0
        material_g_cm2 = self._outputs.get("materials", (n_materials, rows, cols))
        args = (self.mu_water_per_mm / 1000.0, self.mu_water_per_mm, source, origin, column_step, row_step, metric,
                self.hull)
        if self.device == "cuda":
            from .projector_gpu import GpuVolume

            if self._gpu is None:
                voxels, pair_hu, pair_class, mu_lut, material_lut = self._traversal_volume()
                self._gpu = GpuVolume(voxels, mu_lut, material_lut, self.hull, pair_hu, pair_class)
            self._gpu.trace(*args, line_integral, thickness, class_rows, material_g_cm2, SOFT_ONLY_BELOW_HU)
        else:
            previous_threads = numba.get_num_threads()
            if self.threads:
                numba.set_num_threads(min(self.threads, numba.config.NUMBA_NUM_THREADS))
            try:
                # Blocks of neighbouring rows dealt to the threads in turn (edge rows miss the body and are cheap).
                row_order = row_schedule(rows, numba.get_num_threads())
                voxels, pair_hu, pair_class, mu_lut, material_lut = self._traversal_volume()
                trace_rays_cpu(voxels, mu_lut, *args, row_order, line_integral, thickness, class_rows,
                               material_lut, material_g_cm2, SOFT_ONLY_BELOW_HU, pair_hu, pair_class)
            finally:
                numba.set_num_threads(previous_threads)
        if n_materials:
            # The soft-tissue channel is the attenuation sum minus what bone voxels do not hold of it: a ray through
            # bone alone (>= 1500 HU) ends at 0 minus rounding (about -1e-14), which the physics refuses.
            np.maximum(material_g_cm2[0], 0.0, out=material_g_cm2[0])
        return DrrResult(geometry, line_integral, thickness, self.classes, list(self.unknown_values),
                         float(self.ct.spacing.min()), material_g_cm2 if n_materials else None,
                         self.materials.channels if self.materials else (), class_rows)
