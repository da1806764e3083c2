"""The Infer module's segmentation in a worker process (``XraySegInferLib.segment_process``): the same result as
in this process, on the radiograph's own grid; Cancel and a killed worker add no node and leave no file, and the
killed run says so in one line."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

from test_infer_slicer import add_radiograph, node_ids, phantom_drr, segment_arrays, tiny_model  # noqa: E402,F401
from XraySegSimLib.background import RunState  # noqa: E402
from XraySegInferLib.errors import XraySegError  # noqa: E402
from XraySegInferLib.models import import_model, load_entry  # noqa: E402
from XraySegInferLib.mrml_adapter import segment_radiograph, table_rows  # noqa: E402
from XraySegInferLib.segment_process import SegmentationProcess  # noqa: E402


def _running(run: SegmentationProcess, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while run.poll().state is not RunState.RUNNING and time.monotonic() < deadline:
        time.sleep(0.02)


@pytest.mark.slow
def test_segmentation_worker_matches_in_process_and_cancel_or_kill_adds_nothing(app, tiny_model, tmp_path):
    image, truth, geometry = phantom_drr()
    node = add_radiograph(app.scene, image, geometry.detector_ijk_to_ras())
    entry = import_model(tiny_model, tmp_path / "cache")
    reference = segment_radiograph(app.scene, node, load_entry(entry, "cpu"))

    run = SegmentationProcess.start(node, entry, "CPU")
    result = run.finish(app.scene)
    np.testing.assert_array_equal(result.prediction.masks, reference.prediction.masks)
    masks, matrices = segment_arrays(result.segmentation)
    np.testing.assert_allclose(matrices[0], geometry.detector_ijk_to_ras(), atol=1e-6)  # the radiograph's grid
    assert [row["Segment"] for row in table_rows(result.table)] == [r["Segment"] for r in table_rows(reference.table)]
    np.testing.assert_allclose([r["Mean confidence"] for r in table_rows(result.table)],
                               [r["Mean confidence"] for r in table_rows(reference.table)], atol=2e-3)  # float16
    assert not run.job_dir.exists()

    before = node_ids(app.scene)
    cancelled = SegmentationProcess.start(node, entry, "CPU")
    _running(cancelled)
    assert cancelled.cancel().state is RunState.CANCELLED
    assert node_ids(app.scene) == before and not cancelled.job_dir.exists()

    killed = SegmentationProcess.start(node, entry, "CPU")
    _running(killed)
    os.killpg(killed.run.pid, signal.SIGKILL)  # as the system's out-of-memory killer would
    with pytest.raises(XraySegError, match="killed"):
        killed.finish(app.scene)
    assert node_ids(app.scene) == before and not killed.job_dir.exists()
