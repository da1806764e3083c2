import slicer
from slicer.i18n import tr as _, translate
from slicer.ScriptedLoadableModule import *  # noqa: F403


class XraySegInfer(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("XraySeg Infer")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["XraySeg developers"]
        self.parent.helpText = _(
            "Bone segmentation of radiographs (X-ray images). Inference arrives in a later release; until then "
            "use XraySeg Sim to simulate radiographs with bone labels from CT. "
            "See <a href='https://github.com/xrayseg/SlicerXraySeg'>the project page</a>.")
        self.parent.acknowledgementText = _("Developed by the XraySeg developers.")


class XraySegInferWidget(ScriptedLoadableModuleWidget):
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/XraySegInfer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = XraySegInferLogic()


class XraySegInferLogic(ScriptedLoadableModuleLogic):
    """Placeholder: the inference core (XraySegInferLib) comes with a later issue."""


class XraySegInferTest(ScriptedLoadableModuleTest):
    def runTest(self):
        slicer.mrmlScene.Clear()
        self.test_logic_instantiates()

    def test_logic_instantiates(self):
        self.assertIsNotNone(XraySegInferLogic())
