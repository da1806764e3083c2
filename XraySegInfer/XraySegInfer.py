import pathlib
from typing import Annotated, Optional

import vtk

import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.i18n import tr as _, translate
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import *  # noqa: F403
from slicer.util import VTKObservationMixin

import qt

from XraySegInferLib.infer_logic import InferLogic  # Qt-free and light: torch and MONAI load on first use
from XraySegInferLib.module_selftest import InferSelfTest

# = XraySegInferLib.dependencies.DEVICES (a test checks it), repeated so importing this module stays light:
# torch, MONAI and the packages installed on first use are imported only when a model runs.
DEVICES = ("Auto", "CUDA", "CPU")


class XraySegInfer(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("XraySeg Infer")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["XraySegSim"]  # XraySegInferLib imports XraySegSimLib (errors, scene helpers)
        self.parent.contributors = ["Founding engineers of XraySeg (XraySeg project)"]
        self.parent.helpText = _(
            "Bone segmentation of radiographs (X-ray images): choose a radiograph (DICOM CR/DX, PNG/JPEG, NRRD or "
            "an XraySeg Sim DRR), a model and a device, and click Segment. The result is a segmentation on the "
            "radiograph's own grid with SNOMED CT terminology, and a table of bone areas (mm2) with the model's "
            "confidence. Batch: a folder of radiographs to .seg.nrrd files and a summary table. "
            "Requires Slicer 5.10 or newer. "
            "See <a href='https://github.com/xrayseg/SlicerXraySeg'>the project page</a>.")
        self.parent.acknowledgementText = _("Developed by the founding engineers of the XraySeg project. Networks "
                                            "from MONAI.")


def chosenFolder(path):
    """The folder a path field holds, or None: an empty ctkPathLineEdit reads back as Path("."), which is truthy
    but means that no folder was chosen (it must never select Slicer's working directory)."""
    text = str(path or "").strip()
    return None if text in ("", ".") else pathlib.Path(text)


@parameterNodeWrapper
class XraySegInferParameterNode:
    """Input radiograph, model (an id of ``XraySegInferLib.models.available_models``), device; the last outputs;
    the batch folders."""
    inputVolume: Optional[vtkMRMLScalarVolumeNode]
    modelId: str = ""
    device: Annotated[str, Choice(DEVICES)] = "Auto"
    outputSegmentation: Optional[vtkMRMLSegmentationNode]
    outputTable: Optional[vtkMRMLTableNode]
    # Plain pathlib.Path (what the ctkPathLineEdit connector takes); an empty line edit reads as Path("."),
    # which means "no folder" (see chosenFolder).
    batchInputFolder: pathlib.Path
    batchOutputFolder: pathlib.Path
    batchResume: bool = True


class XraySegInferWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Binds the .ui to the parameter node and calls Logic. Long runs: Logic runs the network in a worker thread
    and calls back here a few times a second; the callback moves the progress bar and processes GUI events, so
    Cancel is clickable (see XraySegInferLib.runner)."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._running = False
        self._cancelRequested = False
        self._segmentation = None  # the running XraySegInferLib.segment_process.SegmentationProcess

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        from XraySegSimLib.slicer_version import check_running_slicer
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/XraySegInfer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        problem = check_running_slicer(slicer)
        if problem:  # e.g. no vtkSegment.SetTerminology before 5.10: say so instead of failing on first use
            uiWidget.enabled = False
            slicer.util.errorDisplay(problem)
            return
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = XraySegInferLogic(interactive=True)
        self.segmentTimer = qt.QTimer()
        self.segmentTimer.setInterval(200)
        self.segmentTimer.connect("timeout()", self._pollSegmentation)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.runButton.connect("clicked(bool)", self.onRun)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.batchRunButton.connect("clicked(bool)", self.onBatch)
        self.ui.batchCancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.openBatchOutputButton.connect("clicked(bool)", lambda: self._openFolder(
            chosenFolder(self._parameterNode.batchOutputFolder) if self._parameterNode else None))
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChosen)
        self.ui.importModelFileButton.connect("clicked(bool)", self.onImportModelFile)
        self.ui.importModelFolderButton.connect("clicked(bool)", self.onImportModelFolder)
        self.ui.openCacheButton.connect("clicked(bool)", lambda: self._openFolder(self.logic.cacheDir))
        self.ui.clearCacheButton.connect("clicked(bool)", self.onClearCache)
        self.initializeParameterNode()
        self.refreshModels()

    def cleanup(self) -> None:
        self.removeObservers()
        if self._segmentation is not None:
            self._segmentation.cancel()  # the module goes away: leave no worker behind

    def enter(self) -> None:
        if self.logic is not None:
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
        if not self._parameterNode.modelId:  # a new scene (after close): the model shown is still the choice
            self.onModelChosen(self.ui.modelComboBox.currentIndex)

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
        hasModel = bool(p and p.modelId)
        self.ui.runButton.enabled = bool(p and p.inputVolume and hasModel) and not self._running
        self.ui.batchRunButton.enabled = bool(p and chosenFolder(p.batchInputFolder) and
                                              chosenFolder(p.batchOutputFolder) and hasModel) and not self._running
        self.ui.cancelButton.enabled = self.ui.batchCancelButton.enabled = self._running

    # ---- models ----
    def refreshModels(self, select=None) -> None:
        combo = self.ui.modelComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for entry in self.logic.models():
            combo.addItem(entry.label, entry.id)
        combo.blockSignals(wasBlocked)
        wanted = select or (self._parameterNode.modelId if self._parameterNode else "")
        ids = [combo.itemData(i) for i in range(combo.count)]
        combo.currentIndex = ids.index(wanted) if wanted in ids else (0 if ids else -1)
        self.onModelChosen(combo.currentIndex)
        if not ids:
            self.ui.modelInfoLabel.text = _("No model: import a model package (.zip, folder) or an nnU-Net results "
                                            "folder.")

    def onModelChosen(self, index) -> None:
        if not self._parameterNode:
            return
        modelId = self.ui.modelComboBox.itemData(index) if index >= 0 else ""
        self._parameterNode.modelId = modelId or ""
        entry = self.logic.model(modelId) if modelId else None
        if entry is not None:
            self.ui.modelInfoLabel.text = _("{n} classes: {names}\n{path}").format(
                n=len(entry.class_names), names=", ".join(entry.class_names), path=entry.path)

    @staticmethod
    def _try(message, action, waitCursor=False):
        """Run ``action()`` for a button; on an error show ``message`` with it and return None. (Slicer's
        ``tryWithErrorDisplay`` re-raises after showing, which a slot must not do.)"""
        try:
            with slicer.util.tryWithErrorDisplay(message, waitCursor=waitCursor):
                return action()
        except Exception:  # noqa: BLE001 - shown to the user above
            return None

    def _import(self, path) -> None:
        if path:
            entry = self._try(_("Failed to import the model."), lambda: self.logic.importModel(path), waitCursor=True)
            if entry is not None:
                self.refreshModels(select=entry.id)
                slicer.util.showStatusMessage(_("Imported {label}").format(label=entry.label), 5000)

    def onImportModelFile(self) -> None:
        self._import(qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), _("Import model package"), "",
                                                    _("Model package (*.zip model.json)")))

    def onImportModelFolder(self) -> None:
        self._import(qt.QFileDialog.getExistingDirectory(
            slicer.util.mainWindow(), _("Import a model package folder or an nnU-Net v2 results folder")))

    def onClearCache(self) -> None:
        if slicer.util.confirmOkCancelDisplay(_("Remove all imported models from {cache}? The bundled model "
                                                "stays.").format(cache=self.logic.cacheDir)):
            removed = self.logic.clearCache()
            self.refreshModels()
            slicer.util.showStatusMessage(_("Removed {n} imported models").format(n=removed), 5000)

    @staticmethod
    def _openFolder(folder) -> None:
        if folder:
            pathlib.Path(folder).mkdir(parents=True, exist_ok=True)
            qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(folder)))

    # ---- run ----
    def _setRunning(self, running: bool) -> None:
        self._running = running
        self._cancelRequested = False
        self.onParametersChanged()

    def _progress(self, bar, label):
        def callback(fraction, message):
            bar.value = int(round(100 * fraction))
            label.text = message
            slicer.app.processEvents()
        return callback

    def _isCancelled(self) -> bool:
        slicer.app.processEvents()
        return self._cancelRequested

    def onCancel(self) -> None:
        self._cancelRequested = True
        self.ui.statusLabel.text = _("Cancelling...")
        if self._segmentation is not None:  # the worker process stops at once; nothing is added
            self._segmentation.cancel()
            self._endSegmentation()
            self.ui.statusLabel.text = _("Cancelled: nothing was added to the scene.")

    # ---- Segment: the network runs in a background process, polled by a timer ----
    def onRun(self) -> None:
        p = self._parameterNode
        self._segmentation = self._try(_("Segmentation failed; nothing was added to the scene."),
                                       lambda: self.logic.startSegmentation(p.inputVolume, p.modelId, p.device),
                                       waitCursor=True)
        if self._segmentation is None:
            return
        self._setRunning(True)
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = _("Starting the segmentation...")
        self.segmentTimer.start()

    def _pollSegmentation(self) -> None:
        from XraySegSimLib.background import RunState
        status = self._segmentation.poll()
        if status.state in (RunState.PENDING, RunState.RUNNING):
            if status.progress.fraction is not None:
                self.ui.progressBar.value = int(round(100 * status.progress.fraction))
            self.ui.statusLabel.text = _("Segmenting...")
            return
        run, p = self._segmentation, self._parameterNode
        self._endSegmentation()
        result = self._try(_("Segmentation failed; nothing was added to the scene."),
                           lambda: run.finish(self.logic._scene()))
        if result is None:
            self.ui.statusLabel.text = _("Segmentation failed; nothing was added to the scene.")
            return
        self.ui.progressBar.value = 100
        p.outputSegmentation, p.outputTable = result.segmentation, result.table
        self._try(_("Failed to show the result."), lambda: self.logic.showResult(p.inputVolume, result.table))
        self.ui.statusLabel.text = _("{n} bones segmented in {s:.1f} s. {notes}").format(
            n=sum(c.pixels > 0 for c in result.classes), s=result.seconds, notes=" ".join(result.notes))

    def _endSegmentation(self) -> None:
        self.segmentTimer.stop()
        self._segmentation = None
        self._setRunning(False)

    def onBatch(self) -> None:
        p = self._parameterNode
        inputFolder, outputFolder = chosenFolder(p.batchInputFolder), chosenFolder(p.batchOutputFolder)
        if inputFolder is None or outputFolder is None:
            slicer.util.errorDisplay(_("Choose the input and the output folder of the batch first."))
            return
        self._setRunning(True)
        try:
            report = self._try(_("Batch segmentation failed."), lambda: self.logic.runBatch(
                inputFolder, outputFolder, p.modelId, p.device, resume=p.batchResume,
                progress=self._progress(self.ui.batchProgressBar, self.ui.batchStatusLabel),
                cancel=self._isCancelled))
        finally:
            self._setRunning(False)
        if report is None:
            self.ui.batchStatusLabel.text = _("Batch segmentation failed.")
            return
        text = _("{done} done, {skipped} already done, {failed} failed").format(
            done=len(report.done), skipped=len(report.skipped), failed=len(report.failed))
        if report.cancelled:
            text += _(" - cancelled: run again with Resume to continue")
        self.ui.batchStatusLabel.text = text
        self._try(_("Failed to load the batch summary."), lambda: self.logic.loadBatchSummary(report))


class XraySegInferLogic(ScriptedLoadableModuleLogic, InferLogic):
    """Python console API (the widget only calls these)::

        logic = slicer.util.getModuleLogic("XraySegInfer")     # or XraySegInferLogic()
        [m.id for m in logic.models()]                          # bundled first, then imported
        result = logic.segment(volumeNode)                      # bundled model, device "Auto"
        result.segmentation, result.table, result.notes
        logic.segment(volumeNode, modelId, "CPU", progress=lambda f, msg: print(f, msg), cancel=lambda: False)
        logic.importModel("/path/model.zip")                    # or a package folder, or an nnU-Net results folder
        logic.runBatch("/in", "/out", resume=True)              # .seg.nrrd per image + summary.csv
        logic.saveDicomSeg(result, volumeNode, "/out/seg.dcm")  # DICOM SEG of a DICOM radiograph's result
    """

    def __init__(self, scene=None, cacheDir=None, interactive: bool = False) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        from XraySegInferLib.dependencies import Dependencies
        if interactive:  # ask once, then install with pip (never at import time)
            dependencies = Dependencies(confirm=slicer.util.confirmOkCancelDisplay, pip_install=slicer.util.pip_install)
        else:  # scripts: report what is missing, install nothing
            dependencies = Dependencies(confirm=lambda text: False, pip_install=lambda requirements: None)
        InferLogic.__init__(self, cacheDir if cacheDir else self._defaultCacheDir(), dependencies, scene)

    @staticmethod
    def _defaultCacheDir() -> pathlib.Path:
        from XraySegInferLib.models import default_cache_dir
        app = getattr(slicer, "app", None)
        cachePath = getattr(app, "cachePath", None) if app is not None else None
        return pathlib.Path(cachePath) / "XraySegInfer" if cachePath else default_cache_dir()

    def getParameterNode(self):
        return XraySegInferParameterNode(super().getParameterNode())

    def _scene(self):
        return self.scene if self.scene is not None else slicer.mrmlScene

    def saveDicomSeg(self, result, volumeNode, outputPath):
        """Write ``result`` (from :meth:`segment` on ``volumeNode``) as a DICOM Segmentation object in the
        radiograph's study, referencing its DICOM file (``XraySegInferLib.dicom_seg``); returns the path. The
        SNOMED codes come from the card of the model in memory (the last one used). Raises ``InputError`` when
        ``volumeNode`` was not loaded from DICOM, ``XraySegError`` when highdicom is not installed."""
        from XraySegInferLib.dicom_seg import write_dicom_seg_for_node
        predictors = list(self._predictors.values())
        card = getattr(result.prediction, "card", None) or (  # a background run carries its model's card
            getattr(predictors[0], "card", None) if predictors else None)
        return write_dicom_seg_for_node(result.prediction, volumeNode, outputPath, card,
                                        getattr(slicer, "dicomDatabase", None))

    def showResult(self, volumeNode, tableNode=None, sliceViewName="Red") -> None:
        """The radiograph (background) with the segmentation overlay in the ``sliceViewName`` view, fitted to
        the image plane; the table below the views."""
        from XraySegInferLib.mrml_adapter import show_in_slice_view
        sliceLogic = slicer.app.applicationLogic().GetSliceLogicByLayoutName(sliceViewName)
        show_in_slice_view(sliceLogic.GetSliceNode(), sliceLogic.GetSliceCompositeNode(), volumeNode)
        layoutManager = slicer.app.layoutManager() if hasattr(slicer.app, "layoutManager") else None
        if tableNode is not None and layoutManager is not None:
            if layoutManager.tableWidget(0) is None or not layoutManager.tableWidget(0).isVisible():
                # a layout that shows a table (three slice views and a table): else the results stay hidden
                layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
            slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(tableNode.GetID())
            slicer.app.applicationLogic().PropagateTableSelection()


class XraySegInferTest(InferSelfTest, ScriptedLoadableModuleTest):
    """The module's self-test (XraySegInferLib.module_selftest) on this module's logic."""
    logic_class = XraySegInferLogic
