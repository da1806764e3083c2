"""The XraySeg Infer module's self-test (what Slicer runs with "Reload and Test" and ctest), mixed into
``XraySegInferTest`` in XraySegInfer.py, which sets ``logic_class``. Imports Slicer, VTK, torch and MONAI when it
runs."""

from __future__ import annotations

import pathlib


class InferSelfTest:
    """Self-test on a DRR made in code: a phantom CT with three bones (XraySegInferLib.synthetic) is projected
    by XraySegSimLib; a tiny model is trained on other phantoms in a few seconds (or taken from
    ``$XRAYSEG_SELFTEST_MODEL``); the segmentation must lie on the DRR's oblique grid and reach Dice 0.7."""

    logic_class = None  # XraySegInferLogic (the module file's)
    DICE_FLOOR = 0.7

    def setUp(self):
        """Each test starts from an empty scene (ctest runs each test_* on its own)."""
        import slicer

        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_segment_drr()

    @staticmethod
    def _installWhatIsNeeded():
        """A self-test has no one to ask: install what is missing (torch via PyTorchUtils, then MONAI and the
        others with Slicer's torch, SimpleITK, numpy and requests pinned)."""
        import slicer

        from XraySegInferLib.dependencies import Dependencies
        Dependencies(confirm=lambda text: True, pip_install=slicer.util.pip_install).ensure()

    def _model(self):
        import os
        import tempfile
        self._installWhatIsNeeded()
        if os.environ.get("XRAYSEG_SELFTEST_MODEL"):
            return os.environ["XRAYSEG_SELFTEST_MODEL"]
        from XraySegInferLib.synthetic import make_dataset
        from XraySegInferLib.training import TrainConfig, train
        root = pathlib.Path(tempfile.mkdtemp(prefix="XraySegInferTest-"))
        dataset = make_dataset(root / "data", n_cts=4, views_per_ct=4, size=64, test_cts=0, seed=0)
        config = TrainConfig(architecture={"name": "UNet", "channels": [8, 16, 32, 64], "strides": [2, 2, 2],
                                           "num_res_units": 0, "norm": "instance"},
                             patch_size=64, batch_size=8, steps=150, val_every=50, learning_rate=1e-2,
                             augment={"probability": 0.3, "blur_probability": 0.1}, threads=1, seed=0)
        return str(train(dataset, root / "run", config, progress=False, log=lambda *a: None).package)

    def test_segment_drr(self):
        import numpy as np
        import slicer
        import vtk

        from XraySegInferLib.synthetic import CLASS_NAMES, phantom_ct, render_views
        from XraySegSimLib.mrml_adapter import _image_data, array_from_vtk_matrix, vtk_matrix_from_array
        ct, labels = phantom_ct(np.random.default_rng(1234))
        ((image, masks, spacing, geometry),) = render_views(ct, labels, [(12.0, -6.0)], size=64)
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "DRR")
        node.SetAndObserveImageData(_image_data(image[None].astype(np.float32), vtk.VTK_FLOAT))
        node.SetIJKToRASMatrix(vtk_matrix_from_array(geometry.detector_ijk_to_ras()))
        node.CreateDefaultDisplayNodes()
        import tempfile
        logic = self.logic_class(cacheDir=tempfile.mkdtemp(prefix="XraySegInferTest-cache-"))  # not the user's
        entry = logic.importModel(self._model())
        result = logic.segment(node, entry.id, "CPU")
        matrix = vtk.vtkMatrix4x4()
        segments = result.segmentation.GetSegmentation()
        self.assertEqual([segments.GetNthSegment(i).GetName() for i in range(segments.GetNumberOfSegments())],
                         list(CLASS_NAMES))
        labelmap = segments.GetNthSegment(0).GetRepresentation("Binary labelmap")
        labelmap.GetImageToWorldMatrix(matrix)
        np.testing.assert_allclose(array_from_vtk_matrix(matrix), geometry.detector_ijk_to_ras(), atol=1e-6)
        predicted = result.prediction.masks.astype(bool)
        truth = masks.astype(bool)
        dice = [2 * (p & t).sum() / max(1, p.sum() + t.sum()) for p, t in zip(predicted, truth)]
        self.assertGreater(float(np.mean(dice)), self.DICE_FLOOR, f"Dice per class {dice}")
        self.assertEqual(result.table.GetTable().GetNumberOfRows(), len(CLASS_NAMES))
