import pathlib
from typing import Annotated, Union

import numpy as np
import vtk

import slicer
from slicer import (vtkMRMLLabelMapVolumeNode, vtkMRMLMarkupsFiducialNode, vtkMRMLScalarVolumeNode,
                    vtkMRMLSegmentationNode)
from slicer.i18n import tr as _, translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import *  # noqa: F403
from slicer.util import VTKObservationMixin

import qt

# = XraySegSimLib.views.PRESET_NAMES (a test checks it), repeated so importing this module stays light.
VIEW_PRESETS = ("chest-pa", "chest-lateral", "chest-ap", "wrist-pa", "wrist-lateral", "wrist-oblique-pronated",
                "wrist-oblique-supinated", "lumbar-ap", "lumbar-lateral", "pelvis-ap", "carm-ap")
# = XraySegSimLib.mrml_adapter.ISOCENTER_MODES (a test checks it).
ISOCENTER_MODES = ("CT centre", "Markup point", "Segment centre")
# = tuple(XraySegSimLib.physics.PRESETS) (a test checks it); "auto" picks the view's own physics preset.
PHYSICS_PRESETS = ("chest-pa", "wrist-pa", "wrist-lateral", "lumbar-lateral", "pelvis-ap", "hip-ap")
PREVIEW_PHYSICS = ("auto",) + PHYSICS_PRESETS
EXPORT_PHYSICS = ("none", "auto") + PHYSICS_PRESETS


class XraySegSim(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("XraySeg Sim")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.contributors = ["XraySeg developers"]
        self.parent.helpText = _(
            "Simulates radiographs (digitally reconstructed radiographs, DRRs) from a CT volume and projects "
            "its bone labels exactly onto the same detector, for training and testing X-ray segmentation. "
            "Geometry is given in Slicer's RAS world frame (millimetres): +x Right, +y Anterior, +z Superior; "
            "view presets aim the source at the CT centre and display images as radiologists read them "
            "(frontal: patient's right on screen left, head up; lateral: anterior on screen left). "
            "See <a href='https://github.com/xrayseg/SlicerXraySeg'>the project page</a>.")
        self.parent.acknowledgementText = _("Developed by the XraySeg developers. Bone label names follow "
                                            "TotalSegmentator (Wasserthal et al. 2023).")


@parameterNodeWrapper
class XraySegSimParameterNode:
    """CT (HU), optional bone labels (segmentation, or label map on the CT grid), and the X-ray set-up: a view
    preset aimed at the isocentre (the CT centre, a markup point, or the centre of a segment of the labels),
    C-arm angles, distances and detector size (mm), pixels along the longer detector side."""
    inputVolume: vtkMRMLScalarVolumeNode
    inputLabels: Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode]
    viewPreset: Annotated[str, Choice(VIEW_PRESETS)] = "chest-pa"
    isocenterMode: Annotated[str, Choice(ISOCENTER_MODES)] = "CT centre"
    isocenterMarkup: vtkMRMLMarkupsFiducialNode
    isocenterSegment: str = ""  # a segment name of inputLabels (the widget's segment combo box writes it)
    detectorSize: Annotated[int, WithinRange(16, 4096)] = 512
    laoAngle: Annotated[float, WithinRange(-90, 90)] = 0.0
    craAngle: Annotated[float, WithinRange(-45, 45)] = 0.0
    sourceToDetector: Annotated[float, WithinRange(200, 2500)] = 1800.0
    sourceToIsocenter: Annotated[float, WithinRange(100, 2400)] = 1650.0
    detectorWidth: Annotated[float, WithinRange(20, 600)] = 430.0
    detectorHeight: Annotated[float, WithinRange(20, 600)] = 430.0
    livePreview: bool = True
    # Realistic physics in the preview: the DRR node shows physics.simulate_radiograph(...).image in [0, 1].
    realisticPhysics: bool = False
    physicsPreset: Annotated[str, Choice(PREVIEW_PHYSICS)] = "auto"
    # Export training set (XraySegSimLib.export.run_export on the current CT and labels).
    exportFolder: pathlib.Path
    exportViewPreset: Annotated[str, Choice(VIEW_PRESETS)] = "chest-pa"
    exportViewsPerCt: Annotated[int, WithinRange(1, 100000)] = 10
    exportSize: Annotated[int, WithinRange(16, 4096)] = 512
    exportPhysics: Annotated[str, Choice(EXPORT_PHYSICS)] = "auto"
    exportSeed: Annotated[int, WithinRange(0, 2147483647)] = 0
    exportTestFraction: Annotated[float, WithinRange(0.0, 1.0)] = 0.2
    exportWorkers: Annotated[int, WithinRange(1, 64)] = 1
    exportResume: bool = False


class XraySegSimWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Binds the .ui to the parameter node and calls Logic; live preview is throttled with two timers."""
    PREVIEW_DELAY_MS, FULL_DELAY_MS = 80, 600

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._preset = None
        self._rigTags = []  # observers on the source / detector markups (dragged on their own)
        self._rigNodes = None
        self._observedMarkup = None
        self._exporting = False
        self._exportCancelRequested = False
        self._exportRoot = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/XraySegSim.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = XraySegSimLogic()
        self.previewTimer = self._timer(self.PREVIEW_DELAY_MS, lambda: self._render(preview=True))
        self.fullTimer = self._timer(self.FULL_DELAY_MS, lambda: self._render(preview=False))
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.renderButton.connect("clicked(bool)", lambda: self._render(preview=False))
        self.ui.showInSliceViewButton.connect("clicked(bool)", self.onShowInSliceView)
        self.ui.resetPoseButton.connect("clicked(bool)", lambda: self.logic.sim.set_pose_matrix(np.eye(4)))
        self.ui.exportButton.connect("clicked(bool)", self.onExport)
        self.ui.saveGeometryButton.connect("clicked(bool)", self.onSaveGeometry)
        self.ui.loadGeometryButton.connect("clicked(bool)", self.onLoadGeometry)
        self.ui.isocenterSegmentComboBox.connect("currentIndexChanged(int)", self.onIsocenterSegmentChanged)
        self.ui.exportDatasetButton.connect("clicked(bool)", self.onExportDataset)
        self.ui.cancelExportButton.connect("clicked(bool)", self.onCancelExport)
        self.ui.openExportFolderButton.connect("clicked(bool)", self.onOpenExportFolder)
        self.initializeParameterNode()

    def _timer(self, delay_ms, callback):
        timer = qt.QTimer()
        timer.setSingleShot(True)
        timer.setInterval(delay_ms)
        timer.connect("timeout()", callback)
        return timer

    def cleanup(self) -> None:
        self.removeObservers()
        self.logic.sim.unobserve_rig(self._rigTags)
        self._rigTags, self._rigNodes = [], None

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)
        self._rigTags, self._rigNodes = [], None  # the markups go with the scene

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParametersChanged)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParametersChanged)
            self.onParametersChanged()

    def onParametersChanged(self, caller=None, event=None) -> None:
        p = self._parameterNode
        ready = bool(p and p.inputVolume)
        self.ui.renderButton.enabled = ready
        self.ui.physicsPresetComboBox.enabled = bool(p and p.realisticPhysics)
        self.ui.exportDatasetButton.enabled = ready and not self._exporting
        if p and self._updateIsocenterWidgets(p):
            return  # it chose a segment: the change comes back here once more
        if not ready:
            return
        if p.viewPreset != self._preset:  # a new preset brings its distances and detector size
            self._preset = p.viewPreset
            self.logic.applyPresetDefaults(p)
            p.exportViewPreset = p.viewPreset  # the export follows the view preset unless changed there
            return  # the changes above come back here once more
        with slicer.util.tryWithErrorDisplay(_("Invalid X-ray set-up."), show=False):
            self.logic.updateGeometry(p)
            self._observePose()
            self._observeRig()
            self._scheduleRender()

    def _updateIsocenterWidgets(self, p) -> bool:
        """Enable the markup or segment chooser of the isocentre mode; list the segments of the labels.
        Returns True when it changed the parameter node (the first segment is chosen for a new label set)."""
        from XraySegSimLib.mrml_adapter import segment_names
        self.ui.isocenterMarkupSelector.enabled = p.isocenterMode == "Markup point"
        self.ui.isocenterSegmentComboBox.enabled = p.isocenterMode == "Segment centre"
        try:
            names = segment_names(p.inputLabels)
        except Exception:  # unreadable labels: the render reports why
            names = []
        combo = self.ui.isocenterSegmentComboBox
        if [combo.itemText(i) for i in range(combo.count)] != names:
            wasBlocked = combo.blockSignals(True)
            combo.clear()
            combo.addItems(names)
            combo.blockSignals(wasBlocked)
        if names and p.isocenterSegment not in names:
            p.isocenterSegment = names[0]
            return True
        wasBlocked = combo.blockSignals(True)
        combo.currentIndex = names.index(p.isocenterSegment) if p.isocenterSegment in names else -1
        combo.blockSignals(wasBlocked)
        self._observeIsocenterMarkup(p.isocenterMarkup if p.isocenterMode == "Markup point" else None)
        return False

    def onIsocenterSegmentChanged(self, index) -> None:
        if self._parameterNode and index >= 0:
            self._parameterNode.isocenterSegment = self.ui.isocenterSegmentComboBox.itemText(index)

    def _observeIsocenterMarkup(self, markup) -> None:
        """Moving the isocentre point re-aims the view (throttled like the sliders)."""
        if markup is self._observedMarkup:
            return
        events = (slicer.vtkMRMLMarkupsNode.PointModifiedEvent, slicer.vtkMRMLMarkupsNode.PointAddedEvent,
                  slicer.vtkMRMLMarkupsNode.PointRemovedEvent, slicer.vtkMRMLTransformableNode.TransformModifiedEvent)
        if self._observedMarkup is not None:
            for event in events:
                self.removeObserver(self._observedMarkup, event, self.onIsocenterMarkupMoved)
        self._observedMarkup = markup
        if markup is not None:
            for event in events:
                self.addObserver(markup, event, self.onIsocenterMarkupMoved)

    def onIsocenterMarkupMoved(self, caller=None, event=None) -> None:
        self.onParametersChanged()

    def _observeRig(self) -> None:
        """Dragging the source point or the detector plane on their own re-renders, throttled like the pose."""
        nodes = (self.logic.sim.node("source"), self.logic.sim.node("detector"))
        if nodes != self._rigNodes and None not in nodes:
            self.logic.sim.unobserve_rig(self._rigTags)
            self._rigTags = self.logic.sim.observe_rig(self.onRigMoved)
            self._rigNodes = nodes

    def onRigMoved(self, final: bool) -> None:
        self._scheduleRender()

    def _observePose(self) -> None:
        pose = self.logic.sim.node("pose")
        event = slicer.vtkMRMLTransformableNode.TransformModifiedEvent
        if pose is not None and not self.hasObserver(pose, event, self.onPoseChanged):
            self.addObserver(pose, event, self.onPoseChanged)

    def onPoseChanged(self, caller=None, event=None) -> None:
        self._scheduleRender()

    def _scheduleRender(self) -> None:
        if self._parameterNode and self._parameterNode.livePreview:
            self.previewTimer.start()
            self.fullTimer.start()

    def _render(self, preview: bool) -> None:
        p = self._parameterNode
        if not (p and p.inputVolume):
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to render the radiograph."), show=not preview,
                                             waitCursor=not preview):
            result = self.logic.renderView(p, preview=preview)
            self.ui.showInSliceViewButton.enabled = self.ui.exportButton.enabled = True
            rows, cols = result.line_integral.shape
            slicer.util.showStatusMessage(_("Rendered a {cols}x{rows} DRR with {n} label classes").format(
                cols=cols, rows=rows, n=len(result.classes)), 3000)

    def onShowInSliceView(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to show the DRR."), waitCursor=True):
            self.logic.showInSliceView("Red")

    def onExport(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), _("Export current view to"))
        if folder:
            with slicer.util.tryWithErrorDisplay(_("Failed to export the view."), waitCursor=True):
                p = self._parameterNode
                self.logic.sim.export(folder, p.inputVolume, p.inputLabels, size=p.detectorSize)
                slicer.util.showStatusMessage(_("Exported to {folder}").format(folder=folder), 5000)

    # ---- export training set ----
    # The export runs in this (GUI) thread's call, chunked: run_export renders in a worker thread (or worker
    # processes) and polls about 3 times a second; each poll calls the cancel check below, which processes
    # the pending GUI events, so the progress bar moves and Cancel is clickable. A background process
    # (as SlicerMONAIAuto3DSeg does) would also isolate crashes and memory from Slicer; chunked work is
    # enough here because the exporter already catches a bad CT and keeps the dataset resumable.
    def _setExporting(self, exporting: bool) -> None:
        self._exporting = exporting
        self.ui.exportDatasetButton.enabled = not exporting and bool(self._parameterNode and
                                                                     self._parameterNode.inputVolume)
        self.ui.cancelExportButton.enabled = exporting

    def _onExportProgress(self, done: int, total: int, message: str) -> None:
        self.ui.exportProgressBar.maximum = max(1, total)
        self.ui.exportProgressBar.value = done
        self.ui.exportStatusLabel.text = _("Exporting: {done}/{total} samples").format(done=done, total=total)
        slicer.app.processEvents()

    def _isExportCancelled(self) -> bool:
        slicer.app.processEvents()  # keeps the GUI responsive between progress updates
        return self._exportCancelRequested

    def onCancelExport(self) -> None:
        self._exportCancelRequested = True
        self.ui.exportStatusLabel.text = _("Cancelling after the samples in flight...")

    def onExportDataset(self) -> None:
        if self._exporting:
            return
        self._exportCancelRequested = False
        self._exportRoot = None
        self.ui.openExportFolderButton.enabled = False
        self.ui.exportProgressBar.value = 0
        self.ui.exportStatusLabel.text = _("Starting the export...")
        self._setExporting(True)
        report = None
        try:
            with slicer.util.tryWithErrorDisplay(_("Failed to export the training set.")):
                report = self.logic.exportTrainingSet(self._parameterNode, progress=self._onExportProgress,
                                                      cancel=self._isExportCancelled)
        finally:
            self._setExporting(False)
        if report is None:
            self.ui.exportStatusLabel.text = _("Export failed: nothing was exported.")
            return
        self._exportRoot = str(report.root)
        self.ui.openExportFolderButton.enabled = True
        text = _("{n} samples in {root}").format(n=report.n_ok, root=report.root)
        if report.cancelled:
            text += _(" (cancelled: tick Resume and export again to complete it)")
        if report.failed_cts:
            text += _(" - failed: {errors}").format(errors="; ".join(report.failed_cts.values()))
        self.ui.exportStatusLabel.text = text

    def onOpenExportFolder(self) -> None:
        if self._exportRoot:
            qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(self._exportRoot))

    def onSaveGeometry(self) -> None:
        path = qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), _("Save X-ray geometry"), "geometry.json",
                                              "Geometry (*.json);;Projection matrix (*.txt)")
        if path:
            with slicer.util.tryWithErrorDisplay(_("Failed to save the geometry.")):
                self.logic.sim.save_geometry(path)

    def onLoadGeometry(self) -> None:
        path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), _("Load X-ray geometry"), "",
                                              "Geometry (*.json)")
        if path:
            with slicer.util.tryWithErrorDisplay(_("Failed to load the geometry.")):
                self.logic.sim.load_geometry(path)
                self._observePose()
                self._observeRig()
                self._scheduleRender()


class XraySegSimLogic(ScriptedLoadableModuleLogic):
    """Qt-free bridge from the parameter node to ``XraySegSimLib.mrml_adapter.XraySimScene`` (``self.sim``),
    which owns the X-ray set-up and output nodes of the scene."""
    PREVIEW_SIZE = 128

    def __init__(self, scene=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        from XraySegSimLib.mrml_adapter import XraySimScene
        self.sim = XraySimScene(scene if scene is not None else slicer.mrmlScene)

    def getParameterNode(self):
        return XraySegSimParameterNode(super().getParameterNode())

    @staticmethod
    def applyPresetDefaults(p) -> None:
        """Set the distances and detector size of ``p`` to its view preset's."""
        from XraySegSimLib import views
        preset = views.PRESETS[p.viewPreset]
        p.sourceToDetector, p.sourceToIsocenter = preset.source_to_detector_mm, preset.source_to_isocenter_mm
        p.detectorWidth, p.detectorHeight = preset.detector_mm

    def geometry(self, ctNode, viewPreset="chest-pa", size=512, laoAngle=0.0, craAngle=0.0,
                 sourceToDetector=None, sourceToIsocenter=None, detectorMm=None, isocenter=None):
        """The preset's geometry aimed at ``isocenter`` (world RAS; default: the CT centre, parent transforms
        included)."""
        from XraySegSimLib import views
        from XraySegSimLib.mrml_adapter import volume_from_node
        if isocenter is None:
            isocenter = volume_from_node(ctNode).center_ras
        return views.from_preset(viewPreset, isocenter, int(size), sourceToDetector, sourceToIsocenter,
                                 detectorMm, laoAngle, craAngle)

    @staticmethod
    def isocenter(p):
        """World RAS of the parameter node's isocentre: CT centre, markup point or segment centre."""
        from XraySegSimLib.mrml_adapter import isocenter_ras
        return isocenter_ras(p.isocenterMode, p.inputVolume, p.isocenterMarkup, p.inputLabels, p.isocenterSegment)

    def updateGeometry(self, p) -> None:
        """Place the set-up from the parameter node; a dragged pose is kept on top."""
        self.sim.set_geometry(self.geometry(
            p.inputVolume, p.viewPreset, p.detectorSize, p.laoAngle, p.craAngle, p.sourceToDetector,
            p.sourceToIsocenter, (p.detectorWidth, p.detectorHeight), self.isocenter(p)), keep_pose=True)

    def renderView(self, p, preview: bool = False):
        """Render with the parameter node's set-up; with ``realisticPhysics`` the DRR node shows the
        simulated radiograph of ``physicsPreset`` ("auto": the view preset's own)."""
        from XraySegSimLib.mrml_adapter import physics_preset_for
        physics = physics_preset_for(p.viewPreset, p.physicsPreset) if p.realisticPhysics else None
        return self.sim.render(p.inputVolume, p.inputLabels, size=self.PREVIEW_SIZE if preview else None,
                               physics=physics)

    def exportTrainingSet(self, p, progress=None, cancel=None):
        """Batch-export randomised views of ``p.inputVolume`` with ``p.inputLabels`` (see
        ``XraySegSimLib.mrml_adapter.export_training_set``); returns the ``ExportReport``."""
        from XraySegSimLib.mrml_adapter import export_training_set
        folder = str(p.exportFolder) if p.exportFolder is not None else ""
        return export_training_set(self.sim.scene, p.inputVolume, p.inputLabels, folder, view=p.exportViewPreset,
                                   views_per_ct=p.exportViewsPerCt, size=p.exportSize, physics=p.exportPhysics,
                                   seed=p.exportSeed, test_fraction=p.exportTestFraction,
                                   workers=p.exportWorkers, resume=p.exportResume, progress=progress,
                                   cancel=cancel)

    def render(self, ctNode, labelsNode=None, viewPreset=None, size=512, preview=False, isocenter=None):
        """Render ``ctNode`` (HU) with optional labels (segmentation or label map) into the "X-ray DRR" and
        "X-ray labels" nodes. ``viewPreset`` (re)places the set-up aimed at ``isocenter`` (RAS, default the
        CT centre), else the current one (pose included) is used. Returns the ``XraySegSimLib.DrrResult``."""
        if viewPreset is not None or isocenter is not None or not self.sim.has_geometry():
            self.sim.set_geometry(self.geometry(ctNode, viewPreset or "chest-pa", size, isocenter=isocenter))
        return self.sim.render(ctNode, labelsNode, size=self.PREVIEW_SIZE if preview else None)

    def showInSliceView(self, sliceViewName="Red") -> None:
        sliceLogic = slicer.app.applicationLogic().GetSliceLogicByLayoutName(sliceViewName)
        self.sim.show_in_slice_view(sliceLogic.GetSliceNode(), sliceLogic.GetSliceCompositeNode())
        sliceLogic.GetSliceNode().SetSliceVisible(True)  # the DRR on the detector in 3D too


class XraySegSimTest(ScriptedLoadableModuleTest):
    def runTest(self):
        slicer.mrmlScene.Clear()
        self.test_render_synthetic_ct()
        slicer.mrmlScene.Clear()
        self.test_isocenter_on_segment_and_point()

    FEMUR_TERMINOLOGY = ("Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical "
                         "Structure~SCT^71341001^Femur~SCT^7771000^Left~Anatomic codes - DICOM master list~^^~^^")

    def _syntheticInputs(self):
        """A 64^3 water box (air around it) with a bone block, and a segmentation "femur" of the block."""
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
        from XraySegSimLib.mrml_adapter import volume_from_node
        hu, ctNode, segmentation = self._syntheticInputs()
        logic = XraySegSimLogic()
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
        from XraySegSimLib.mrml_adapter import array_from_vtk_matrix, volume_from_node
        hu, ctNode, segmentation = self._syntheticInputs()
        logic = XraySegSimLogic()
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
