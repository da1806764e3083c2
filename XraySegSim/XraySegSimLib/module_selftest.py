"""The XraySeg Sim module's self-test (what Slicer runs with "Reload and Test" and ctest), mixed into
``XraySegSimTest`` in XraySegSim.py, which sets ``logic_class``. Imports Slicer, VTK and NumPy when it runs."""

from __future__ import annotations

import numpy as np


class SimSelfTest:
    """Render a synthetic CT, drag the C-arm, aim at a segment's centre and at a markup point."""

    logic_class = None  # XraySegSimLogic (the module file's)

    def setUp(self):
        """Each test starts from an empty scene (ctest runs each test_* on its own)."""
        import slicer

        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_render_synthetic_ct()
        self.setUp()
        self.test_isocenter_on_segment_and_point()

    FEMUR_TERMINOLOGY = ("Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical "
                         "Structure~SCT^71341001^Femur~SCT^7771000^Left~Anatomic codes - DICOM master list~^^~^^")

    def _syntheticInputs(self):
        """A 64^3 water box (air around it) with a bone block, and a segmentation "femur" of the block."""
        import slicer

        hu = np.full((64, 64, 64), -1000, np.int16)  # air
        hu[8:56, 8:56, 8:56] = 0  # water box
        hu[24:40, 24:40, 20:32] = 1000  # bone-like block
        ctNode = slicer.util.addVolumeFromArray(hu, name="SyntheticCT")
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Bones")
        segmentation.CreateDefaultDisplayNodes()
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(ctNode)
        segmentId = segmentation.GetSegmentation().AddEmptySegment("femur", "femur", (0.9, 0.2, 0.1))
        slicer.util.updateSegmentBinaryLabelmapFromArray((hu == 1000).astype(np.uint8), segmentation, segmentId,
                                                         ctNode)
        segmentation.GetSegmentation().GetSegment(segmentId).SetTerminology(self.FEMUR_TERMINOLOGY)
        return hu, ctNode, segmentation

    def _assertOnPrincipalRay(self, geometry, point):
        """``point`` projects to the principal point (where the ray perpendicular to the detector meets it)."""
        P = geometry.projection_matrix()
        principal = np.array([P[0, :3] @ P[2, :3], P[1, :3] @ P[2, :3]])
        error = np.abs(geometry.project(np.asarray(point)) - principal).max()
        self.assertLess(error, 0.01, f"the isocentre projects {error:.4f} px off the principal point")

    def test_isocenter_on_segment_and_point(self):
        import slicer
        import vtk

        from XraySegSimLib.mrml_adapter import volume_from_node
        hu, ctNode, segmentation = self._syntheticInputs()
        logic = self.logic_class()
        p = logic.getParameterNode()
        p.inputVolume, p.inputLabels = ctNode, segmentation
        p.viewPreset, p.detectorSize, p.laoAngle, p.craAngle = "carm-ap", 64, 30.0, -15.0
        logic.applyPresetDefaults(p)
        # Isocentre on the centre of the "femur" segment: the block's voxel centroid.
        p.isocenterMode, p.isocenterSegment = "Segment centre", "femur"
        block = volume_from_node(ctNode).centroid_ras(hu == 1000)
        np.testing.assert_allclose(logic.isocenter(p), block, atol=1e-6)
        logic.updateGeometry(p)
        geometry = logic.sim.geometry()
        np.testing.assert_allclose(geometry.isocenter, block, atol=1e-6)
        self._assertOnPrincipalRay(geometry, block)
        result = logic.renderView(p)
        rows, cols = result.line_integral.shape
        centre = np.argwhere(result.masks()[0]).mean(0)  # (row, column) of the projected block
        self.assertLess(np.abs(centre - [(rows - 1) / 2, (cols - 1) / 2]).max(), 2.0)
        output = logic.sim.node("labels").GetSegmentation().GetNthSegment(0)
        self.assertEqual(output.GetName(), "femur")
        self.assertEqual(output.GetTerminology(), self.FEMUR_TERMINOLOGY)
        # Isocentre on a markup point.
        markup = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Aim")
        markup.AddControlPoint(vtk.vtkVector3d(-12.0, 7.5, 20.0), "aim")
        p.isocenterMode, p.isocenterMarkup = "Markup point", markup
        logic.updateGeometry(p)
        np.testing.assert_allclose(logic.sim.geometry().isocenter, (-12.0, 7.5, 20.0), atol=1e-9)
        self._assertOnPrincipalRay(logic.sim.geometry(), (-12.0, 7.5, 20.0))
        self.assertAlmostEqual(logic.sim.geometry().source_to_isocenter_distance, p.sourceToIsocenter, places=6)

    def test_render_synthetic_ct(self):
        import vtk

        from XraySegSimLib.mrml_adapter import array_from_vtk_matrix, volume_from_node
        hu, ctNode, segmentation = self._syntheticInputs()
        logic = self.logic_class()
        result = logic.render(ctNode, segmentation, "carm-ap", 64)
        image = result.line_integral
        self.assertGreater(image[32, 34], image[32, 4])  # the block is denser than the water around it
        drr = logic.sim.node("drr")
        matrix = vtk.vtkMatrix4x4()
        drr.GetIJKToRASMatrix(matrix)
        np.testing.assert_allclose(array_from_vtk_matrix(matrix), result.geometry.detector_ijk_to_ras(), atol=1e-6)
        labels = logic.sim.node("labels").GetSegmentation()
        self.assertEqual(labels.GetNthSegment(0).GetName(), "femur")
        np.testing.assert_allclose(labels.GetNthSegment(0).GetColor(), (0.9, 0.2, 0.1), atol=1e-6)
        self.assertGreater(int(result.masks()[0].sum()), 20)
        # Dragging the C-arm 10 mm along the detector columns moves the block against it.
        drag = np.eye(4)
        drag[:3, 3] = 10 * result.geometry.column_axis
        logic.sim.set_pose_matrix(drag)
        moved = logic.render(ctNode, segmentation)
        shift = np.argwhere(moved.masks()[0])[:, 1].mean() - np.argwhere(result.masks()[0])[:, 1].mean()
        block = volume_from_node(ctNode).centroid_ras(hu == 1000)
        predicted = (moved.geometry.project(block) - result.geometry.project(block))[0]
        self.assertAlmostEqual(shift, predicted, delta=1.0)
        logic.showInSliceView("Red")
