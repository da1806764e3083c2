"""The rules of Slicer's ``parameterNodeWrapper`` (Base/Python/slicer/parameterNodeWrapper/ in Slicer 5.10-5.13:
serializers.py, validators.py, util.py, guiConnectors.py, wrapper.py), restated for the tests in our own words,
and a stand-in wrapper that applies them to a real ``vtkMRMLScriptedModuleNode``.

What Slicer does, and what is checked here:

* Every annotated field needs a serializer: ``int``, ``float``, ``str``, ``bool``, the ``pathlib`` path classes,
  an ``enum.Enum``, a ``vtkMRMLNode`` subclass, ``None`` (only inside a Union), ``Union[...]`` /
  ``Optional[...]`` of supported types, and ``list``/``tuple``/``dict`` of supported types. Anything else makes
  the ``@parameterNodeWrapper`` decorator raise.
* Values are checked on every write, the default included (written when the wrapper is created): numbers, strings,
  booleans and paths refuse ``None`` and other types (a float field takes an int; an int field refuses a float and a
  numpy integer); a node field takes ``None`` or an instance of its class; ``Choice`` / ``WithinRange`` /
  ``Minimum`` / ``Maximum`` annotations apply too.
* A Union writes a value through the first member whose type matches ``type(value)`` and whose checks pass;
  ``None`` matches only a ``None`` member. Its default is ``None`` for exactly ``Union[X, None]``, else the default
  of its first member -- so ``Union[NodeA, NodeB]`` defaults to ``None`` and cannot write it: creating the wrapper
  raises ``TypeError: Unable to write value 'None'``.
* Defaults: the class attribute if set, else the serializer's (0, "", False, ``Path()``, None, first enum member).
* ``connectGui`` needs a connector for each widget with a ``SlicerParameterName``: QCheckBox - bool; QSpinBox /
  QSlider - int (QSlider bounded); QDoubleSpinBox / ctkSliderWidget - float (ctkSliderWidget bounded); QComboBox -
  int/float/str/bool with a ``Choice``; QLineEdit - str; ctkPathLineEdit / ctkDirectoryButton - a path class
  itself (not Optional); qMRMLNodeComboBox - a node class or a Union of node classes and None.
"""

from __future__ import annotations

import enum
import pathlib
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

import slicer

PATH_TYPES = (pathlib.Path, pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePath, pathlib.PurePosixPath,
              pathlib.PureWindowsPath)
NONE_TYPE = type(None)


class UnsupportedType(TypeError):
    """No Slicer serializer handles this field type."""


# ---- the validator annotations (the names Slicer's module exports) ---------------------------------------------


@dataclass(frozen=True)
class Choice:
    choices: tuple

    def check(self, value) -> None:
        if value not in self.choices:
            raise ValueError(f"{value!r} is not one of {self.choices}")


@dataclass(frozen=True)
class WithinRange:
    minimum: float
    maximum: float

    def check(self, value) -> None:
        if not self.minimum <= value <= self.maximum:
            raise ValueError(f"{value!r} is outside [{self.minimum}, {self.maximum}]")


@dataclass(frozen=True)
class Minimum:
    minimum: float

    def check(self, value) -> None:
        if value < self.minimum:
            raise ValueError(f"{value!r} < {self.minimum}")


@dataclass(frozen=True)
class Maximum:
    maximum: float

    def check(self, value) -> None:
        if value > self.maximum:
            raise ValueError(f"{value!r} > {self.maximum}")


@dataclass(frozen=True)
class Default:
    value: Any = None


VALIDATORS = (Choice, WithinRange, Minimum, Maximum)


def split_annotated(tp) -> tuple[Any, tuple]:
    """(base type, annotations) of a possibly ``Annotated`` type."""
    if typing.get_origin(tp) is typing.Annotated:
        base, *extras = typing.get_args(tp)
        return base, tuple(extras)
    return tp, ()


def _is_node_class(tp) -> bool:
    return isinstance(tp, type) and issubclass(tp, slicer.vtkMRMLNode)


# ---- field rules -----------------------------------------------------------------------------------------------


@dataclass
class Rule:
    """How one (possibly annotated) type is stored: which values it takes, its default, how it reads back."""
    kind: str
    base: Any
    validators: list = field(default_factory=list)
    members: list = field(default_factory=list)  # Union members / container elements

    def matches_type(self, value) -> bool:
        """Slicer's ``canSerialize(type(value))``: the member a Union would try for this value."""
        t = type(value)
        if self.kind == "number":
            return t in (int, float)
        if self.kind in ("str", "bool"):
            return t is self.base
        if self.kind == "path":
            return t in PATH_TYPES
        if self.kind == "node":
            return _is_node_class(t)
        if self.kind == "none":
            return value is None
        if self.kind == "enum":
            return isinstance(t, type) and issubclass(t, enum.Enum)
        return False  # list/tuple/dict: Slicer's canSerialize(list) is False, so a Union never writes them

    def check(self, value) -> None:
        """Raise TypeError/ValueError where Slicer's serializer would refuse ``value``."""
        if self.kind == "union":
            failure = None
            for member in self.members:
                if member.matches_type(value):
                    try:
                        member.check(value)
                        return
                    except (TypeError, ValueError) as error:
                        failure = error
            raise failure or TypeError(f"Unable to write value '{value}' of type '{type(value)}'")
        if self.kind == "none":
            if value is not None:
                raise ValueError("must be None")
        elif self.kind == "node":
            if value is not None and not isinstance(value, self.base):
                raise TypeError(f"{value!r} is not a {self.base.__name__}")
        else:
            if value is None:
                raise ValueError("must not be None")
            allowed = {"number": (int, float) if self.base is float else int, "str": str, "bool": bool,
                       "path": self.base, "enum": self.base, "list": (list, tuple), "tuple": (list, tuple),
                       "dict": dict}[self.kind]
            if not isinstance(value, allowed):
                wanted = getattr(self.base, "__name__", self.base)
                raise TypeError(f"{value!r} ({type(value).__name__}) is not a {wanted}")
            if self.kind == "list":
                for item in value:
                    self.members[0].check(item)
            elif self.kind == "tuple":
                if len(value) != len(self.members):
                    raise ValueError("wrong tuple length")
                for item, member in zip(value, self.members):
                    member.check(item)
            elif self.kind == "dict":
                for key, item in value.items():
                    self.members[0].check(key)
                    self.members[1].check(item)
        for validator in self.validators:
            validator.check(value)

    def default(self):
        if self.kind == "union":
            if len(self.members) == 2 and self.members[1].kind == "none":
                return None
            return self.members[0].default()
        return {"number": 0, "str": "", "bool": False, "node": None, "none": None, "list": [], "tuple": (),
                "dict": {}}.get(self.kind) if self.kind not in ("path", "enum") else (
            self.base() if self.kind == "path" else next(iter(self.base)))

    @property
    def accepts_none(self) -> bool:
        try:
            self.check(None)
            return True
        except (TypeError, ValueError):
            return False


def rule_for(tp) -> Rule:
    """The storage rule of a field type; raises UnsupportedType where Slicer has no serializer."""
    base, annotations = split_annotated(tp)
    validators = [a for a in annotations if isinstance(a, VALIDATORS)]
    origin = typing.get_origin(base)
    if origin is typing.Union or (hasattr(types, "UnionType") and isinstance(base, types.UnionType)):
        return Rule("union", base, validators, [rule_for(arg) for arg in typing.get_args(base)])
    if origin in (list, tuple, dict):
        args = [a for a in typing.get_args(base) if a is not Ellipsis]
        if not args or (origin is dict and len(args) != 2):
            raise UnsupportedType(f"{base}: give the element types")
        return Rule(origin.__name__, base, validators, [rule_for(a) for a in args])
    if base in (int, float):
        return Rule("number", base, validators)
    if base is str:
        return Rule("str", base, validators)
    if base is bool:
        return Rule("bool", base, validators)
    if base in PATH_TYPES:
        return Rule("path", base, validators)
    if base is NONE_TYPE:
        return Rule("none", base, validators)
    if isinstance(base, type) and issubclass(base, enum.Enum):
        return Rule("enum", base, validators)
    if _is_node_class(base):
        return Rule("node", base, validators)
    raise UnsupportedType(f"no parameter-node serializer for {base!r}")


def node_classes(tp) -> tuple[type, ...]:
    """The node classes of a node field or a Union of nodes (and None); () for other fields."""
    rule = rule_for(tp)
    members = rule.members if rule.kind == "union" else [rule]
    if not all(m.kind in ("node", "none") for m in members):
        return ()
    return tuple(m.base for m in members if m.kind == "node")


def fields(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def field_default(cls, name: str, tp) -> Any:
    if name in vars(cls):
        return vars(cls)[name]
    declared = [a for a in split_annotated(tp)[1] if isinstance(a, Default)]
    return declared[0].value if declared else rule_for(tp).default()


def problems(cls) -> list[str]:
    """Everything Slicer's wrapper would refuse in this class: unsupported field types, defaults it cannot write,
    node-typed or Union fields that do not take None (the widgets' empty selection, a closed scene)."""
    found = []
    for name, tp in fields(cls).items():
        try:
            rule = rule_for(tp)
        except UnsupportedType as error:
            found.append(f"{name}: {error}")
            continue
        try:
            rule.check(field_default(cls, name, tp))
        except (TypeError, ValueError) as error:
            found.append(f"{name}: its default cannot be written ({error})")
        if (rule.kind == "node" or rule.kind == "union") and not rule.accepts_none:
            found.append(f"{name}: a node-typed or Union field must accept None (add None / use Optional)")
    return found


# ---- GUI connectors --------------------------------------------------------------------------------------------


def connector_problem(widget_class: str, tp) -> str | None:
    """Why ``connectGui`` would find no connector for this widget class and field type (None: it would)."""
    base, annotations = split_annotated(tp)
    bounded = any(isinstance(a, WithinRange) for a in annotations) or (
        any(isinstance(a, Minimum) for a in annotations) and any(isinstance(a, Maximum) for a in annotations))
    if widget_class == "QCheckBox" and base is bool:
        return None
    if widget_class in ("QSpinBox", "QSlider") and base is int:
        return None if widget_class == "QSpinBox" or bounded else "a QSlider needs a bounded int"
    if widget_class in ("QDoubleSpinBox", "ctkSliderWidget") and base is float:
        return None if widget_class == "QDoubleSpinBox" or bounded else "a ctkSliderWidget needs a bounded float"
    if widget_class == "QComboBox" and base in (int, float, str, bool):
        return None if any(isinstance(a, Choice) for a in annotations) else "a QComboBox needs a Choice annotation"
    if widget_class == "QLineEdit" and base is str:
        return None
    if widget_class in ("ctkPathLineEdit", "ctkDirectoryButton") and base in PATH_TYPES:
        return None
    if widget_class == "qMRMLNodeComboBox" and node_classes(tp):
        return None
    return f"no connector from a {widget_class} to {tp}"


# ---- a stand-in wrapper that stores in a real vtkMRMLScriptedModuleNode ----------------------------------------


def parameterNodeWrapper(cls):
    """Apply the rules: refuse the class as Slicer's decorator would; instances read and write typed values on a
    real ``vtkMRMLScriptedModuleNode`` (string parameters, node references), each write checked."""
    hints = fields(cls)
    rules = {name: rule_for(tp) for name, tp in hints.items()}  # raises UnsupportedType as Slicer would
    defaults = {name: field_default(cls, name, tp) for name, tp in hints.items()}

    def parse(rule: Rule, text: str):
        if rule.kind == "bool":
            return text == "True"
        if rule.kind == "enum":
            return rule.base[text]
        if rule.kind in ("number", "str", "path"):
            return rule.base(text)
        if rule.kind == "none":
            return None
        raise UnsupportedType(f"this stand-in does not store {rule.kind} fields")

    def make_property(name: str) -> property:
        rule = rules[name]
        is_node = bool(node_classes(hints[name]))
        members = rule.members if rule.kind == "union" else [rule]

        def read(self):
            node = self.parameterNode
            if is_node:
                return node.GetNodeReference(name)
            return parse(members[int(node.GetParameter(f"{name}.member") or 0)], node.GetParameter(name))

        def write(self, value):
            rule.check(value)
            node = self.parameterNode
            if is_node:
                node.SetParameter(name, "")  # marks the field as written, as Slicer does
                node.SetNodeReferenceID(name, value.GetID() if value is not None else None)
                return
            chosen = next((i for i, m in enumerate(members) if m.matches_type(value)), 0)
            node.SetParameter(f"{name}.member", str(chosen))
            node.SetParameter(name, "True" if value is True else "False" if value is False else
                              value.name if isinstance(value, enum.Enum) else str(value))
        return property(read, write)

    def __init__(self, parameterNode):
        self.parameterNode = parameterNode
        for name, value in defaults.items():
            if not parameterNode.HasParameter(name):  # a second wrapper on the same node keeps its values
                setattr(self, name, value)

    namespace = {name: make_property(name) for name in hints}
    namespace.update(__init__=__init__, allParameters=dict(hints), __doc__=cls.__doc__, declared_class=cls,
                     connectGui=lambda self, gui: 0, disconnectGui=lambda self, tag: None,
                     # what Slicer's wrapper forwards to the node
                     AddObserver=lambda self, event, callback, priority=0.0: self.parameterNode.AddObserver(
                         event, callback, priority),
                     RemoveObserver=lambda self, tag: self.parameterNode.RemoveObserver(tag),
                     StartModify=lambda self: self.parameterNode.StartModify(),
                     EndModify=lambda self, was: self.parameterNode.EndModify(was),
                     Modified=lambda self: self.parameterNode.Modified())
    return type(cls.__name__, (), namespace)


def module() -> types.ModuleType:
    """A ``slicer.parameterNodeWrapper`` module made of the stand-ins above."""
    m = types.ModuleType("slicer.parameterNodeWrapper")
    m.__dict__.update(Choice=lambda choices: Choice(tuple(choices)), WithinRange=WithinRange, Minimum=Minimum,
                      Maximum=Maximum, Default=Default, parameterNodeWrapper=parameterNodeWrapper)
    return m


__all__ = ["Choice", "Default", "Maximum", "Minimum", "UnsupportedType", "WithinRange", "connector_problem",
           "field_default", "fields", "module", "node_classes", "parameterNodeWrapper", "problems", "rule_for"]
