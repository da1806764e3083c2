"""Static checks of the Slicer extension layout; no Slicer needed.

* Each module's CMakeLists.txt lists every .py file and resource of the module, and every listed file exists
  (a file missing from the lists would silently be left out of the built extension).
* The top-level CMakeLists.txt has the extension template's metadata and includes.
* Each module file compiles, every ``self.ui.<name>`` it uses is a widget of its .ui, and every
  ``SlicerParameterName`` in the .ui is a field of its ``parameterNodeWrapper`` class.
* Icons are 128x128 PNGs.
"""

from __future__ import annotations

import ast
import re
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULES = ["XraySegSim", "XraySegInfer"]
EXTENSION_KEYS = ["EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                  "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"]
SKIPPED_DIRS = {"__pycache__", "Testing"}


def strip_cmake_comments(text: str) -> str:
    return re.sub(r"#[^\n]*", "", text)


def cmake_set(text: str, variable: str) -> list[str]:
    """Items of ``set(<variable> item ...)`` in a CMakeLists.txt (comments stripped)."""
    match = re.search(rf"\bset\(\s*{variable}\b(.*?)\)", strip_cmake_comments(text), re.DOTALL)
    assert match, f"no set({variable} ...) block"
    return match.group(1).split()


def listed_files(module: str) -> tuple[set[str], set[str]]:
    """(scripts, resources) listed in the module's CMakeLists.txt, ${MODULE_NAME} expanded, .py added as CTK does."""
    cmake = ROOT / module / "CMakeLists.txt"
    assert cmake.is_file(), f"missing {cmake.relative_to(ROOT)}"
    text = cmake.read_text()
    (name,) = cmake_set(text, "MODULE_NAME")
    assert name == module, f"{module}/CMakeLists.txt sets MODULE_NAME to {name!r}"

    def expand(item: str) -> str:
        return item.replace("${MODULE_NAME}", name)

    scripts = {s if s.endswith(".py") else s + ".py" for s in map(expand, cmake_set(text, "MODULE_PYTHON_SCRIPTS"))}
    resources = set(map(expand, cmake_set(text, "MODULE_PYTHON_RESOURCES")))
    return scripts, resources


def module_files(module: str) -> tuple[set[str], set[str]]:
    """(python files, resource files) present in the module folder, relative to it."""
    base = ROOT / module
    files = [p for p in base.rglob("*") if p.is_file() and not SKIPPED_DIRS & set(p.relative_to(base).parts)]
    rel = [p.relative_to(base).as_posix() for p in files]
    scripts = {r for r in rel if r.endswith(".py")}
    resources = {r for r in rel if r.startswith("Resources/") or re.match(r"[^/]+Lib/data/", r)}
    return scripts, resources


@pytest.mark.parametrize("module", MODULES)
def test_every_module_file_is_listed_in_cmake(module):
    listed_scripts, listed_resources = listed_files(module)
    present_scripts, present_resources = module_files(module)
    unlisted = sorted((present_scripts - listed_scripts) | (present_resources - listed_resources))
    assert not unlisted, f"{module}/CMakeLists.txt does not list: {', '.join(unlisted)}"


@pytest.mark.parametrize("module", MODULES)
def test_every_listed_file_exists(module):
    listed_scripts, listed_resources = listed_files(module)
    missing = sorted(f for f in listed_scripts | listed_resources if not (ROOT / module / f).is_file())
    assert not missing, f"{module}/CMakeLists.txt lists missing files: {', '.join(f'{module}/{m}' for m in missing)}"


def test_top_level_cmake():
    cmake = ROOT / "CMakeLists.txt"
    assert cmake.is_file(), "missing CMakeLists.txt"
    text = strip_cmake_comments(cmake.read_text())
    assert re.search(r"cmake_minimum_required\(VERSION 3\.16\.3\.\.\.3\.19\.7", text)
    assert re.search(r"\bproject\(\s*XraySeg\s*\)", text), "project(XraySeg) missing"
    for module in MODULES:
        assert re.search(rf"add_subdirectory\(\s*{module}\s*\)", text), f"add_subdirectory({module}) missing"
    for key in EXTENSION_KEYS:
        assert re.search(rf"\bset\(\s*{key}\s+\S", text), f"set({key} ...) missing"
    for line in ["find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})",
                 "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"]:
        assert line in text, f"{line} missing"


@pytest.mark.parametrize("name", ["LICENSE", "README.md"])
def test_top_level_files_exist(name):
    assert (ROOT / name).is_file(), f"missing top-level {name}"


# --- module files and their .ui ---------------------------------------------------------------------------------


def parse_module(module: str) -> ast.Module:
    path = ROOT / module / f"{module}.py"
    assert path.is_file(), f"missing {module}/{module}.py"
    source = path.read_text()
    compile(source, str(path), "exec")
    return ast.parse(source, str(path))


def ui_tree(module: str) -> ET.Element:
    path = ROOT / module / "Resources" / "UI" / f"{module}.ui"
    assert path.is_file(), f"missing {path.relative_to(ROOT)}"
    return ET.parse(path).getroot()


def ui_widget_names(root: ET.Element) -> set[str]:
    return {w.get("name") for w in root.iter("widget")}


def ui_parameter_names(root: ET.Element) -> dict[str, str]:
    """widget name -> SlicerParameterName."""
    return {w.get("name"): w.find("./property[@name='SlicerParameterName']/string").text
            for w in root.iter("widget") if w.find("./property[@name='SlicerParameterName']") is not None}


def parameter_node_class(tree: ast.Module) -> ast.ClassDef | None:
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            for dec in node.decorator_list:
                target = dec.func if isinstance(dec, ast.Call) else dec
                if (isinstance(target, ast.Name) and target.id == "parameterNodeWrapper") or (
                        isinstance(target, ast.Attribute) and target.attr == "parameterNodeWrapper"):
                    return node
    return None


def annotated_fields(cls: ast.ClassDef) -> dict[str, ast.AnnAssign]:
    return {n.target.id: n for n in cls.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}


@pytest.mark.parametrize("module", MODULES)
def test_module_ui_names_exist(module):
    tree, names = parse_module(module), ui_widget_names(ui_tree(module))
    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Attribute)
            and n.value.attr == "ui" and isinstance(n.value.value, ast.Name) and n.value.value.id == "self"}
    missing = sorted(used - names)
    assert not missing, f"{module}.py uses self.ui.{{{', '.join(missing)}}}, not widgets of {module}.ui"


@pytest.mark.parametrize("module", MODULES)
def test_ui_parameter_names_are_parameter_node_fields(module):
    parameters = ui_parameter_names(ui_tree(module))
    cls = parameter_node_class(parse_module(module))
    fields = annotated_fields(cls) if cls is not None else {}
    unknown = sorted(f"{w} -> {p}" for w, p in parameters.items() if p not in fields)
    assert not unknown, f"{module}.ui SlicerParameterName not in the parameterNodeWrapper class: {', '.join(unknown)}"


def test_sim_parameter_node_and_ui():
    cls = parameter_node_class(parse_module("XraySegSim"))
    assert cls is not None and cls.name == "XraySegSimParameterNode"
    set_up = {"laoSlider": "laoAngle", "craSlider": "craAngle", "sourceToDetectorSlider": "sourceToDetector",
              "sourceToIsocenterSlider": "sourceToIsocenter", "detectorWidthSlider": "detectorWidth",
              "detectorHeightSlider": "detectorHeight", "livePreviewCheckBox": "livePreview"}
    isocentre = {"isocenterModeComboBox": "isocenterMode", "isocenterMarkupSelector": "isocenterMarkup"}
    physics = {"realisticPhysicsCheckBox": "realisticPhysics", "physicsPresetComboBox": "physicsPreset"}
    export = {"exportFolderPathLineEdit": "exportFolder", "exportViewPresetComboBox": "exportViewPreset",
              "exportViewsPerCtSpinBox": "exportViewsPerCt", "exportSizeSpinBox": "exportSize",
              "exportPhysicsComboBox": "exportPhysics", "exportSeedSpinBox": "exportSeed",
              "exportTestFractionSpinBox": "exportTestFraction", "exportWorkersSpinBox": "exportWorkers",
              "exportResumeCheckBox": "exportResume", "exportVirtualPatientsSpinBox": "exportVirtualPatients",
              "exportDomainRandomisationComboBox": "exportDomainRandomisation",
              "exportSuppressContrastCheckBox": "exportSuppressContrast"}
    atlas = {"atlasVolumeSelector": "atlasVolume", "atlasLabelsSelector": "atlasLabels"}
    assert set(annotated_fields(cls)) == {"inputVolume", "inputLabels", "viewPreset", "detectorSize",
                                          "isocenterSegment", *set_up.values(), *isocentre.values(),
                                          *physics.values(), *export.values(), *atlas.values()}
    root = ui_tree("XraySegSim")
    assert ui_parameter_names(root) == {"inputVolumeSelector": "inputVolume", "inputLabelsSelector": "inputLabels",
                                        "viewPresetComboBox": "viewPreset", "detectorSizeSpinBox": "detectorSize",
                                        **set_up, **isocentre, **physics, **export, **atlas}
    # Node combo boxes get the scene from the module widget, as in Slicer's template.
    combos = {w.get("name") for w in root.iter("widget") if w.get("class") == "qMRMLNodeComboBox"}
    connected = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
                 and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    assert combos and combos <= connected, f"not connected to the scene: {sorted(combos - connected)}"


def test_view_preset_choices_match_library():
    """The module repeats the preset names (to import light); they must match the library's, in order."""
    from XraySegSimLib import views

    tree = parse_module("XraySegSim")
    assigned = [n for n in tree.body if isinstance(n, ast.Assign) and any(
        isinstance(t, ast.Name) and t.id == "VIEW_PRESETS" for t in n.targets)]
    assert assigned, "XraySegSim.py defines no VIEW_PRESETS"
    assert tuple(ast.literal_eval(assigned[0].value)) == views.PRESET_NAMES
    combo = next(w for w in ui_tree("XraySegSim").iter("widget") if w.get("name") == "viewPresetComboBox")
    items = tuple(i.findtext("./property[@name='text']/string") for i in combo.findall("item"))
    assert items == views.PRESET_NAMES


def test_domain_randomisation_choices_match_library():
    """The export panel's randomisation levels are the library's (the module repeats them to import light)."""
    from XraySegSimLib.domain_randomisation import LEVELS

    tree = parse_module("XraySegSim")
    assigned = [n for n in tree.body if isinstance(n, ast.Assign) and any(
        isinstance(t, ast.Name) and t.id == "DOMAIN_RANDOMISATION" for t in n.targets)]
    assert assigned and tuple(ast.literal_eval(assigned[0].value)) == tuple(LEVELS)
    combo = next(w for w in ui_tree("XraySegSim").iter("widget")
                 if w.get("name") == "exportDomainRandomisationComboBox")
    assert tuple(i.findtext("./property[@name='text']/string") for i in combo.findall("item")) == tuple(LEVELS)


@pytest.mark.parametrize("icon", ["XraySegSim/Resources/Icons/XraySegSim.png",
                                  "XraySegInfer/Resources/Icons/XraySegInfer.png", "Resources/Icons/XraySeg.png"])
def test_icons_are_128_pngs(icon):
    path = ROOT / icon
    assert path.is_file(), f"missing {icon}"
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{icon} is not a PNG"
    assert struct.unpack(">II", data[16:24]) == (128, 128), f"{icon} is not 128x128"


def test_infer_parameter_node_and_ui():
    cls = parameter_node_class(parse_module("XraySegInfer"))
    assert cls is not None and cls.name == "XraySegInferParameterNode"
    bound = {"inputVolumeSelector": "inputVolume", "deviceComboBox": "device",
             "batchInputPathLineEdit": "batchInputFolder", "batchOutputPathLineEdit": "batchOutputFolder",
             "batchResumeCheckBox": "batchResume"}
    assert set(annotated_fields(cls)) == {*bound.values(), "modelId", "outputSegmentation", "outputTable"}
    root = ui_tree("XraySegInfer")
    assert ui_parameter_names(root) == bound
    combos = {w.get("name") for w in root.iter("widget") if w.get("class") == "qMRMLNodeComboBox"}
    connected = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
                 and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    assert combos and combos <= connected, f"not connected to the scene: {sorted(combos - connected)}"
    tree = parse_module("XraySegInfer")
    (devices,) = [n.value for n in tree.body if isinstance(n, ast.Assign)
                  and any(isinstance(t, ast.Name) and t.id == "DEVICES" for t in n.targets)]
    combo = next(w for w in root.iter("widget") if w.get("name") == "deviceComboBox")
    items = tuple(i.findtext("./property[@name='text']/string") for i in combo.findall("item"))
    assert items == tuple(ast.literal_eval(devices))
    # The widget loads this .ui, as in Slicer's template.
    assert 'self.resourcePath("UI/XraySegInfer.ui")' in (ROOT / "XraySegInfer" / "XraySegInfer.py").read_text()
