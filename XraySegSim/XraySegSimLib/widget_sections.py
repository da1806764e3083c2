"""Sections of the XraySeg Sim widget (layer 3), mixed into ``XraySegSimWidget``: the isocentre choosers and
their markup, the training-set export and the labels for an unlabelled CT (both background processes polled by the
widget's timers). They use the widget's ``ui``, ``logic``, ``_parameterNode``, ``_try`` and timers.

Importable without Qt or Slicer (the module's lazy-import tests check it): ``slicer`` and ``qt`` are imported
when a method runs."""

from __future__ import annotations


def _(text: str) -> str:
    """``slicer.i18n.tr`` (the translation context of this file), looked up when called."""
    from slicer.i18n import tr

    return tr(text)


class IsocenterSection:
    """The isocentre mode's markup or segment chooser, and the markup whose moves re-aim the view."""

    def _updateIsocenterWidgets(self, p) -> bool:
        """Enable the markup or segment chooser of the isocentre mode; list the segments of the labels (scanned
        again only when the labels change). Returns True when it changed the parameter node (the first segment
        is chosen for a new label set)."""
        self.ui.isocenterMarkupSelector.enabled = p.isocenterMode == "Markup point"
        self.ui.isocenterSegmentComboBox.enabled = p.isocenterMode == "Segment centre"
        try:
            names = self.logic.segmentNames(p.inputLabels)
        except Exception:  # noqa: BLE001 - unreadable labels: the render reports why
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
        import slicer

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
        if self.logic.sim.placing:  # our own placement of the rig moved it (the rig's markup is refused anyway)
            return
        self.onParametersChanged()


class ExportSection:
    """Export training set: a background process (``XraySegSimLib.export_process``), polled by ``exportTimer``."""

    def _setExporting(self, exporting: bool) -> None:
        self.ui.cancelExportButton.enabled = exporting
        self.onParametersChanged()  # Render, Export and the live preview follow self._export

    def onCancelExport(self) -> None:
        if self._export is not None:  # the worker stops after the sample in flight; the timer sees it end
            self._export.request_cancel()
            self.ui.cancelExportButton.enabled = False
            self.ui.exportStatusLabel.text = _("Cancelling after the samples in flight...")

    def onExportDataset(self) -> None:
        if self._export is not None:
            return
        self._exportRoot = None
        self.ui.openExportFolderButton.enabled = False
        self.ui.exportProgressBar.value = 0
        self.ui.exportStatusLabel.text = _("Writing the CT and labels for the export...")
        self._export = self._try(_("Failed to start the export."),
                                 lambda: self.logic.startExport(self._parameterNode), waitCursor=True)
        if self._export is None:
            self.ui.exportStatusLabel.text = _("Export failed: nothing was exported.")
            return
        self._setExporting(True)
        self.exportTimer.start()

    def _pollExport(self) -> None:
        status = self._export.poll()
        if not status.finished:
            self.ui.exportProgressBar.maximum = max(1, status.total)
            self.ui.exportProgressBar.value = status.done
            self.ui.exportStatusLabel.text = status.message
            return
        self._finishExport(status)

    def _finishExport(self, status) -> None:
        import slicer

        self.exportTimer.stop()
        self._export = None
        self._setExporting(False)
        self.ui.exportStatusLabel.text = status.message
        if status.root is not None:
            self._exportRoot = str(status.root)
            self.ui.openExportFolderButton.enabled = True
        if status.state == "failed":
            slicer.util.errorDisplay(_("Export failed: {message}").format(message=status.message))

    def onOpenExportFolder(self) -> None:
        import qt

        if self._exportRoot:
            qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(self._exportRoot))


class LabelJobSection:
    """Labels for an unlabelled CT ("Label bones in CT", "Transfer labels from atlas"): a background process
    (``XraySegSimLib.label_jobs``), polled by ``labelJobTimer``."""

    def onLabelBones(self) -> None:
        self._startLabelJob(lambda p: self.logic.startCtLabelling(p.inputVolume), _("Labelling the CT..."))

    def onTransferLabels(self) -> None:
        self._startLabelJob(lambda p: self.logic.startLabelTransfer(p.inputVolume, p.atlasVolume, p.atlasLabels),
                            _("Transferring the atlas labels..."))

    def _startLabelJob(self, start, text) -> None:
        if self._labelJob is not None or not self._parameterNode:
            return
        self.ui.labelsStatusLabel.text = text
        self._labelJob = self._try(_("Failed to start the labelling."), lambda: start(self._parameterNode),
                                   waitCursor=True)
        if self._labelJob is None:
            self.ui.labelsStatusLabel.text = _("Nothing was started.")
            return
        self.ui.labelsProgressBar.maximum, self.ui.labelsProgressBar.value = 0, 0  # busy until it reports
        self.ui.cancelLabelsButton.enabled = True
        self.onParametersChanged()
        self.labelJobTimer.start()

    def _pollLabelJob(self) -> None:
        import slicer

        status = self._labelJob.poll()
        if not status.finished:
            if status.fraction is not None:
                self.ui.labelsProgressBar.maximum = 100
                self.ui.labelsProgressBar.value = int(round(100 * status.fraction))
            self.ui.labelsStatusLabel.text = status.message
            return
        job = self._endLabelJob()
        if status.state != "succeeded":
            job.close()
            self.ui.labelsStatusLabel.text = status.message
            if status.state == "failed":
                slicer.util.errorDisplay(_("Labelling failed: {message}").format(message=status.message))
            return
        node = self._try(_("Failed to load the labels."), lambda: job.finish(self.logic.sim.scene), waitCursor=True)
        if node is None:
            self.ui.labelsStatusLabel.text = _("The labels could not be loaded; nothing was added.")
            return
        self.ui.labelsProgressBar.value = self.ui.labelsProgressBar.maximum
        self.ui.labelsStatusLabel.text = _("{name}: {count} segments, now the bone labels").format(
            name=node.GetName(), count=node.GetSegmentation().GetNumberOfSegments())
        if job.metal_note:  # the model read an implant as bone-like HU (its metal suppression)
            self.ui.labelsStatusLabel.text += " (" + job.metal_note + ")"
        if job.warning:  # e.g. the femur model on a whole CT: the labels are there, but say they are doubtful
            self.ui.labelsStatusLabel.text += " (" + job.warning + ")"
            slicer.util.warningDisplay(_("The labels may be wrong: {warning}").format(warning=job.warning))
        if self._parameterNode:
            self._parameterNode.inputLabels = node

    def _endLabelJob(self):
        job, self._labelJob = self._labelJob, None
        self.labelJobTimer.stop()
        self.ui.cancelLabelsButton.enabled = False
        self.ui.labelsProgressBar.maximum, self.ui.labelsProgressBar.value = 100, 0
        self.onParametersChanged()
        return job

    def onCancelLabels(self) -> None:
        if self._labelJob is not None:
            self._labelJob.cancel()  # kills the worker at once: nothing is added, no file is left
            self._endLabelJob()
            self.ui.labelsStatusLabel.text = _("Cancelled; nothing was added.")
