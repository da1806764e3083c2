"""Just enough of Qt (``qt``) and of the Slicer application (``slicer.app``, ``loadUI``) to run the modules'
widgets on slicer-core: widgets are plain objects with the properties the modules use, built from the real .ui
files (one per named widget), signals are lists of callbacks, and timers fire when a test calls ``fire()``.
Everything else -- scene, nodes, logics, parameter nodes, renders, background processes -- is real."""

from __future__ import annotations

import types
import xml.etree.ElementTree as ET
from pathlib import Path


def _positional_count(function, available: int) -> int:
    import inspect

    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return available
    if any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return available
    return min(available, sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in parameters))


class FakeWidget:
    """A widget of the .ui: attributes for the properties, ``connect(signal, slot)`` for the signals."""

    def __init__(self, name: str, class_name: str) -> None:
        self.objectName, self.className = name, class_name
        self.enabled, self.visible, self.text, self.value, self.maximum = True, True, "", 0, 100
        self.currentIndex, self._items, self._data, self._slots, self._blocked = -1, [], [], {}, False
        self.scene = None

    # signals
    def connect(self, signal: str, slot) -> None:
        self._slots.setdefault(signal.split("(")[0], []).append(slot)

    def emit(self, signal: str, *args) -> None:
        """Call the slots; like PythonQt, a slot gets only as many of the signal's arguments as it takes."""
        if not self._blocked:
            for slot in self._slots.get(signal, []):
                slot(*args[:_positional_count(slot, len(args))])

    def click(self) -> None:
        if self.enabled:
            self.emit("clicked", False)

    def blockSignals(self, blocked: bool) -> bool:
        was, self._blocked = self._blocked, blocked
        return was

    # combo boxes
    @property
    def count(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items, self._data, self.currentIndex = [], [], -1

    def addItems(self, texts) -> None:
        for text in texts:
            self.addItem(text)

    def addItem(self, text, data=None) -> None:
        self._items.append(text)
        self._data.append(data)

    def itemText(self, index: int) -> str:
        return self._items[index]

    def itemData(self, index: int):
        return self._data[index]

    def setMRMLScene(self, scene) -> None:
        self.scene = scene


class FakeTimer:
    """A QTimer a test fires by hand."""

    def __init__(self) -> None:
        self.active, self.interval, self.singleShot, self._callbacks = False, 0, False, []

    def setSingleShot(self, single: bool) -> None:
        self.singleShot = single

    def setInterval(self, ms: int) -> None:
        self.interval = ms

    def connect(self, signal: str, callback) -> None:
        self._callbacks.append(callback)

    def start(self) -> None:
        self.active = True

    def stop(self) -> None:
        self.active = False

    def fire(self) -> None:
        if self.active:
            self.active = not self.singleShot
            for callback in list(self._callbacks):
                callback()


def qt_module() -> types.ModuleType:
    qt = types.ModuleType("qt")
    qt.QTimer = FakeTimer
    qt.Qt = types.SimpleNamespace(WaitCursor=0)
    qt.QDesktopServices = types.SimpleNamespace(openUrl=lambda url: None)
    qt.QUrl = types.SimpleNamespace(fromLocalFile=lambda path: path)
    return qt


def load_ui(path: str | Path) -> FakeWidget:
    """The .ui's top widget, with every named child widget in ``children``."""
    root = ET.parse(path).getroot()
    top = root.find("widget")
    widget = FakeWidget(top.get("name"), top.get("class"))
    widget.children = {w.get("name"): FakeWidget(w.get("name"), w.get("class")) for w in top.iter("widget")
                       if w is not top}
    return widget


def child_widget_variables(widget: FakeWidget) -> types.SimpleNamespace:
    return types.SimpleNamespace(**widget.children)


class Layout:
    def __init__(self) -> None:
        self.widgets = []

    def addWidget(self, widget) -> None:
        self.widgets.append(widget)


class ModuleWidgetBase:
    """slicer.ScriptedLoadableModule.ScriptedLoadableModuleWidget, as far as the modules use it."""

    def __init__(self, parent=None, module_dir: Path | None = None) -> None:
        self.parent = parent or types.SimpleNamespace(isEntered=True)
        self.layout = Layout()
        self.module_dir = module_dir

    def setup(self) -> None:
        pass

    def resourcePath(self, relative: str) -> str:
        return str(Path(self.module_dir) / "Resources" / relative)
