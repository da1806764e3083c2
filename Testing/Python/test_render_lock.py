"""Renders are serialised in a process (numba's workqueue layer aborts when two parallel kernels overlap): two
threads rendering at once give exactly the images of single renders; while a render holds the lock a caller that
must not wait (the GUI preview) is refused with a clear message and nothing changes, and a caller that waits
runs only once the lock is free."""

from __future__ import annotations

import threading

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

from test_mrml_adapter import add_segmentation, add_volume, carm, ct_ijk_to_ras, node_ids, phantom_arrays  # noqa: E402
from XraySegSimLib.mrml_adapter import RENDER_LOCK, RenderBusy, XraySimScene  # noqa: E402


def test_two_threads_rendering_at_once_match_single_renders(app):
    hu, masks = phantom_arrays()
    scenes = []
    for angle in (0.0, 35.0):  # two set-ups, each with its own CT, labels and output nodes
        ct = add_volume(app.scene, hu, ct_ijk_to_ras(), f"CT {angle}")
        segmentation = add_segmentation(app.scene, masks, ct_ijk_to_ras(), f"Bones {angle}")
        sim = XraySimScene(app.scene, name=f"rig {angle}")
        sim.set_geometry(carm(ct, lao_deg=angle))
        scenes.append((sim, ct, segmentation))
    single = [sim.render(ct, seg) for sim, ct, seg in scenes]
    results: dict[int, list] = {0: [], 1: []}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def work(index: int) -> None:
        sim, ct, seg = scenes[index]
        try:
            start.wait()
            for _ in range(3):
                results[index].append(sim.render(ct, seg))
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert errors == [] and all(len(r) == 3 for r in results.values())
    for index, reference in enumerate(single):
        for result in results[index]:
            np.testing.assert_array_equal(result.line_integral, reference.line_integral)
            np.testing.assert_array_equal(result.thickness_mm, reference.thickness_mm)
    assert not np.array_equal(single[0].line_integral, single[1].line_integral)  # two different views


def test_a_render_that_must_not_wait_is_refused_while_another_runs(app):
    hu, masks = phantom_arrays()
    ct = add_volume(app.scene, hu, ct_ijk_to_ras(), "CT")
    segmentation = add_segmentation(app.scene, masks, ct_ijk_to_ras())
    sim = XraySimScene(app.scene)
    sim.set_geometry(carm(ct))
    reference = sim.render(ct, segmentation)
    sim.set_geometry(carm(ct, lao_deg=20.0))
    before = node_ids(app.scene)
    done = threading.Event()
    waited: list = []
    with RENDER_LOCK:  # as a render in another thread holds it
        with pytest.raises(RenderBusy, match="another render is running"):
            sim.render(ct, segmentation, wait=False)
        assert node_ids(app.scene) == before and sim.last_result is reference
        waiter = threading.Thread(target=lambda: (waited.append(sim.render(ct, segmentation)), done.set()))
        waiter.start()
        assert not done.wait(0.5)  # it waits for the lock
    waiter.join(timeout=300)
    assert done.is_set() and waited[0] is sim.last_result
    np.testing.assert_allclose(waited[0].geometry.source, sim.geometry().source)  # the new (LAO 20) set-up
    assert not np.array_equal(waited[0].line_integral, reference.line_integral)
