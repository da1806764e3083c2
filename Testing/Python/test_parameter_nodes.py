"""Both modules' parameter-node classes against the rules of Slicer's ``parameterNodeWrapper`` (restated in
``parameter_node_rules``): every field type has a serializer, every default can be written, node-typed and Union
fields take None, every widget bound in the .ui has a GUI connector, and the values the modules write (view
preset distances) pass the fields' checks, on a real ``vtkMRMLScriptedModuleNode``."""


import pathlib
import xml.etree.ElementTree as ET
from typing import Annotated, Optional, Union

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

import parameter_node_rules as rules  # noqa: E402
from slicer_module_stubs import ROOT, load_module  # noqa: E402

CLASSES = [("XraySegSim", "XraySegSimParameterNode"), ("XraySegInfer", "XraySegInferParameterNode")]


def declared(module_name: str, class_name: str, monkeypatch):
    module = load_module(module_name, monkeypatch)
    wrapped = getattr(module, class_name)
    return module, wrapped, wrapped.declared_class


def ui_bindings(module_name: str) -> dict[str, str]:
    """SlicerParameterName -> widget class, from the module's .ui."""
    root = ET.parse(ROOT / module_name / "Resources" / "UI" / f"{module_name}.ui").getroot()
    return {w.find("./property[@name='SlicerParameterName']/string").text: w.get("class")
            for w in root.iter("widget") if w.find("./property[@name='SlicerParameterName']") is not None}


@pytest.mark.parametrize("module_name, class_name", CLASSES)
def test_parameter_node_class_follows_slicer_rules(module_name, class_name, monkeypatch):
    _, _, cls = declared(module_name, class_name, monkeypatch)
    assert rules.problems(cls) == []


@pytest.mark.parametrize("module_name, class_name", CLASSES)
def test_parameter_node_writes_defaults_nodes_and_none_on_a_real_node(module_name, class_name, app, monkeypatch):
    _, wrapped, cls = declared(module_name, class_name, monkeypatch)
    node = app.scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
    p = wrapped(node)
    hints = rules.fields(cls)
    for name, tp in hints.items():
        classes = rules.node_classes(tp)
        if classes:
            assert getattr(p, name) is None  # the default of a node field
            for node_class in classes:
                value = app.scene.AddNewNodeByClass(node_class.__name__)
                setattr(p, name, value)
                assert getattr(p, name) is value
            setattr(p, name, None)  # an emptied selector, a closed scene
            assert getattr(p, name) is None
        else:
            default = rules.field_default(cls, name, tp)
            assert getattr(p, name) == default
            setattr(p, name, default)
    # A second wrapper on the same node reads the stored values (the module's logic makes one per call).
    first_str = next(n for n, tp in hints.items() if rules.split_annotated(tp)[0] is str)
    setattr(p, first_str, getattr(p, first_str))
    assert getattr(wrapped(node), first_str) == getattr(p, first_str)


@pytest.mark.parametrize("module_name, class_name", CLASSES)
def test_every_widget_bound_in_the_ui_has_a_gui_connector(module_name, class_name, monkeypatch):
    _, _, cls = declared(module_name, class_name, monkeypatch)
    hints = rules.fields(cls)
    bindings = ui_bindings(module_name)
    assert bindings and set(bindings) <= set(hints)
    found = {name: rules.connector_problem(widget, hints[name]) for name, widget in bindings.items()}
    assert {name: why for name, why in found.items() if why} == {}


def test_view_preset_values_pass_the_sim_fields_checks(app, monkeypatch):
    """applyPresetDefaults writes each preset's distances and detector size: all inside the fields' ranges
    and of the fields' types (a numpy integer in an int field would be refused)."""
    from XraySegSimLib import views

    module = load_module("XraySegSim", monkeypatch)
    p = module.XraySegSimLogic().getParameterNode()
    for preset in views.PRESET_NAMES:
        p.viewPreset = preset
        module.XraySegSimLogic.applyPresetDefaults(p)
        assert (p.sourceToDetector, p.sourceToIsocenter) == (
            views.PRESETS[preset].source_to_detector_mm, views.PRESETS[preset].source_to_isocenter_mm)
        p.exportViewPreset = preset


def test_the_rules_refuse_what_slicer_refuses(app):
    """The checks can fail: each class below is one Slicer's wrapper refuses."""
    seg, labelmap = slicer.vtkMRMLSegmentationNode, slicer.vtkMRMLLabelMapVolumeNode

    class UnionWithoutNone:
        labels: Union[seg, labelmap]

    class UnsupportedType:
        image: np.ndarray

    class BadDefault:
        size: Annotated[int, rules.WithinRange(16, 64)] = 8

    class Fine:
        labels: Union[seg, labelmap, None]
        volume: Optional[slicer.vtkMRMLScalarVolumeNode]
        folder: pathlib.Path
        size: Annotated[int, rules.WithinRange(16, 64)] = 32

    assert any("must accept None" in p for p in rules.problems(UnionWithoutNone))
    assert any("default cannot be written" in p for p in rules.problems(UnionWithoutNone))
    assert any("no parameter-node serializer" in p for p in rules.problems(UnsupportedType))
    assert any("size" in p for p in rules.problems(BadDefault))
    assert rules.problems(Fine) == []
    wrapped = rules.parameterNodeWrapper(UnionWithoutNone)
    with pytest.raises(TypeError, match="Unable to write value 'None'"):
        wrapped(app.scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode"))
    fine = rules.parameterNodeWrapper(Fine)(app.scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode"))
    with pytest.raises(TypeError):
        fine.size = np.int64(32)  # numpy integers are not int
    with pytest.raises(ValueError):
        fine.folder = None  # a path field takes no None: an empty path reads as Path(".")
    with pytest.raises(TypeError):
        fine.labels = app.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    assert fine.folder == pathlib.Path(".")
    assert rules.connector_problem("ctkPathLineEdit", Optional[pathlib.Path]) is not None
    assert rules.connector_problem("qMRMLNodeComboBox", Union[seg, labelmap, None]) is None
    assert rules.connector_problem("QComboBox", str) is not None  # needs a Choice
    assert rules.connector_problem("ctkSliderWidget", float) is not None  # needs bounds
