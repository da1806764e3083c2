"""X-ray projection geometry in Slicer's RAS world frame.

Conventions (every quantity here uses them; nothing is implicit):

* World frame: Slicer's RAS, in millimetres. +x points to the patient's Right, +y Anterior, +z Superior.
* Source: a point (the focal spot) in RAS.
* Detector: a flat rectangle of ``size = (columns, rows)`` pixels with ``spacing = (column_mm, row_mm)``.
  ``column_axis`` (u) is the unit RAS direction in which the column index ``i`` grows (screen right when the
  image is displayed); ``row_axis`` (v) is the direction in which the row index ``j`` grows (screen down).
  ``detector_center`` is the RAS position of the centre of the pixel grid. Pixel ``(i, j)`` has its centre at
  ``origin + i * column_mm * u + j * row_mm * v`` where ``origin`` is the centre of pixel (0, 0).
* Images are numpy arrays indexed ``[j, i]`` (row, column), as Slicer's ``arrayFromVolume`` gives a
  single-slice volume ``[0, j, i]``.
* Display convention of the presets: radiographs are shown as radiologists read them: a frontal view
  with the patient's right on the screen's left and head up; a lateral with anterior on the screen's left.
* ``P`` (3x4) maps homogeneous RAS ``(x, y, z, 1)`` to ``w * (i, j, 1)``, pixel centres at integer ``i, j``,
  scaled so that ``w`` is the depth in mm along the principal ray: ``w > 0`` for points between source and
  detector plane.
* SDD: perpendicular distance from the source to the detector plane. SID: distance from the source to the
  isocentre (the point the view is aimed at, on the principal ray).
* Detector IJK->RAS: the 4x4 placement of a single-slice volume whose voxel (i, j, 0) is pixel (i, j);
  its third axis is the detector normal ``u x v`` with a nominal 1 mm spacing.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .errors import GeometryError

# Fraction of the ray direction that must point along the detector normal (cos 60 deg); beyond that the
# detector is seen edge-on and "does not face the source".
MIN_FACING_COSINE = 0.5


def pixel_counts(width_mm: float, height_mm: float, longer_side_pixels: int) -> tuple[int, int]:
    """(columns, rows) with ``longer_side_pixels`` along the longer detector side and (near-)square pixels."""
    pixel = max(width_mm, height_mm) / int(longer_side_pixels)
    return max(1, round(width_mm / pixel)), max(1, round(height_mm / pixel))


def _unit(vector: Sequence[float]) -> np.ndarray:
    v = np.asarray(vector, dtype=float)
    norm = np.linalg.norm(v)
    if norm == 0:
        raise GeometryError("a direction vector is zero")
    return v / norm


@dataclass(frozen=True)
class XrayGeometry:
    """A point source and a flat detector, in RAS millimetres (see the module docstring)."""

    source: np.ndarray
    detector_center: np.ndarray
    column_axis: np.ndarray
    row_axis: np.ndarray
    size: tuple[int, int]
    spacing: tuple[float, float]
    isocenter: np.ndarray | None = None
    view: str = "custom"

    def __post_init__(self) -> None:
        for name in ("source", "detector_center", "column_axis", "row_axis"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=float).reshape(3))
        if self.isocenter is not None:
            object.__setattr__(self, "isocenter", np.asarray(self.isocenter, dtype=float).reshape(3))
        object.__setattr__(self, "size", (int(self.size[0]), int(self.size[1])))
        object.__setattr__(self, "spacing", (float(self.spacing[0]), float(self.spacing[1])))
        self.validate()

    # ---- validation -------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise GeometryError, with what to change, if this is not a usable X-ray set-up."""
        if min(self.size) < 1:
            raise GeometryError(f"detector size must be at least 1x1 pixels, got {self.size}")
        if min(self.spacing) <= 0:
            raise GeometryError(f"detector pixel spacing must be positive, got {self.spacing} mm")
        for name in ("column_axis", "row_axis"):
            if abs(np.linalg.norm(getattr(self, name)) - 1) > 1e-6:
                raise GeometryError(f"{name} must be a unit vector, got {getattr(self, name)}")
        if abs(float(self.column_axis @ self.row_axis)) > 1e-6:
            raise GeometryError("detector column and row axes must be perpendicular")
        if not np.all(np.isfinite(self.source)) or not np.all(np.isfinite(self.detector_center)):
            raise GeometryError("source and detector centre must be finite RAS points")
        sdd = self.source_to_detector_distance
        if sdd < 1.0:
            raise GeometryError(
                f"the source lies {sdd:.3g} mm from the detector plane; move the source in front of the detector"
            )
        to_detector = self.detector_center - self.source
        facing = abs(float(to_detector @ self.normal)) / float(np.linalg.norm(to_detector))
        if facing < MIN_FACING_COSINE:
            angle = math.degrees(math.acos(min(1.0, facing)))
            raise GeometryError(
                f"the detector does not face the source: its normal is {angle:.0f} deg from the line to the "
                "source (at most 60 deg allowed); rotate the detector towards the source"
            )

    # ---- derived quantities -------------------------------------------------------------------------------
    @property
    def normal(self) -> np.ndarray:
        """Unit detector normal ``u x v`` (may point towards or away from the source)."""
        return np.cross(self.column_axis, self.row_axis)

    @property
    def principal_direction(self) -> np.ndarray:
        """Unit vector from the source, perpendicular to the detector, towards it."""
        n = self.normal
        return n if float((self.detector_center - self.source) @ n) > 0 else -n

    @property
    def source_to_detector_distance(self) -> float:
        """SDD: perpendicular distance from the source to the detector plane, mm."""
        return abs(float((self.detector_center - self.source) @ self.normal))

    @property
    def source_to_isocenter_distance(self) -> float | None:
        """SID: distance from the source to the isocentre, mm (None if no isocentre is set)."""
        return None if self.isocenter is None else float(np.linalg.norm(self.isocenter - self.source))

    @property
    def magnification(self) -> float | None:
        sid = self.source_to_isocenter_distance
        return None if not sid else self.source_to_detector_distance / sid

    @property
    def detector_size_mm(self) -> tuple[float, float]:
        return (self.size[0] * self.spacing[0], self.size[1] * self.spacing[1])

    @property
    def origin(self) -> np.ndarray:
        """RAS centre of pixel (0, 0)."""
        return (
            self.detector_center
            - (self.size[0] - 1) / 2 * self.spacing[0] * self.column_axis
            - (self.size[1] - 1) / 2 * self.spacing[1] * self.row_axis
        )

    def pixel_to_ras(self, i: np.ndarray | float, j: np.ndarray | float) -> np.ndarray:
        """RAS position of (possibly fractional) pixel coordinates; returns shape (..., 3)."""
        i = np.asarray(i, dtype=float)[..., None]
        j = np.asarray(j, dtype=float)[..., None]
        return self.origin + i * self.spacing[0] * self.column_axis + j * self.spacing[1] * self.row_axis

    def corners_ras(self) -> np.ndarray:
        """The four outer corners of the detector (not pixel centres), shape (4, 3), in the order
        (top-left, top-right, bottom-right, bottom-left) of the displayed image."""
        half_u = self.size[0] * self.spacing[0] / 2 * self.column_axis
        half_v = self.size[1] * self.spacing[1] / 2 * self.row_axis
        c = self.detector_center
        return np.array([c - half_u - half_v, c + half_u - half_v, c + half_u + half_v, c - half_u + half_v])

    def projection_matrix(self) -> np.ndarray:
        """3x4 ``P`` mapping homogeneous RAS to homogeneous pixel (i, j, 1); w = depth in mm (> 0 in front)."""
        n = self.principal_direction
        f = self.source_to_detector_distance
        principal_point = self.source + f * n
        offset = principal_point - self.origin
        i0 = float(offset @ self.column_axis) / self.spacing[0]
        j0 = float(offset @ self.row_axis) / self.spacing[1]
        intrinsics = np.array([[f / self.spacing[0], 0, i0], [0, f / self.spacing[1], j0], [0, 0, 1]])
        rotation = np.stack([self.column_axis, self.row_axis, n])
        extrinsics = np.hstack([rotation, (-rotation @ self.source)[:, None]])
        return intrinsics @ extrinsics

    def project(self, points_ras: np.ndarray) -> np.ndarray:
        """Pixel coordinates (i, j) of RAS points, shape (..., 2)."""
        pts = np.asarray(points_ras, dtype=float)
        homogeneous = np.concatenate([pts, np.ones(pts.shape[:-1] + (1,))], axis=-1)
        q = homogeneous @ self.projection_matrix().T
        return q[..., :2] / q[..., 2:3]

    def detector_ijk_to_ras(self, slice_thickness: float = 1.0) -> np.ndarray:
        """4x4 IJK->RAS of a single-slice volume lying on the detector: voxel (i, j, 0) is pixel (i, j)."""
        m = np.eye(4)
        m[:3, 0] = self.column_axis * self.spacing[0]
        m[:3, 1] = self.row_axis * self.spacing[1]
        m[:3, 2] = self.normal * slice_thickness
        m[:3, 3] = self.origin
        return m

    # ---- changes --------------------------------------------------------------------------------------------
    def rotated(self, rotation: np.ndarray, about: Sequence[float] | None = None) -> "XrayGeometry":
        """The whole set-up (source and detector) rotated rigidly about a RAS point (default: isocentre)."""
        r = np.asarray(rotation, dtype=float)
        pivot = np.asarray(about if about is not None else self._pivot(), dtype=float)
        return dataclasses.replace(
            self,
            source=pivot + r @ (self.source - pivot),
            detector_center=pivot + r @ (self.detector_center - pivot),
            column_axis=r @ self.column_axis,
            row_axis=r @ self.row_axis,
        )

    def translated(self, offset_ras: Sequence[float]) -> "XrayGeometry":
        """The whole set-up moved by a RAS offset (mm)."""
        d = np.asarray(offset_ras, dtype=float)
        iso = None if self.isocenter is None else self.isocenter + d
        return dataclasses.replace(
            self, source=self.source + d, detector_center=self.detector_center + d, isocenter=iso
        )

    def transformed(self, matrix: np.ndarray) -> "XrayGeometry":
        """The set-up moved by a rigid 4x4 RAS transform (e.g. a Slicer linear transform node)."""
        m = np.asarray(matrix, dtype=float)
        r, t = m[:3, :3], m[:3, 3]
        iso = None if self.isocenter is None else r @ self.isocenter + t
        return dataclasses.replace(
            self,
            source=r @ self.source + t,
            detector_center=r @ self.detector_center + t,
            column_axis=r @ self.column_axis,
            row_axis=r @ self.row_axis,
            isocenter=iso,
        )

    def with_size(self, size: int | tuple[int, int]) -> "XrayGeometry":
        """Same detector rectangle sampled with a different number of pixels (e.g. a fast preview). An int is the
        pixel count along the longer side, keeping the pixels (near-)square; a tuple is (columns, rows)."""
        cols, rows = pixel_counts(*self.detector_size_mm, size) if isinstance(size, (int, np.integer)) else size
        width, height = self.detector_size_mm
        return dataclasses.replace(self, size=(cols, rows), spacing=(width / cols, height / rows))

    def _pivot(self) -> np.ndarray:
        if self.isocenter is not None:
            return self.isocenter
        return self.source + 0.5 * self.source_to_detector_distance * self.principal_direction

    # ---- serialisation --------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description, including ``P`` and the detector IJK->RAS (both derived, for readers)."""
        return {
            "frame": "RAS (Slicer world), millimetres",
            "view": self.view,
            "source_ras": self.source.tolist(),
            "detector_center_ras": self.detector_center.tolist(),
            "detector_column_axis_ras": self.column_axis.tolist(),
            "detector_row_axis_ras": self.row_axis.tolist(),
            "detector_size_pixels": list(self.size),
            "detector_spacing_mm": list(self.spacing),
            "isocenter_ras": None if self.isocenter is None else self.isocenter.tolist(),
            "source_to_detector_mm": self.source_to_detector_distance,
            "source_to_isocenter_mm": self.source_to_isocenter_distance,
            "projection_matrix": self.projection_matrix().tolist(),
            "projection_matrix_convention": "w*(i, j, 1) = P (x, y, z, 1) in RAS; pixel centres at integers; "
            "i = column, j = row, image array indexed [j, i]",
            "detector_ijk_to_ras": self.detector_ijk_to_ras().tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "XrayGeometry":
        try:
            return cls(
                source=data["source_ras"],
                detector_center=data["detector_center_ras"],
                column_axis=data["detector_column_axis_ras"],
                row_axis=data["detector_row_axis_ras"],
                size=tuple(data["detector_size_pixels"]),
                spacing=tuple(data["detector_spacing_mm"]),
                isocenter=data.get("isocenter_ras"),
                view=data.get("view", "custom"),
            )
        except KeyError as missing:
            raise GeometryError(f"geometry JSON lacks the field {missing}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "XrayGeometry":
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_projection_matrix(
        cls,
        projection: np.ndarray,
        size: tuple[int, int],
        spacing: tuple[float, float],
        in_front: Sequence[float] | None = None,
        view: str = "custom",
    ) -> "XrayGeometry":
        """Recover source and detector from a 3x4 ``P`` (zero skew).

        The pixel pitch is not contained in ``P`` and must be given. ``P`` is defined up to scale; its sign is
        chosen so that ``in_front`` (e.g. the CT centre) has positive depth, or kept as given if omitted.
        The detector is placed where ``P`` puts it: principal point and focal length follow from ``P``.
        """
        p = np.asarray(projection, dtype=float)
        if p.shape != (3, 4):
            raise GeometryError(f"a projection matrix must be 3x4, got shape {p.shape}")
        m = p[:, :3]
        if abs(np.linalg.det(m)) < 1e-12 * np.linalg.norm(m) ** 3:
            raise GeometryError("the projection matrix is degenerate (its left 3x3 block is singular)")
        p = p / np.linalg.norm(m[2])
        if in_front is not None and float(p[2] @ np.append(np.asarray(in_front, float), 1.0)) < 0:
            p = -p
        m = p[:, :3]
        source = -np.linalg.solve(m, p[:, 3])
        n = m[2]
        i0, j0 = float(m[0] @ n), float(m[1] @ n)
        fu_u = m[0] - i0 * n
        fv_v = m[1] - j0 * n
        u, v = _unit(fu_u), _unit(fv_v)
        if abs(float(u @ v)) > 1e-4:
            raise GeometryError("the projection matrix has skew (non-perpendicular pixel axes); not supported")
        focal = float(np.linalg.norm(fu_u)) * spacing[0]
        focal_v = float(np.linalg.norm(fv_v)) * spacing[1]
        if abs(focal - focal_v) > 1e-3 * focal:
            raise GeometryError(
                f"the given pixel spacing {spacing} does not match P: it implies SDD {focal:.2f} mm along "
                f"columns but {focal_v:.2f} mm along rows"
            )
        v = v - (u @ v) * u
        v = v / np.linalg.norm(v)
        principal_point = source + focal * n
        origin = principal_point - i0 * spacing[0] * u - j0 * spacing[1] * v
        center = origin + (size[0] - 1) / 2 * spacing[0] * u + (size[1] - 1) / 2 * spacing[1] * v
        return cls(source, center, u, v, size, spacing, None, view)
