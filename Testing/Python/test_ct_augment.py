"""Synthetic metal implants for 3D training patches (ct_augment, ct-train --metal-fraction)."""

from __future__ import annotations

import numpy as np
import pytest

from XraySegInferLib.ct_augment import STREAK_HALF_LENGTH_VOXELS, add_synthetic_implant


def _bone_patch():
    """A soft-tissue patch (0.05, i.e. 50 HU) holding a bone cylinder (0.3) along k."""
    k, j, i = np.indices((24, 32, 32))
    label = ((j - 16) ** 2 + (i - 16) ** 2 <= 36).astype(np.uint8)
    image = np.where(label > 0, 0.3, 0.05).astype(np.float32)
    return image, label


def test_metal_lies_inside_the_structure_and_streaks_only_in_its_slices():
    image, label = _bone_patch()
    for seed in range(5):
        out = add_synthetic_implant(image, label, np.random.default_rng(seed), 2.0)
        metal = out == 2.0
        assert metal.any() and not (metal & (label == 0)).any()
        changed = out != image
        metal_slices = metal.any(axis=(1, 2))
        assert not changed[~metal_slices].any()  # streaks only where the metal is
        darker = changed & ~metal
        assert darker.any() and (out[darker] < image[darker]).all() and (out >= -1.0).all()
        # Streaks stay near the metal: within the streak length of the rod's axis, which lies inside the (convex)
        # cylinder and so among the metal voxels (give or take a voxel's rounding).
        rods, dark = np.argwhere(metal), np.argwhere(darker)
        nearest = np.min(np.linalg.norm(dark[:, None] - rods[None], axis=2), axis=1)
        assert nearest.max() <= STREAK_HALF_LENGTH_VOXELS + 1.5


def test_same_generator_same_implant_and_small_structures_are_left_alone():
    image, label = _bone_patch()
    a = add_synthetic_implant(image, label, np.random.default_rng(7), 2.0)
    b = add_synthetic_implant(image, label, np.random.default_rng(7), 2.0)
    assert np.array_equal(a, b) and not np.array_equal(a, image)
    tiny = np.zeros_like(label)
    tiny[10, 10, 10:20] = 1
    assert np.array_equal(add_synthetic_implant(image, tiny, np.random.default_rng(7), 2.0), image)


def test_metal_fraction_zero_keeps_the_batches_and_one_paints_metal_into_them(tmp_path, monkeypatch):
    """Runs without implants draw exactly the patches they drew before the option existed: no implant and no
    extra random draw (one ``random()`` per patch, the foreground choice), so their random streams are unchanged."""
    from XraySegInferLib import ct_training
    from XraySegInferLib.ct_training import CtTrainConfig, _batch

    image, label = _bone_patch()
    image = np.pad(image, 8, constant_values=0.05)
    label = np.pad(label, 8)
    volumes, foreground = [(image, label)], [np.argwhere(label > 0)]
    weights = np.ones(1)
    plain = CtTrainConfig(patch_size=(16, 24, 24), batch_size=2, flip=False)
    with_metal = CtTrainConfig(patch_size=(16, 24, 24), batch_size=2, flip=False, metal_fraction=1.0)
    first = _batch(volumes, foreground, plain, 3, weights)
    again = _batch(volumes, foreground, CtTrainConfig(patch_size=(16, 24, 24), batch_size=2, flip=False,
                                                      metal_fraction=0.0), 3, weights)
    metal = _batch(volumes, foreground, with_metal, 3, weights)
    assert all(np.array_equal(x.numpy(), y.numpy()) for x, y in zip(first, again))
    assert float(first[0].max()) < 1.0 and float(metal[0].max()) > 1.5  # the affine blurs the rod's edge only

    draws = {"random": 0}
    real_rng = np.random.default_rng

    class CountingRng:
        def __init__(self, seed):
            self._rng = real_rng(seed)

        def random(self, *args, **kwargs):
            draws["random"] += 1
            return self._rng.random(*args, **kwargs)

        def __getattr__(self, name):
            return getattr(self._rng, name)

    monkeypatch.setattr(ct_training.np.random, "default_rng", CountingRng)
    monkeypatch.setattr(ct_training, "add_synthetic_implant",
                        lambda *a, **k: pytest.fail("an implant was drawn with metal_fraction 0"))
    counted = _batch(volumes, foreground, plain, 3, weights)
    assert draws["random"] == plain.batch_size
    assert all(np.array_equal(x.numpy(), y.numpy()) for x, y in zip(first, counted))


def test_rods_laid_anywhere_put_metal_outside_the_structure_too():
    """--metal-outside: metal is then no sign of the structure (its label is left as it is)."""
    image, label = _bone_patch()
    outside = [add_synthetic_implant(image, label, np.random.default_rng(seed), 2.0, outside=1.0)
               for seed in range(8)]
    assert any(((out == 2.0) & (label == 0)).any() for out in outside)
    inside_only = [add_synthetic_implant(image, label, np.random.default_rng(seed), 2.0) for seed in range(8)]
    assert not any(((out == 2.0) & (label == 0)).any() for out in inside_only)
