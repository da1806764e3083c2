"""The projector's 16-bit palette volume holds exactly the voxels of the 32-bit packed words, and the traversal
over it gives the same outputs bit for bit; where the pairs do not fit 16 bits the projector keeps the words."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from XraySegSimLib import DrrProjector, LabelClasses, read_volume, views
from XraySegSimLib.materials import MaterialModel
from XraySegSimLib.projector_kernels import matter_hull, pack_voxels
from XraySegSimLib.projector_palette import MAX_PALETTE_CLASSES, build_palette_volume
from conftest import grid_volume
from test_projector_speedups import GEOMETRIES, body_in_air, geometry_for


def packed_words(volume, labels, projector):
    """What pack_voxels writes for this CT and label map (the reference the palette must reproduce)."""
    class_lut = projector.classes.lookup_table(int(labels.array.max())).astype(np.uint16)
    words = np.empty(volume.array.shape, np.uint32)
    pack_voxels(volume.array, labels.array, class_lut, True, words)
    return words


def with_packed_words(projector):
    """The same projector forced onto the 32-bit words (the path a virtual patient takes)."""
    words_only = copy.copy(projector)
    words_only.packed = projector.packed.copy()
    assert words_only.palette is None
    return words_only


def test_palette_decodes_to_the_packed_words_and_orders_empty_pairs_first():
    volume, labels = body_in_air()
    projector = DrrProjector(volume, labels)
    palette = projector.palette
    assert palette is not None and palette.voxels.dtype == np.uint16 and palette.voxels.nbytes * 2 == volume.array.size * 4
    np.testing.assert_array_equal(palette.packed(), packed_words(volume, labels, projector))
    np.testing.assert_array_equal(projector.packed, packed_words(volume, labels, projector))
    # every pair once; empty ones (no label, HU <= -1000: -2048 padding and -1000 air) are the first n_empty
    pairs = set(zip(palette.hu.tolist(), palette.class_index.tolist()))
    assert len(pairs) == len(palette.hu)
    empty = (palette.class_index == 0) & (palette.hu <= -1000)
    assert palette.n_empty == 2 and empty[:palette.n_empty].all() and not empty[palette.n_empty:].any()
    # the hull from the palette is the hull from the words
    for ours, words in zip(projector.hull, matter_hull(projector.packed)):
        np.testing.assert_array_equal(ours, words)


@pytest.mark.parametrize("view, lao, cranial", GEOMETRIES)
def test_palette_traversal_gives_the_outputs_of_the_packed_words_bit_for_bit(view, lao, cranial):
    volume, labels = body_in_air()
    projector = DrrProjector(volume, labels, materials=MaterialModel())
    geometry = geometry_for(volume, view, lao, cranial)
    ours = projector.render(geometry)
    words = with_packed_words(projector).render(geometry)
    assert words.line_integral.max() > 0.5 and words.masks().sum() > 100
    for name in ("line_integral", "thickness_mm", "material_g_cm2", "class_rows"):
        np.testing.assert_array_equal(getattr(ours, name), getattr(words, name), err_msg=name)


def test_too_many_pairs_keep_the_packed_words_with_the_same_image():
    # 3 classes x 30,000 distinct HU values (each third of the slices holds all of them): 90,000 pairs
    shape = (30, 40, 80)
    hu = (np.arange(np.prod(shape), dtype=np.float32) % 30000 - 1000).reshape(shape)
    volume = grid_volume(hu, 1.0)
    label_array = np.repeat(np.arange(1, 4, dtype=np.uint8), 10)[:, None, None] * np.ones(shape, np.uint8)
    labels = grid_volume(label_array, 1.0)
    assert build_palette_volume(hu, label_array, np.arange(4, dtype=np.uint16), True, 3) is None
    projector = DrrProjector(volume, labels)
    assert projector.palette is None and projector.packed.dtype == np.uint32
    np.testing.assert_array_equal(projector.packed, packed_words(volume, labels, projector))
    # the same HU without the labels fits (30,000 pairs) and renders the same line integral
    no_labels = DrrProjector(volume)
    assert no_labels.palette is not None
    geometry = views.from_preset("chest-pa", volume.center_ras, size=(32, 30), detector_mm=(70, 66))
    np.testing.assert_array_equal(no_labels.render(geometry).line_integral, projector.render(geometry).line_integral)


def test_more_classes_than_the_palette_takes_keep_the_packed_words():
    shape = (8, 12, 2 * (MAX_PALETTE_CLASSES + 1))
    label_array = np.tile(np.arange(1, MAX_PALETTE_CLASSES + 2, dtype=np.uint16).repeat(2), (shape[0], shape[1], 1))
    volume = grid_volume(np.full(shape, 500.0, np.float32), 1.0)
    projector = DrrProjector(volume, grid_volume(label_array, 1.0))
    assert len(projector.classes) == MAX_PALETTE_CLASSES + 1 and projector.palette is None
    assert np.array_equal(projector.packed >> 16, label_array)  # class index = label value here


@pytest.mark.slow
def test_palette_on_the_chest_ct_with_its_bones(sample_chest_ct):
    ct = read_volume(sample_chest_ct.ct_path)
    labels = read_volume(sample_chest_ct.labels_path)
    projector = DrrProjector(ct, labels, LabelClasses.totalsegmentator_bones())
    assert projector.palette is not None and 40000 < len(projector.palette.hu) <= 65536
    geometry = views.from_preset("chest-ap", ct.center_ras, size=96, lao_deg=25)
    ours = projector.render(geometry)
    words = with_packed_words(projector).render(geometry)
    for name in ("line_integral", "thickness_mm", "class_rows"):
        np.testing.assert_array_equal(getattr(ours, name), getattr(words, name), err_msg=name)


def test_released_words_are_decoded_again_and_renders_do_not_need_them():
    volume, labels = body_in_air()
    projector = DrrProjector(volume, labels)
    geometry = geometry_for(volume, *GEOMETRIES[1])
    words = projector.packed.copy()
    before = projector.render(geometry).line_integral.copy()
    projector.release_packed()
    assert projector._packed is None  # freed: the palette alone holds the voxels
    np.testing.assert_array_equal(projector.render(geometry).line_integral, before)
    np.testing.assert_array_equal(projector.packed, words)
    words_only = with_packed_words(projector)
    words_only.release_packed()  # no palette: the words are the voxels and stay
    np.testing.assert_array_equal(words_only.packed, words)


def test_voxel_words_follow_numpy_rounding_and_clipping_for_any_ct_dtype():
    # an independent reference: NumPy's round half to even and the int16 clip, class index in the high bits
    hu = np.array([-40000.0, -32768.6, -1000.5, -0.5, 0.5, 1.5, 12.49, 2.5, 32767.4, 40000.5, np.inf, -np.inf],
                  np.float64).reshape(2, 2, 3)
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2], np.uint8).reshape(2, 2, 3)
    expected_hu = np.clip(np.round(np.clip(hu, -32768, 32767)), -32768, 32767).astype(np.int16)
    expected = (labels.astype(np.uint32) << 16) | expected_hu.view(np.uint16).astype(np.uint32)
    for dtype in (np.float64, np.float32):
        palette = build_palette_volume(hu.astype(dtype), labels, np.arange(3, dtype=np.uint16), True, 2)
        np.testing.assert_array_equal(palette.packed(), expected, err_msg=str(dtype))
    integers = np.arange(-1500, 1500, 250, dtype=np.int16).reshape(2, 2, 3)
    palette = build_palette_volume(integers, labels, np.arange(3, dtype=np.uint16), True, 2)
    np.testing.assert_array_equal(palette.packed() & 0xFFFF, integers.view(np.uint16))
    assert palette.n_empty == int(np.count_nonzero((integers <= -1000) & (labels == 0)))


def test_new_words_drop_the_palette_its_tables_and_the_hull_of_the_old_voxels():
    volume, labels = body_in_air()
    projector = DrrProjector(volume, labels)
    geometry = geometry_for(volume, *GEOMETRIES[0])
    projector.render(geometry)  # makes the per-pair tables
    assert "_palette_tables" in projector.__dict__
    emptied = projector.packed.copy()
    emptied[:, :, : emptied.shape[2] // 2] = np.uint32(np.int16(-1000).view(np.uint16))  # half the body is air now
    projector.packed = emptied
    assert projector.palette is None and "_palette_tables" not in projector.__dict__ and projector._gpu is None
    for ours, fresh in zip(projector.hull, matter_hull(emptied)):
        np.testing.assert_array_equal(ours, fresh)
    reference = DrrProjector(volume, labels)
    reference.packed = emptied
    np.testing.assert_array_equal(projector.render(geometry).line_integral, reference.render(geometry).line_integral)


def test_kernels_refuse_voxels_and_tables_that_do_not_go_together():
    volume, labels = body_in_air()
    projector = DrrProjector(volume, labels)
    voxels, pair_hu, pair_class = projector.voxels()
    assert voxels.dtype == np.uint16 and len(pair_class) == len(pair_hu) > 0
    with pytest.raises(ValueError, match="uint16 voxels with no palette"):
        matter_hull(voxels)  # palette indices read as packed words
    with pytest.raises(ValueError, match="uint32 voxels with a palette"):
        matter_hull(projector.packed, pair_hu, pair_class)


def test_dropping_the_palette_keeps_the_voxels_the_hull_and_the_image():
    volume, labels = body_in_air()
    projector = DrrProjector(volume, labels)
    geometry = geometry_for(volume, *GEOMETRIES[2])
    before, hull, words = projector.render(geometry).line_integral.copy(), projector.hull, projector.packed.copy()
    projector.drop_palette()
    assert projector.palette is None and projector.hull is hull and "_palette_tables" not in projector.__dict__
    np.testing.assert_array_equal(projector.packed, words)
    np.testing.assert_array_equal(projector.render(geometry).line_integral, before)
