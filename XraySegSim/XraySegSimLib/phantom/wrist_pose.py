"""Pose and size of the wrist phantom's skeleton: smoothed model meshes, posed and scaled, in RAS mm.

The hand frame (see :mod:`.hand_meshes`): X palmar, Y proximal, Z radial, origin at the wrist joint centre.
Posing, in this order:

* fingers 2-5 straightened from the model's relaxed curl to ``finger_flexion_deg`` at each joint (rotation
  about Z through the joint centre, the midpoint of the closest vertex pair of the two bones), then spread
  about the palmar axis (X) through the MCP joint by ``finger_spread_deg`` (index towards the thumb, little
  finger away; the thumb is abducted by half of it);
* the wrist: flexion (+ palmar) about Z and radial (+) / ulnar (-) deviation about X through the origin; the
  proximal carpal row follows half of the motion, the distal row and the hand all of it (the midcarpal joint
  takes the rest), radius and ulna stay;
* size: ``scale`` overall, ``width_scale`` across (palmar-dorsal and radio-ulnar) against the length;
* RAS: R = Z (radial side of a right hand is the patient's right in the anatomical position), A = X (palm
  forwards), S = Y (fingers point down); ``side="left"`` mirrors R.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .hand_meshes import CARPALS, load_hand_meshes

PROXIMAL_ROW = ("scaphoid", "lunate", "triquetrum", "pisiform")
FOREARM = ("radius", "ulna")
FINGER_CHAINS = {
    digit: (f"metacarpal_{digit}", f"phalanx_proximal_{digit}", f"phalanx_middle_{digit}", f"phalanx_distal_{digit}")
    for digit in (2, 3, 4, 5)
}
THUMB = ("metacarpal_1", "phalanx_proximal_1", "phalanx_distal_1")
SPREAD_WEIGHT = {2: 1.0, 3: 0.0, 4: -1.0, 5: -1.8}  # index towards the thumb (+Z), ring and little away
# Label values and names written by the phantom (names.csv); the wrist paper's 10 bones first.
BONE_NAMES = (("radius", "ulna") + tuple(CARPALS)
              + tuple(f"metacarpal_{n}" for n in range(1, 6))
              + tuple(f"phalanx_proximal_{n}" for n in range(1, 6))
              + tuple(f"phalanx_middle_{n}" for n in range(2, 6))
              + tuple(f"phalanx_distal_{n}" for n in range(1, 6)))


@dataclass(frozen=True)
class WristPose:
    """Pose and size of one phantom (degrees; scales are factors)."""

    flexion_deg: float = 0.0
    deviation_deg: float = 0.0
    finger_spread_deg: float = 5.0
    finger_flexion_deg: float = 5.0
    scale: float = 1.0
    width_scale: float = 1.0
    side: str = "right"


def _rot(axis: str, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "z":
        return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    raise ValueError(axis)


@lru_cache(maxsize=1)
def smoothed_meshes(subdivisions: int = 2) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The model meshes, holes filled and Loop-subdivided (the coarse 34-400 vertex meshes become smooth)."""
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    from ..mesh_labels import edge_count, oriented_closed, triangle_polydata

    out = {}
    for bone, (points, cells) in load_hand_meshes().items():
        points, cells = _repaired(points, cells)
        # A few model meshes have small holes (2-4 open edges); consistent orientation before subdividing.
        normals = oriented_closed(triangle_polydata(points, cells), hole_size=50.0)
        if edge_count(normals.GetOutput(), boundary=False) == 0:
            smoother = vtk.vtkLoopSubdivisionFilter()
            smoother.SetNumberOfSubdivisions(subdivisions)
            smoother.SetInputConnection(normals.GetOutputPort())
        else:  # Loop subdivision needs a manifold mesh: split long edges, then windowed-sinc smoothing
            split = vtk.vtkAdaptiveSubdivisionFilter()
            split.SetMaximumEdgeLength(1.5)
            split.SetInputConnection(normals.GetOutputPort())
            smoother = vtk.vtkWindowedSincPolyDataFilter()
            smoother.SetInputConnection(split.GetOutputPort())
            smoother.SetNumberOfIterations(20)
            smoother.SetPassBand(0.1)
            smoother.NonManifoldSmoothingOn()
            smoother.NormalizeCoordinatesOn()
        smoother.Update()
        smooth = smoother.GetOutput()
        out[bone] = (vtk_to_numpy(smooth.GetPoints().GetData()).astype(float),
                     vtk_to_numpy(smooth.GetPolys().GetConnectivityArray()).reshape(-1, 3).astype(np.int64))
    return out


def _repaired(points: np.ndarray, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge coincident points, drop duplicate triangles and those on edges shared by 3+ triangles (a few model
    meshes have such defects); the holes left are closed by vtkFillHolesFilter afterwards."""
    points, inverse = np.unique(np.round(points, 5), axis=0, return_inverse=True)
    cells = inverse.ravel()[cells]
    cells = cells[(cells[:, 0] != cells[:, 1]) & (cells[:, 1] != cells[:, 2]) & (cells[:, 0] != cells[:, 2])]
    for _ in range(4):  # closing one hole can leave a pinched vertex: repeat until every edge has two triangles
        _, first = np.unique(np.sort(cells, 1), axis=0, return_index=True)
        cells = cells[np.sort(first)]
        edges = np.sort(np.concatenate([cells[:, [0, 1]], cells[:, [1, 2]], cells[:, [2, 0]]]), 1)
        _, edge_id, uses = np.unique(edges, axis=0, return_inverse=True, return_counts=True)
        if np.all(uses == 2):
            break
        overused = (uses[edge_id.ravel()] > 2).reshape(3, -1).any(0)
        points, cells = _closed(points, cells[~overused])
    return points, cells


def _closed(points: np.ndarray, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Close every hole (a loop of boundary edges) with a fan around the loop's centroid."""
    edges = np.concatenate([cells[:, [0, 1]], cells[:, [1, 2]], cells[:, [2, 0]]])
    keys, counts = np.unique(np.sort(edges, 1), axis=0, return_counts=True)
    boundary = {tuple(e) for e in keys[counts == 1]}
    directed = [tuple(e) for e in edges if tuple(sorted(e)) in boundary]
    successor = {}
    for a, b in directed:
        successor.setdefault(int(a), []).append(int(b))
    new_points, new_cells = [points], [cells]
    next_index = len(points)
    while successor:
        start = next(iter(successor))
        loop, current = [start], start
        while True:
            following = successor[current].pop()
            if not successor[current]:
                del successor[current]
            if following == start or following not in successor:
                break
            loop.append(following)
            current = following
        if len(loop) < 3:
            continue
        new_points.append(points[loop].mean(0, keepdims=True))
        # Boundary edges run a->b in their triangle; the cap triangle runs b->a to keep the orientation.
        new_cells.append(np.array([[loop[(i + 1) % len(loop)], loop[i], next_index] for i in range(len(loop))]))
        next_index += 1
    return np.concatenate(new_points), np.concatenate(new_cells).astype(np.int64)


def _axis(points: np.ndarray, away_from: np.ndarray) -> np.ndarray:
    """Principal axis of a bone's vertices, pointing away from ``away_from``."""
    centred = points - points.mean(0)
    axis = np.linalg.svd(centred, full_matrices=False)[2][0]
    return axis if axis @ (points.mean(0) - away_from) >= 0 else -axis


def _joint_centre(parent: np.ndarray, child: np.ndarray) -> np.ndarray:
    from scipy.spatial import cKDTree

    distance, index = cKDTree(parent).query(child)
    nearest = int(np.argmin(distance))
    return (child[nearest] + parent[index[nearest]]) / 2


def _palmar_angle(direction: np.ndarray) -> float:
    """Angle (degrees) of a direction in the X-Y plane from distal (-Y), positive towards palmar (+X)."""
    return float(np.degrees(np.arctan2(direction[0], -direction[1])))


def _turn(points: dict[str, np.ndarray], bones, rotation: np.ndarray, centre: np.ndarray) -> None:
    for bone in bones:
        points[bone] = (points[bone] - centre) @ rotation.T + centre


def posed_points(pose: WristPose) -> dict[str, np.ndarray]:
    """{bone: vertices (N, 3) in RAS mm} for ``pose``; triangles are those of :func:`smoothed_meshes`."""
    meshes = smoothed_meshes()
    points = {bone: p.copy() for bone, (p, _) in meshes.items()}
    for digit, chain in FINGER_CHAINS.items():
        mcp = None
        for parent, child in zip(chain[:-1], chain[1:]):
            centre = _joint_centre(points[parent], points[child])
            mcp = centre if mcp is None else mcp
            parent_dir = _axis(points[parent], centre + 100 * np.array([0, 1.0, 0]))
            child_dir = _axis(points[child], centre)
            turn = _palmar_angle(parent_dir) + pose.finger_flexion_deg - _palmar_angle(child_dir)
            _turn(points, chain[chain.index(child):], _rot("z", turn), centre)
        _turn(points, chain[1:], _rot("x", -pose.finger_spread_deg * SPREAD_WEIGHT[digit]), mcp)
    cmc = _joint_centre(points["trapezium"], points["metacarpal_1"])
    _turn(points, THUMB, _rot("x", -0.5 * pose.finger_spread_deg), cmc)
    full = _rot("z", pose.flexion_deg) @ _rot("x", -pose.deviation_deg)
    half = _rot("z", pose.flexion_deg / 2) @ _rot("x", -pose.deviation_deg / 2)
    origin = np.zeros(3)
    _turn(points, PROXIMAL_ROW, half, origin)
    _turn(points, [b for b in points if b not in PROXIMAL_ROW and b not in FOREARM], full, origin)
    size = np.diag([pose.scale * pose.width_scale, pose.scale, pose.scale * pose.width_scale])
    to_ras = np.array([[0, 0, 1.0], [1.0, 0, 0], [0, 1.0, 0]])  # (x, y, z) hand -> (R, A, S) = (z, x, y)
    if pose.side == "left":
        to_ras = np.diag([-1.0, 1, 1]) @ to_ras
    elif pose.side != "right":
        raise ValueError(f"side must be 'right' or 'left', got {pose.side!r}")
    return {bone: p @ (to_ras @ size).T for bone, p in points.items()}


def posed_polydata(pose: WristPose) -> dict[str, object]:
    """{bone: vtkPolyData in RAS mm} for ``pose``, in :data:`BONE_NAMES` order."""
    from ..mesh_labels import triangle_polydata

    meshes = smoothed_meshes()
    out = {}
    for bone, points in posed_points(pose).items():
        out[bone] = triangle_polydata(points, meshes[bone][1])
    return {bone: out[bone] for bone in BONE_NAMES}
