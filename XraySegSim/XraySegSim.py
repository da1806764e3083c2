from typing import Annotated

import numpy as np
import vtk

import slicer
from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _, translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import *  # noqa: F403
from slicer.util import VTKObservationMixin

# = XraySegSimLib.views.PRESET_NAMES (a test checks it), repeated so importing this module stays light.
VIEW_PRESETS = ("chest-pa", "chest-lateral", "chest-ap", "wrist-pa", "wrist-lateral", "lumbar-ap",
                "lumbar-lateral", "pelvis-ap", "carm-ap")


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
    """CT (HU), optional label map on the CT grid, view preset, pixels along the longer detector side."""
    inputVolume: vtkMRMLScalarVolumeNode
    inputLabels: vtkMRMLLabelMapVolumeNode
    viewPreset: Annotated[str, Choice(VIEW_PRESETS)] = "chest-pa"
    detectorSize: Annotated[int, WithinRange(16, 4096)] = 512


class XraySegSimWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/XraySegSim.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = XraySegSimLogic()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.renderButton.connect("clicked(bool)", self.onRenderButton)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

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
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanRender)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanRender)
            self._checkCanRender()

    def _checkCanRender(self, caller=None, event=None) -> None:
        ready = bool(self._parameterNode and self._parameterNode.inputVolume)
        self.ui.renderButton.enabled = ready

    def onRenderButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to render the radiograph."), waitCursor=True):
            p = self._parameterNode
            result = self.logic.render(p.inputVolume, p.inputLabels, p.viewPreset, p.detectorSize)
            rows, cols = result.line_integral.shape
            message = _("Rendered a {cols}x{rows} {view} DRR with {n} label classes").format(
                cols=cols, rows=rows, view=p.viewPreset, n=len(result.classes))
            slicer.util.showStatusMessage(message, 5000)


class XraySegSimLogic(ScriptedLoadableModuleLogic):
    """Thin bridge from MRML nodes to XraySegSimLib. The full MRML adapter (parent transforms, segmentation
    nodes, output volume nodes with detector geometry) comes with a later issue."""
    def getParameterNode(self):
        return XraySegSimParameterNode(super().getParameterNode())

    @staticmethod
    def volumeFromNode(node):
        """XraySegSimLib.Volume sharing the node's voxels ([k, j, i]) with its IJK->RAS matrix."""
        from XraySegSimLib import InputError, Volume
        if node.GetParentTransformNode() is not None:
            raise InputError(f"{node.GetName()}: is under a transform; harden the transform first")
        ijkToRas = vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(ijkToRas)
        return Volume(slicer.util.arrayFromVolume(node), slicer.util.arrayFromVTKMatrix(ijkToRas), node.GetName())

    def render(self, ctNode, labelsNode=None, viewPreset: str = "chest-pa", size: int = 512):
        """One DRR of ``ctNode`` (HU) for view ``viewPreset`` aimed at the CT centre, ``size`` pixels along the
        longer detector side; ``labelsNode`` (optional) is a label map on the CT grid, projected too.
        Returns an ``XraySegSimLib.DrrResult`` (line integral, per-class path lengths); creates no nodes yet."""
        from XraySegSimLib import DrrProjector, views
        ct = self.volumeFromNode(ctNode)
        labels = self.volumeFromNode(labelsNode) if labelsNode is not None else None
        geometry = views.from_preset(viewPreset, ct.center_ras, size=int(size))
        return DrrProjector(ct, labels).render(geometry)


class XraySegSimTest(ScriptedLoadableModuleTest):
    def runTest(self):
        slicer.mrmlScene.Clear()
        self.test_render_synthetic_ct()

    def test_render_synthetic_ct(self):
        hu = np.full((64, 64, 64), -1000, np.int16)  # air
        hu[8:56, 8:56, 8:56] = 0  # water box
        hu[24:40, 24:40, 24:40] = 400  # bone-like cube
        ctNode = slicer.util.addVolumeFromArray(hu, name="SyntheticCT")
        result = XraySegSimLogic().render(ctNode, None, "chest-pa", 64)
        image = result.line_integral
        self.assertGreater(float(image.max()), 0.0)
        self.assertGreater(image[image.shape[0] // 2, image.shape[1] // 2], image[0, 0])
