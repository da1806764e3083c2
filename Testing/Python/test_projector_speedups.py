"""Empty-space skipping and the CUDA path give the values of the plain traversal.

The CUDA kernel is checked in numba's CUDA simulator on the CPU (a subprocess with NUMBA_ENABLE_CUDASIM=1:
the switch must be set before numba is imported); tests marked ``gpu`` run it on a real GPU when there is one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from XraySegSimLib import DrrProjector, InputError, LabelClasses, Volume, read_volume, views
from XraySegSimLib.materials import MaterialModel
from XraySegSimLib.projector_gpu import cuda_available, resolve_device
from XraySegSimLib.projector_kernels import matter_hull
from conftest import grid_volume, voxel_centers_ras

HERE = Path(__file__).resolve().parent


def body_in_air(shape=(36, 40, 44), spacing=1.5, seed=0):
    """A noisy ellipsoidal 'body' with two labelled bones, in exact air (-1000 HU) padded like a scanner's
    field of view (-2048), and a few isolated dense voxels far out (so the hull is not just the body)."""
    rng = np.random.default_rng(seed)
    volume = grid_volume(np.full(shape, -2048.0, np.float32), spacing, center_ras=(3, -2, 5),
                         rotation=views.rotation_z(20) @ views.rotation_x(-10))
    centres = voxel_centers_ras(volume) - volume.center_ras
    radius = np.linalg.norm(centres / (22, 18, 20), axis=-1)
    volume.array[radius < 1.3] = -1000.0
    body = radius < 1
    volume.array[body] = rng.normal(0, 40, body.sum())
    labels = np.zeros(shape, np.uint8)
    first = np.linalg.norm(centres - (-6, 2, 0), axis=-1) < 7
    second = np.linalg.norm(centres - (7, -3, 4), axis=-1) < 5
    volume.array[first | second] = 900.0
    labels[first], labels[second] = 2, 5
    volume.array[3, 4, 5] = 300.0  # a lone voxel outside the body
    labels[shape[0] - 3, shape[1] - 4, 2] = 5  # a lone labelled voxel in air
    return volume, Volume(labels, volume.ijk_to_ras, "labels")


GEOMETRIES = [("chest-pa", 0, 0), ("carm-ap", 35, -20), ("lumbar-lateral", 10, 25)]


def geometry_for(volume, view, lao, cranial, size=(48, 40)):
    return views.from_preset(view, volume.center_ras, size=size, detector_mm=(72, 60), lao_deg=lao,
                             cranial_deg=cranial)


def test_hull_holds_every_non_empty_voxel_and_cuts_off_the_padding():
    volume, labels = body_in_air()
    projector = DrrProjector(volume, labels)
    directions, lower, upper = matter_hull(projector.packed)
    k, j, i = np.nonzero((volume.array > -1000) | (labels.array > 0))
    corners = np.stack([i, j, k], 1)[:, None, :] + np.array(np.meshgrid([0, 1], [0, 1], [0, 1])).reshape(3, 8).T
    along = corners @ directions.T  # every corner of every non-empty voxel lies within every slab
    assert np.all(along >= lower - 1e-9) and np.all(along <= upper + 1e-9)
    # tight: each slab touches a non-empty voxel's corner
    np.testing.assert_allclose(along.min(axis=(0, 1)), lower)
    np.testing.assert_allclose(along.max(axis=(0, 1)), upper)
    empty = DrrProjector(grid_volume(np.full((5, 6, 7), -1000.0, np.float32), 1.0))
    _, lower, upper = empty.hull
    assert np.all(lower > upper)  # nothing to hit: every ray is skipped


@pytest.mark.parametrize("view, lao, cranial", GEOMETRIES)
def test_skipping_gives_the_image_and_masks_of_the_full_traversal(view, lao, cranial):
    volume, labels = body_in_air()
    geometry = geometry_for(volume, view, lao, cranial)
    skip = DrrProjector(volume, labels, materials=MaterialModel()).render(geometry)
    full = DrrProjector(volume, labels, materials=MaterialModel(), skip_empty=False).render(geometry)
    assert full.line_integral.max() > 0.5 and full.masks().sum() > 100
    np.testing.assert_allclose(skip.line_integral, full.line_integral, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(skip.thickness_mm, full.thickness_mm, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(skip.material_g_cm2, full.material_g_cm2, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(skip.masks(), full.masks())
    np.testing.assert_array_equal(skip.label_image(), full.label_image())


@pytest.mark.slow
def test_skipping_on_the_chest_ct_keeps_image_and_masks(sample_chest_ct):
    ct = read_volume(sample_chest_ct.ct_path)
    labels = read_volume(sample_chest_ct.labels_path)
    bones = LabelClasses.totalsegmentator_bones()
    geometry = views.from_preset("chest-ap", ct.center_ras, size=128, lao_deg=15)
    skip = DrrProjector(ct, labels, bones).render(geometry)
    full = DrrProjector(ct, labels, bones, skip_empty=False).render(geometry)
    np.testing.assert_allclose(skip.line_integral, full.line_integral, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(skip.thickness_mm, full.thickness_mm, rtol=1e-6, atol=1e-5)
    np.testing.assert_array_equal(skip.masks(), full.masks())


def test_device_choice():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if cuda_available() else "cpu")
    with pytest.raises(InputError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    if not cuda_available():
        with pytest.raises(InputError, match="no CUDA GPU is usable here.*--device auto"):
            resolve_device("cuda")


GPU_SCRIPT = """
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from test_projector_speedups import body_in_air, geometry_for, GEOMETRIES
from XraySegSimLib import DrrProjector
from XraySegSimLib.materials import MaterialModel
volume, labels = body_in_air()
projector = DrrProjector(volume, labels, materials=MaterialModel(), device="cuda")
assert projector.palette is not None
if sys.argv[4] == "words":  # the 32-bit words a virtual patient renders from, not the 2-byte palette
    projector.packed = projector.packed.copy()
other = GEOMETRIES[(int(sys.argv[3]) + 1) % len(GEOMETRIES)]
projector.render(geometry_for(volume, *other, size=(24, 20)))  # first another view: the buffers are reused
view, lao, cranial = GEOMETRIES[int(sys.argv[3])]
result = projector.render(geometry_for(volume, view, lao, cranial, size=(24, 20)))
np.savez(sys.argv[2], line=result.line_integral, thickness=result.thickness_mm, materials=result.material_g_cm2,
         class_rows=result.class_rows)
print(json.dumps({"device": projector.device}))
"""


def render_in_subprocess(tmp_path, geometry_index: int, simulator: bool, voxels: str = "palette"):
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1" if simulator else "0")
    out = tmp_path / f"gpu-{geometry_index}.npz"
    done = subprocess.run([sys.executable, "-c", GPU_SCRIPT, str(HERE), str(out), str(geometry_index), voxels],
                          capture_output=True, text=True, env=env, cwd=HERE, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["device"] == "cuda"
    return np.load(out)


def assert_matches_cpu(gpu, geometry_index):
    volume, labels = body_in_air()
    view, lao, cranial = GEOMETRIES[geometry_index]
    cpu = DrrProjector(volume, labels, materials=MaterialModel()).render(
        geometry_for(volume, view, lao, cranial, size=(24, 20)))
    assert cpu.line_integral.max() > 0.5 and cpu.masks().sum() > 20
    relative = np.abs(gpu["line"] - cpu.line_integral).max() / cpu.line_integral.max()
    assert relative < 1e-6
    np.testing.assert_allclose(gpu["thickness"], cpu.thickness_mm, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(gpu["materials"], cpu.material_g_cm2, rtol=1e-6, atol=1e-6)
    gpu_masks = (gpu["thickness"] >= cpu.min_mask_thickness_mm) & (gpu["thickness"] > 0)
    np.testing.assert_array_equal(gpu_masks, cpu.masks())
    np.testing.assert_array_equal(gpu["class_rows"], cpu.class_rows)
    np.testing.assert_array_equal(gpu["class_rows"], (gpu["thickness"] > 0).any(axis=2))


@pytest.mark.slow
def test_cuda_kernel_in_the_simulator_matches_the_cpu(tmp_path):
    """The same kernel source, run thread by thread by numba's CUDA simulator, on an oblique view: over the
    2-byte palette (what a projector uploads) and over the 32-bit words (a virtual patient's)."""
    assert_matches_cpu(render_in_subprocess(tmp_path, 1, simulator=True), 1)
    assert_matches_cpu(render_in_subprocess(tmp_path, 2, simulator=True, voxels="words"), 2)


COMPILE_SCRIPT = """
import types as pytypes
import numba.cuda.dispatcher as dispatcher
from numba import types
from numba.cuda import compiler
# No GPU here: device functions ask the current device for its compute capability; answer an H200's (sm_90).
dispatcher.get_current_device = lambda: pytypes.SimpleNamespace(compute_capability=(9, 0))
from XraySegSimLib.projector_cuda import make_kernel
f64, f32 = types.float64, types.float32
a1, a2 = types.Array(f64, 1, "C"), types.Array(f64, 2, "C")
img, stack, rows = types.Array(f32, 2, "C"), types.Array(f32, 3, "C"), types.Array(types.uint8, 2, "C")
for with_materials in (False, True):
    kernel = make_kernel(with_materials)
    for word in (types.uint32, types.uint16):  # packed words, palette indices
        signature = (types.Array(word, 3, "C"), types.Array(word, 1, "C"), a1, f64, f64, a1, a1, a1, a1,
                     a2, a2, a1, a1, img, stack, rows, img, stack, types.int64, types.Array(types.int16, 1, "C"),
                     types.Array(types.uint16, 1, "C"))
        compiled = compiler.compile_cuda(kernel.py_func, types.void, signature, cc=(9, 0))
        assert "define" in compiled.library.get_llvm_str()
print("ok")
"""


@pytest.mark.slow
def test_cuda_kernel_types_and_lowers_for_the_cuda_target():
    """The simulator runs Python, so it accepts what the CUDA compiler refuses (it refused builtin min/max):
    type the kernel and lower it to NVVM IR for sm_90, everything short of PTX (which needs libNVVM)."""
    done = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, NUMBA_ENABLE_CUDASIM="0"))
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_available(), reason="no CUDA GPU")
@pytest.mark.parametrize("geometry_index", range(len(GEOMETRIES)))
@pytest.mark.parametrize("voxels", ["palette", "words"])
def test_cuda_kernel_on_the_gpu_matches_the_cpu(tmp_path, geometry_index, voxels):
    assert_matches_cpu(render_in_subprocess(tmp_path, geometry_index, simulator=False, voxels=voxels), geometry_index)


@pytest.mark.skipif(cuda_available(), reason="checks the answer without a GPU")
def test_cli_device_cuda_without_a_gpu_is_one_line_and_status_2(tmp_path):
    from conftest import write_image

    volume, labels = body_in_air()
    ct = write_image(volume.array, volume.ijk_to_ras, tmp_path / "ct.nrrd")
    command = [sys.executable, "-m", "XraySegInferLib.entry", "render", "--ct", str(ct), "--size", "16",
               "--out", str(tmp_path / "out")]
    done = subprocess.run(command + ["--device", "cuda"], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, NUMBA_ENABLE_CUDASIM="0"))
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "no CUDA GPU is usable" in done.stderr
    assert not (tmp_path / "out").exists()
    done = subprocess.run(command + ["--device", "auto"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-1000:]
    assert (tmp_path / "out").is_dir()


@pytest.mark.skipif(cuda_available(), reason="checks the answer without a GPU")
def test_export_device_cuda_without_a_gpu_writes_nothing(tmp_path, capsys):
    from conftest import write_image
    from XraySegInferLib.entry import main

    volume, labels = body_in_air()
    ct = write_image(volume.array, volume.ijk_to_ras, tmp_path / "ct.nrrd")
    mask = write_image(labels.array, labels.ijk_to_ras, tmp_path / "labels.nrrd")
    out = tmp_path / "out"
    command = ["export", "--ct", str(ct), "--labels", str(mask), "--view", "chest-ap", "--views-per-ct", "1",
               "--size", "24", "--physics", "none", "--quiet", "--out", str(out)]
    assert main(command + ["--device", "cuda"]) == 2
    assert "no CUDA GPU is usable" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_reused_output_arrays_never_change_a_result_the_caller_still_holds():
    """Renders reuse the previous render's arrays only once nothing refers to them: a held result, or a view
    of one, keeps its values through later renders of other views; a dropped one is recycled and the
    recycled render equals a render into fresh arrays (the kernel zeroes what it reuses)."""
    volume, labels = body_in_air()
    projector = DrrProjector(volume, labels)
    first_view, second_view = (geometry_for(volume, *g) for g in GEOMETRIES[:2])
    held = projector.render(first_view)
    held_copy = (held.line_integral.copy(), held.thickness_mm.copy())
    view_of_thickness = projector.render(second_view).thickness_mm[1]  # the result itself is dropped
    view_copy = view_of_thickness.copy()
    used = set()  # addresses of the arrays of dropped results, all rendered with the second view
    for _ in range(3):
        again = projector.render(second_view)
        assert not np.shares_memory(again.thickness_mm, held.thickness_mm)
        assert not np.shares_memory(again.thickness_mm, view_of_thickness)
        used.update(a.__array_interface__["data"][0] for a in (again.line_integral, again.thickness_mm))
        del again
    np.testing.assert_array_equal(held.line_integral, held_copy[0])
    np.testing.assert_array_equal(held.thickness_mm, held_copy[1])
    np.testing.assert_array_equal(view_of_thickness, view_copy)
    recycled = projector.render(first_view)  # into dropped arrays, dirty with the other view's values
    assert {a.__array_interface__["data"][0] for a in (recycled.line_integral, recycled.thickness_mm)} <= used
    fresh = DrrProjector(volume, labels).render(first_view)
    np.testing.assert_array_equal(recycled.line_integral, fresh.line_integral)
    np.testing.assert_array_equal(recycled.thickness_mm, fresh.thickness_mm)
    np.testing.assert_array_equal(recycled.line_integral, held_copy[0])


@pytest.mark.parametrize("with_materials", [False, True])
def test_class_rows_mark_exactly_the_rows_with_path_length(with_materials):
    """DrrResult.class_rows, set by the kernel where it adds path length, is the rows' any(thickness > 0),
    on every view (so the export's masks may skip the rows it marks empty), also when the row is recycled."""
    volume, labels = body_in_air()
    projector = DrrProjector(volume, labels, materials=MaterialModel() if with_materials else None)
    for view, lao, cranial in GEOMETRIES + GEOMETRIES:  # the second round renders into recycled arrays
        result = projector.render(geometry_for(volume, view, lao, cranial))
        expected = (result.thickness_mm > 0).any(axis=2)
        assert result.class_rows.dtype == np.uint8 and 0 < expected.sum() < expected.size
        np.testing.assert_array_equal(result.class_rows, expected)


def test_output_pool_hands_out_only_free_arrays_and_stays_under_its_byte_cap():
    """ReusedOutputs: an array someone holds is never handed out again; dropped ones are; the pool keeps at
    most ``keep`` arrays per output and, while idle, no more than ``max_bytes`` (beyond the newest array)."""
    from XraySegSimLib.projector import ReusedOutputs

    pool = ReusedOutputs(keep=3, max_bytes=2 * 4000)
    held = [pool.get("thickness", (1000,)) for _ in range(4)]  # all held: four distinct arrays
    assert len({a.__array_interface__["data"][0] for a in held}) == 4
    kept = pool._arrays["thickness"]
    assert len(kept) <= 2 and sum(a.nbytes for a in kept) <= 8000  # the byte cap: two arrays of 4 kB
    address = held[-1].__array_interface__["data"][0]
    del held[-1]
    again = pool.get("thickness", (1000,))
    assert again.__array_interface__["data"][0] == address  # the newest, once dropped, comes back
    assert not any(np.shares_memory(again, a) for a in held)
    other_shape = pool.get("thickness", (10,))
    assert other_shape.shape == (10,) and not np.shares_memory(other_shape, again)
