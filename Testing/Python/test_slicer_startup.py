"""What a fresh Slicer has before the user agrees to install anything: numba, torch, monai, spekpy, xraydb, pynrrd,
SimpleITK and safetensors are all unimportable (a meta-path finder refuses them in a subprocess). Importing both Lib
packages and everything the modules' widgets touch at setup must still work: the module files themselves, their
Logic, the parameter nodes, the model list (bundled model card), the X-ray set-up in the scene and the
installer's list of what is missing."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("slicer")

HERE = Path(__file__).resolve().parent
BLOCKED = ("numba", "torch", "monai", "spekpy", "xraydb", "nrrd", "SimpleITK", "safetensors")

SCRIPT = textwrap.dedent('''
    import importlib.abc, json, sys
    BLOCKED = set(sys.argv[1].split(","))

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (not installed yet)", name=name)
            return None

    sys.meta_path.insert(0, Refuse())
    sys.path.insert(0, sys.argv[2])
    import XraySegSimLib, XraySegInferLib
    from XraySegSimLib import InputError, views                      # quick-start names that need no numba
    import XraySegSimLib.mrml_adapter, XraySegSimLib.dependencies, XraySegInferLib.dependencies
    import XraySegInferLib.errors, XraySegInferLib.models, XraySegInferLib.mrml_adapter
    from slicer_headless import HeadlessSlicer
    from slicer_module_stubs import load_module

    class Patch:  # what load_module needs of pytest's monkeypatch
        def setitem(self, mapping, key, value):
            mapping[key] = value

    app = HeadlessSlicer()
    sim, infer = load_module("XraySegSim", Patch()), load_module("XraySegInfer", Patch())
    logic = sim.XraySegSimLogic()
    p = logic.getParameterNode()
    import numpy as np, slicer
    ct = slicer.util.addVolumeFromArray(np.zeros((8, 8, 8), np.int16), name="CT")
    p.inputVolume = ct
    logic.applyPresetDefaults(p)
    logic.updateGeometry(p)                                          # the rig nodes, without numba
    infer_logic = infer.XraySegInferLogic(cacheDir=sys.argv[3])
    models = [m.id for m in infer_logic.models()]                    # reads the bundled card, without torch
    print(json.dumps({"sim_missing": logic.dependencies.missing(), "infer_missing": infer_logic.dependencies.missing(),
                      "models": models, "has_geometry": logic.sim.has_geometry(),
                      "blocked_loaded": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)}))
''')


def test_modules_open_with_none_of_the_installable_packages(tmp_path):
    run = subprocess.run([sys.executable, "-c", SCRIPT, ",".join(BLOCKED), str(HERE), str(tmp_path / "cache")],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["blocked_loaded"] == []
    assert report["has_geometry"]
    assert report["sim_missing"] == ["numba>=0.60", "pynrrd>=1.0", "spekpy>=2.5", "xraydb>=4.5"]
    assert {"monai>=1.3", "safetensors>=0.4", "pynrrd>=1.0", "numba>=0.60"} <= set(report["infer_missing"])
    bundled = HERE.parents[1] / "Resources" / "Models"
    if any(bundled.glob("*/model.json")):
        assert report["models"], "the bundled model is listed without torch"


def test_workers_need_no_mrml():
    """The export and segmentation workers run in Slicer's plain Python (PythonSlicer), which need not load MRML:
    their code paths import with slicer and vtk refused."""
    script = textwrap.dedent('''
        import importlib.abc, sys

        class Refuse(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("slicer", "vtk", "qt"):
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)

        sys.meta_path.insert(0, Refuse())
        import XraySegSimLib.export_process, XraySegSimLib.scene_export, XraySegSimLib.export
        import XraySegInferLib.segment_process, XraySegInferLib.runner, XraySegInferLib.models
        import XraySegInferLib.dependencies, XraySegInferLib.reader
        print("ok")
    ''')
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]
