"""The Sim module's logic without Qt: from a parameter node (``XraySegSimParameterNode`` or any object with its
fields) to the X-ray set-up and renders in the scene (``mrml_adapter.XraySimScene``), and the training-set export
(here, or in a background process). ``XraySegSim.XraySegSimLogic`` is this class plus Slicer's module logic; the
method names are the module's Python console API.

::

    logic = SimLogic(scene, dependencies)      # dependencies: XraySegSimLib.dependencies.Dependencies
    logic.render(ctNode, labelsNode, "chest-pa", 512)
"""

from __future__ import annotations

from pathlib import Path


def chosen_folder(path) -> Path | None:
    """The folder a path field holds, or None: an empty ctkPathLineEdit reads back as Path("."), which is truthy
    but means that no folder was chosen (it must never select Slicer's working directory)."""
    text = str(path or "").strip()
    return None if text in ("", ".") else Path(text)


class SimLogic:
    """Qt-free bridge from the parameter node to ``XraySegSimLib.mrml_adapter.XraySimScene`` (``self.sim``),
    which owns the X-ray set-up and output nodes of the scene."""
    PREVIEW_SIZE = 128

    def __init__(self, scene, dependencies) -> None:
        from .mrml_adapter import SegmentNameCache, XraySimScene

        self.sim = XraySimScene(scene)
        self.dependencies = dependencies
        self._segmentNames = SegmentNameCache()

    def segmentNames(self, labelsNode):
        """Segment (or label map class) names of ``labelsNode``; a label map is scanned again only when it
        changes."""
        return self._segmentNames.names(labelsNode)

    @staticmethod
    def applyPresetDefaults(p) -> None:
        """Set the distances and detector size of ``p`` to its view preset's."""
        from . import views
        preset = views.PRESETS[p.viewPreset]
        p.sourceToDetector, p.sourceToIsocenter = preset.source_to_detector_mm, preset.source_to_isocenter_mm
        p.detectorWidth, p.detectorHeight = preset.detector_mm

    def geometry(self, ctNode, viewPreset="chest-pa", size=512, laoAngle=0.0, craAngle=0.0,
                 sourceToDetector=None, sourceToIsocenter=None, detectorMm=None, isocenter=None):
        """The preset's geometry aimed at ``isocenter`` (world RAS; default: the CT centre, parent transforms
        included)."""
        from . import views
        from .mrml_adapter import volume_from_node
        if isocenter is None:
            isocenter = volume_from_node(ctNode).center_ras
        return views.from_preset(viewPreset, isocenter, int(size), sourceToDetector, sourceToIsocenter,
                                 detectorMm, laoAngle, craAngle)

    @staticmethod
    def isocenter(p):
        """World RAS of the parameter node's isocentre: CT centre, markup point or segment centre."""
        from .mrml_adapter import isocenter_ras
        return isocenter_ras(p.isocenterMode, p.inputVolume, p.isocenterMarkup, p.inputLabels, p.isocenterSegment)

    def updateGeometry(self, p) -> None:
        """Place the set-up from the parameter node; a dragged pose is kept on top."""
        self.sim.set_geometry(self.geometry(
            p.inputVolume, p.viewPreset, p.detectorSize, p.laoAngle, p.craAngle, p.sourceToDetector,
            p.sourceToIsocenter, (p.detectorWidth, p.detectorHeight), self.isocenter(p)), keep_pose=True)

    def renderView(self, p, preview: bool = False, wait: bool = True):
        """Render with the parameter node's set-up; with ``realisticPhysics`` the DRR node shows the
        simulated radiograph of ``physicsPreset`` ("auto": the view preset's own). ``wait=False`` raises
        ``RenderBusy`` instead of waiting when another render runs (renders are serialised process-wide)."""
        from .mrml_adapter import physics_preset_for
        self.dependencies.ensure()
        physics = physics_preset_for(p.viewPreset, p.physicsPreset) if p.realisticPhysics else None
        return self.sim.render(p.inputVolume, p.inputLabels, size=self.PREVIEW_SIZE if preview else None,
                               physics=physics, wait=wait)

    def _exportOptions(self, p) -> dict:
        from .errors import InputError
        folder = chosen_folder(p.exportFolder)
        if folder is None:
            raise InputError("choose an output folder for the training set")
        return dict(view=p.exportViewPreset, views_per_ct=p.exportViewsPerCt, size=p.exportSize,
                    physics=p.exportPhysics, seed=p.exportSeed, test_fraction=p.exportTestFraction,
                    workers=p.exportWorkers, resume=p.exportResume, out=folder,
                    virtual_patients=getattr(p, "exportVirtualPatients", 0),
                    domain_randomisation=getattr(p, "exportDomainRandomisation", "none"),
                    suppress_contrast=bool(getattr(p, "exportSuppressContrast", False)))

    def exportTrainingSet(self, p, progress=None, cancel=None):
        """Batch-export randomised views of ``p.inputVolume`` with ``p.inputLabels`` in this process, one CT
        worker (``XraySegSimLib.mrml_adapter.export_training_set``); returns the ``ExportReport``. The module's
        panel uses :meth:`startExport` instead (a background process)."""
        from .mrml_adapter import export_training_set
        self.dependencies.ensure()
        options = self._exportOptions(p)
        options["workers"] = 1  # no process pool inside the Slicer application (Slicer issue #7445)
        return export_training_set(self.sim.scene, p.inputVolume, p.inputLabels, options.pop("out"), **options,
                                   progress=progress, cancel=cancel)

    def startExport(self, p):
        """Write the inputs and start the export in a background process; returns its
        ``XraySegSimLib.export_process.ExportProcess`` (``poll()``, ``cancel()``, ``wait()``)."""
        from .export_process import ExportProcess
        from .mrml_adapter import prepare_scene_export
        self.dependencies.ensure()
        options = self._exportOptions(p)
        job = prepare_scene_export(self.sim.scene, p.inputVolume, p.inputLabels, options.pop("out"), **options)
        return ExportProcess.start(job)

    @staticmethod
    def ctModelProblem():
        """Why "Label bones in CT" cannot run (no bundled 3D model, an unreadable card), or None."""
        from .label_jobs import bundled_ct_model, ct_model_problem
        return ct_model_problem(bundled_ct_model())

    def startCtLabelling(self, ctNode, modelDir=None):
        """Label ``ctNode`` with the bundled 3D model (``xrayseg ct-segment``) in a background process; returns
        the ``XraySegSimLib.label_jobs.LabelJob`` (``poll()``, ``cancel()``, ``finish(scene)`` -> segmentation)."""
        from .label_jobs import start_ct_labelling
        return start_ct_labelling(self.sim.scene, ctNode, modelDir)

    def startLabelTransfer(self, ctNode, atlasCtNode=None, atlasLabelsNode=None):
        """Transfer the atlas's labels onto ``ctNode`` (``xrayseg label-transfer``) in a background process; no
        atlas: the chest-ct sample. Returns the ``LabelJob``."""
        from .label_jobs import start_label_transfer
        return start_label_transfer(self.sim.scene, ctNode, atlasCtNode, atlasLabelsNode)

    def render(self, ctNode, labelsNode=None, viewPreset=None, size=512, preview=False, isocenter=None):
        """Render ``ctNode`` (HU) with optional labels (segmentation or label map) into the "X-ray DRR" and
        "X-ray labels" nodes. ``viewPreset`` (re)places the set-up aimed at ``isocenter`` (RAS, default the
        CT centre), else the current one (pose included) is used. Returns the ``XraySegSimLib.DrrResult``."""
        if viewPreset is not None or isocenter is not None or not self.sim.has_geometry():
            self.sim.set_geometry(self.geometry(ctNode, viewPreset or "chest-pa", size, isocenter=isocenter))
        return self.sim.render(ctNode, labelsNode, size=self.PREVIEW_SIZE if preview else None)


__all__ = ["SimLogic", "chosen_folder"]
