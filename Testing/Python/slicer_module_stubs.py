"""Load XraySegSim.py / XraySegInfer.py (the Slicer scripted modules) on slicer-core: the Qt-only parts of
Slicer are stand-ins, the parameter node is ``parameter_node_rules``' wrapper (Slicer's rules, on a real
``vtkMRMLScriptedModuleNode`` of the scene), and the scene, nodes and logics are real.

::

    module = load_module("XraySegSim", monkeypatch)      # the module file, executed with the stand-ins
    logic = module.XraySegSimLogic()
"""

from __future__ import annotations

import importlib.util
import sys
import types
import unittest
from pathlib import Path

import slicer

import parameter_node_rules

ROOT = Path(__file__).resolve().parents[2]


class ScriptedLoadableModule:
    def __init__(self, parent=None):
        self.parent = parent


class ScriptedLoadableModuleWidget:
    """As Slicer's, as far as the modules use it: ``parent.isEntered``, ``layout``, ``resourcePath``."""

    def __init__(self, parent=None):
        self.parent = parent if parent is not None else types.SimpleNamespace(isEntered=True)
        self.layout = types.SimpleNamespace(widgets=[], addWidget=lambda widget: self.layout.widgets.append(widget))

    def setup(self):
        pass

    def resourcePath(self, relative: str) -> str:
        return str(ROOT / type(self).__name__.removesuffix("Widget") / "Resources" / relative)


class ScriptedLoadableModuleLogic:
    """As Slicer's: the parameter node is the scene's singleton scripted module node of this module."""

    def __init__(self, parent=None):
        self.moduleName = type(self).__name__.removesuffix("Logic")

    def getParameterNode(self):
        scene = slicer.mrmlScene
        node = scene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", scene.GenerateUniqueName(self.moduleName))
            node.SetSingletonTag(self.moduleName)
            node.SetModuleName(self.moduleName)
        return node


def _module(name: str, **attributes) -> types.ModuleType:
    m = types.ModuleType(name)
    m.__dict__.update(attributes)
    return m


def stubs() -> dict[str, types.ModuleType]:
    """The modules the scripted modules import from the Slicer application (Qt), as stand-ins."""
    return {
        "slicer.i18n": _module("slicer.i18n", tr=lambda text: text, translate=lambda context, text: text),
        "slicer.parameterNodeWrapper": parameter_node_rules.module(),
        "slicer.ScriptedLoadableModule": _module(
            "slicer.ScriptedLoadableModule", ScriptedLoadableModule=ScriptedLoadableModule,
            ScriptedLoadableModuleWidget=ScriptedLoadableModuleWidget,
            ScriptedLoadableModuleLogic=ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest=unittest.TestCase,
            __all__=["ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleLogic",
                     "ScriptedLoadableModuleTest"]),
        "qt": _module("qt"),
    }


def load_module(name: str, monkeypatch, overrides: dict | None = None) -> types.ModuleType:
    """Execute ``<name>/<name>.py`` with the stand-ins in ``sys.modules`` (undone by ``monkeypatch``);
    ``overrides`` replaces some of them (e.g. a fake ``qt`` for the widgets)."""
    for module_name, module in {**stubs(), **(overrides or {})}.items():
        monkeypatch.setitem(sys.modules, module_name, module)
    spec = importlib.util.spec_from_file_location(f"{name}_module_under_test", ROOT / name / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
