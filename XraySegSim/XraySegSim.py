import pathlib
from typing import Annotated, Optional, Union

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

from XraySegSimLib.module_selftest import SimSelfTest
from XraySegSimLib.sim_logic import SimLogic, chosen_folder  # Qt-free and light: no numba, no physics
from XraySegSimLib.widget_sections import ExportSection, IsocenterSection, LabelJobSection

# = XraySegSimLib.views.PRESET_NAMES (a test checks it), repeated so importing this module stays light.
VIEW_PRESETS = ("chest-pa", "chest-lateral", "chest-ap", "wrist-pa", "wrist-lateral", "wrist-oblique-pronated",
                "wrist-oblique-supinated", "lumbar-ap", "lumbar-lateral", "pelvis-ap", "carm-ap")
# = XraySegSimLib.mrml_adapter.ISOCENTER_MODES (a test checks it).
ISOCENTER_MODES = ("CT centre", "Markup point", "Segment centre")
# = tuple(XraySegSimLib.physics.PRESETS) (a test checks it); "auto" picks the view's own physics preset.
PHYSICS_PRESETS = ("chest-pa", "wrist-pa", "wrist-lateral", "lumbar-lateral", "pelvis-ap", "hip-ap")
PREVIEW_PHYSICS = ("auto",) + PHYSICS_PRESETS
EXPORT_PHYSICS = ("none", "auto") + PHYSICS_PRESETS
# = XraySegSimLib.domain_randomisation.LEVELS (a test checks it).
DOMAIN_RANDOMISATION = ("none", "light", "strong")


class XraySegSim(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("XraySeg Sim")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.contributors = ["Founding engineers of XraySeg (XraySeg project)"]
        self.parent.helpText = _(
            "Simulates radiographs (digitally reconstructed radiographs, DRRs) from a CT volume and projects "
            "its bone labels exactly onto the same detector, for training and testing X-ray segmentation. "
            "Geometry is given in Slicer's RAS world frame (millimetres): +x Right, +y Anterior, +z Superior; "
            "view presets aim the source at the CT centre and display images as radiologists read them "
            "(frontal: patient's right on screen left, head up; lateral: anterior on screen left). "
            "Requires Slicer 5.10 or newer. "
            "See <a href='https://github.com/xrayseg/SlicerXraySeg'>the project page</a>.")
        self.parent.acknowledgementText = _("Developed by the founding engineers of the XraySeg project. Bone label "
                                            "names follow TotalSegmentator (Wasserthal et al. 2023).")
        # The sample CTs in the Sample Data module, once the application has started (as Slicer's template does).
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData() -> None:
    """Our sample CTs (with bone labels) as one-click entries of the Sample Data module."""
    import logging
    try:
        from XraySegSimLib.slicer_sample_data import register_sample_data
        register_sample_data()
    except Exception as error:  # noqa: BLE001 - Sample Data is a convenience: never block start-up
        logging.warning(f"XraySeg Sim: sample data not registered: {error}")


chosenFolder = chosen_folder  # an empty path field (Path(".")) means no folder


@parameterNodeWrapper
class XraySegSimParameterNode:
    """CT (HU), optional bone labels (segmentation, or label map on the CT grid), and the X-ray set-up: a view
    preset aimed at the isocentre (the CT centre, a markup point, or the centre of a segment of the labels),
    C-arm angles, distances and detector size (mm), pixels along the longer detector side."""
    # Node fields take None (an empty selector, a closed scene): Slicer's serializer refuses a Union without it.
    inputVolume: Optional[vtkMRMLScalarVolumeNode]
    inputLabels: Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode, None]
    viewPreset: Annotated[str, Choice(VIEW_PRESETS)] = "chest-pa"
    isocenterMode: Annotated[str, Choice(ISOCENTER_MODES)] = "CT centre"
    isocenterMarkup: Optional[vtkMRMLMarkupsFiducialNode]
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
    # Export training set (XraySegSimLib.export.run_export on the current CT and labels). A path field must be a
    # plain pathlib.Path for the ctkPathLineEdit; its empty value reads as Path("."), which means "no folder".
    exportFolder: pathlib.Path
    exportViewPreset: Annotated[str, Choice(VIEW_PRESETS)] = "chest-pa"
    exportViewsPerCt: Annotated[int, WithinRange(1, 100000)] = 10
    exportSize: Annotated[int, WithinRange(16, 4096)] = 512
    exportPhysics: Annotated[str, Choice(EXPORT_PHYSICS)] = "auto"
    exportSeed: Annotated[int, WithinRange(0, 2147483647)] = 0
    exportTestFraction: Annotated[float, WithinRange(0.0, 1.0)] = 0.2
    exportWorkers: Annotated[int, WithinRange(1, 64)] = 1
    exportResume: bool = False
    exportVirtualPatients: Annotated[int, WithinRange(0, 10000)] = 0  # xrayseg export --virtual-patients
    exportDomainRandomisation: Annotated[str, Choice(DOMAIN_RANDOMISATION)] = "none"
    exportSuppressContrast: bool = False  # xrayseg export --suppress-contrast
    # Labels for an unlabelled CT: the atlas of "Transfer labels from atlas" (no atlas CT: the chest-ct sample).
    atlasVolume: Optional[vtkMRMLScalarVolumeNode]
    atlasLabels: Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode, None]


class XraySegSimWidget(IsocenterSection, ExportSection, LabelJobSection, ScriptedLoadableModuleWidget,
                       VTKObservationMixin):
    """Binds the .ui to the parameter node and calls Logic; live preview is throttled with two timers. Nothing
    renders until the user changes the set-up or clicks Render; the training-set export runs in a background
    process (progress, cancel), during which Render and the live preview are off."""
    PREVIEW_DELAY_MS, FULL_DELAY_MS, EXPORT_POLL_MS = 80, 600, 300

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
        self._settingUp = False  # changes the widget makes itself (defaults, presets) do not render
        self._export = None  # the running background export (XraySegSimLib.export_process.ExportProcess)
        self._exportRoot = None
        self._labelJob = None  # "Label bones in CT" / "Transfer labels from atlas" (XraySegSimLib.label_jobs)
        self._ctModelProblem = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        from XraySegSimLib.slicer_version import check_running_slicer
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/XraySegSim.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        problem = check_running_slicer(slicer)
        if problem:  # e.g. no vtkSegment.SetTerminology before 5.10: say so instead of failing on first use
            uiWidget.enabled = False
            slicer.util.errorDisplay(problem)
            return
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = XraySegSimLogic(interactive=True)
        self.previewTimer = self._timer(self.PREVIEW_DELAY_MS, lambda: self._render(preview=True))
        self.fullTimer = self._timer(self.FULL_DELAY_MS, lambda: self._render(preview=False))
        self.exportTimer = self._timer(self.EXPORT_POLL_MS, self._pollExport, singleShot=False)
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
        self.labelJobTimer = self._timer(self.EXPORT_POLL_MS, self._pollLabelJob, singleShot=False)
        self.ui.labelBonesButton.connect("clicked(bool)", self.onLabelBones)
        self.ui.transferLabelsButton.connect("clicked(bool)", self.onTransferLabels)
        self.ui.cancelLabelsButton.connect("clicked(bool)", self.onCancelLabels)
        self.ui.cancelLabelsButton.enabled = False  # until a run starts
        self._ctModelProblem = self.logic.ctModelProblem()  # no bundled 3D model: the button says why
        if self._ctModelProblem:
            self.ui.labelBonesButton.toolTip = self._ctModelProblem
        self.initializeParameterNode()

    def _timer(self, delay_ms, callback, singleShot=True):
        timer = qt.QTimer()
        timer.setSingleShot(singleShot)
        timer.setInterval(delay_ms)
        timer.connect("timeout()", callback)
        return timer

    def _try(self, message, action, waitCursor=False):
        """Run ``action()`` for a button; on an error show ``message`` with it and return None. (Slicer's
        ``tryWithErrorDisplay`` re-raises after showing, which a slot must not do.)"""
        try:
            with slicer.util.tryWithErrorDisplay(message, waitCursor=waitCursor):
                return action()
        except Exception:  # noqa: BLE001 - shown to the user above
            return None

    def cleanup(self) -> None:
        self.removeObservers()
        if self.logic is not None:
            self.logic.sim.unobserve_rig(self._rigTags)
        self._rigTags, self._rigNodes = [], None
        if self._export is not None:
            self._export.cancel()  # the module goes away: leave no worker behind
        if self._labelJob is not None:
            self._labelJob.cancel()

    def enter(self) -> None:
        if self.logic is not None:
            self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        if self._labelJob is not None:  # its CT goes with the scene
            self.onCancelLabels()
        self.setParameterNode(None)
        self._rigTags, self._rigNodes, self._observedMarkup = [], None, None  # the markups go with the scene

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        p = self.logic.getParameterNode()
        if not p.inputVolume:
            p.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
        self.setParameterNode(p)

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParametersChanged)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._settingUp = True  # opening the module places the set-up but renders nothing
            try:
                self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
                self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParametersChanged)
                self.onParametersChanged()
            finally:
                self._settingUp = False

    def onParametersChanged(self, caller=None, event=None) -> None:
        p = self._parameterNode
        ready = bool(p and p.inputVolume)
        exporting = self._export is not None
        self.ui.renderButton.enabled = ready and not exporting
        self.ui.physicsPresetComboBox.enabled = bool(p and p.realisticPhysics)
        self.ui.exportDatasetButton.enabled = ready and not exporting and chosenFolder(p.exportFolder) is not None
        labelling = self._labelJob is not None
        self.ui.labelBonesButton.enabled = ready and not labelling and not self._ctModelProblem
        self.ui.transferLabelsButton.enabled = ready and not labelling
        if p and self._updateIsocenterWidgets(p):
            return  # it chose a segment: the change comes back here once more
        if not ready:
            return
        if p.viewPreset != self._preset:  # a new preset brings its distances and detector size
            self._preset = p.viewPreset
            wasModifying = p.StartModify()  # one change event for all of them (none if nothing changed)
            self.logic.applyPresetDefaults(p)
            p.exportViewPreset = p.viewPreset  # the export follows the view preset unless changed there
            p.EndModify(wasModifying)
        from XraySegSimLib.errors import XraySegError
        try:
            self.logic.updateGeometry(p)
        except XraySegError as error:  # an impossible set-up while sliding: say why, keep the last image
            slicer.util.showStatusMessage(_("Invalid X-ray set-up: {error}").format(error=error), 5000)
            return
        self._observePose()
        self._observeRig()
        self._scheduleRender()

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
        p = self._parameterNode
        if p and p.livePreview and not self._settingUp and self._export is None:
            self.previewTimer.start()
            self.fullTimer.start()

    def _render(self, preview: bool) -> None:
        p = self._parameterNode
        if not (p and p.inputVolume) or self._export is not None:
            return
        from XraySegSimLib.errors import XraySegError
        from XraySegSimLib.mrml_adapter import RenderBusy
        if preview:  # live preview: never a dialog, never waits for a running render
            if self.logic.dependencies.missing():
                return  # the first explicit Render asks to install
            try:
                result = self.logic.renderView(p, preview=True, wait=False)
            except RenderBusy:
                self.previewTimer.start()  # try again shortly
                return
            except XraySegError as error:
                slicer.util.showStatusMessage(_("Preview: {error}").format(error=error), 5000)
                return
        else:
            result = self._try(_("Failed to render the radiograph."), lambda: self.logic.renderView(
                p, preview=False, wait=False), waitCursor=True)
            if result is None:
                return
        self.ui.showInSliceViewButton.enabled = self.ui.exportButton.enabled = True
        rows, cols = result.line_integral.shape
        slicer.util.showStatusMessage(_("Rendered a {cols}x{rows} DRR with {n} label classes").format(
            cols=cols, rows=rows, n=len(result.classes)), 3000)

    def onShowInSliceView(self) -> None:
        self._try(_("Failed to show the DRR."), lambda: self.logic.showInSliceView("Red"), waitCursor=True)

    def onExport(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), _("Export current view to"))
        if folder:
            p = self._parameterNode
            if self._try(_("Failed to export the view."), lambda: self.logic.sim.export(
                    folder, p.inputVolume, p.inputLabels, size=p.detectorSize), waitCursor=True) is not None:
                slicer.util.showStatusMessage(_("Exported to {folder}").format(folder=folder), 5000)

    def onSaveGeometry(self) -> None:
        path = qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), _("Save X-ray geometry"), "geometry.json",
                                              "Geometry (*.json);;Projection matrix (*.txt)")
        if path:
            self._try(_("Failed to save the geometry."), lambda: self.logic.sim.save_geometry(path))

    def onLoadGeometry(self) -> None:
        path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), _("Load X-ray geometry"), "",
                                              "Geometry (*.json)")
        if path and self._try(_("Failed to load the geometry."), lambda: self.logic.sim.load_geometry(path)):
            self._observePose()
            self._observeRig()
            self._scheduleRender()


class XraySegSimLogic(ScriptedLoadableModuleLogic, SimLogic):
    """``XraySegSimLib.sim_logic.SimLogic`` (the Qt-free logic: set-up, renders, export) as Slicer's module
    logic, on ``slicer.mrmlScene`` unless given a scene."""

    def __init__(self, scene=None, interactive: bool = False) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        from XraySegSimLib.dependencies import Dependencies
        if interactive:  # ask once, then install numba, pynrrd, spekpy, xraydb with pip (never at import time)
            dependencies = Dependencies(confirm=slicer.util.confirmOkCancelDisplay,
                                        pip_install=slicer.util.pip_install, title="XraySeg Sim")
        else:  # scripts and self-tests: report what is missing, install nothing
            dependencies = Dependencies(confirm=lambda text: False, pip_install=lambda arguments: None)
        SimLogic.__init__(self, scene if scene is not None else slicer.mrmlScene, dependencies)

    def getParameterNode(self):
        return XraySegSimParameterNode(super().getParameterNode())

    def showInSliceView(self, sliceViewName="Red") -> None:
        sliceLogic = slicer.app.applicationLogic().GetSliceLogicByLayoutName(sliceViewName)
        self.sim.show_in_slice_view(sliceLogic.GetSliceNode(), sliceLogic.GetSliceCompositeNode())
        sliceLogic.GetSliceNode().SetSliceVisible(True)  # the DRR on the detector in 3D too


class XraySegSimTest(SimSelfTest, ScriptedLoadableModuleTest):
    """The module's self-test (XraySegSimLib.module_selftest) on this module's logic."""
    logic_class = XraySegSimLogic
