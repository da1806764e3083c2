"""XraySegSimLib: CT -> simulated radiograph (DRR) with exactly projected labels. Qt-free, Slicer-free core.

Quick start (Python console or script)::

    from XraySegSimLib import read_volume, views, DrrProjector, LabelClasses
    ct = read_volume("ct.nii.gz"); labels = read_volume("labels.nii.gz")
    geometry = views.from_preset("chest-pa", isocenter=ct.center_ras, size=512)
    projector = DrrProjector(ct, labels, LabelClasses.totalsegmentator_bones())
    result = projector.render(geometry)   # result.line_integral, result.thickness_mm, result.label_image
"""

from .errors import GeometryError, InputError, XraySegError

# The quick-start names are imported on first use: the Slicer module imports this package before the user has
# agreed to install numba and the other packages (``XraySegSimLib.dependencies``), so nothing here may need them.
_LAZY = {"XrayGeometry": "geometry", "Volume": "volume", "read_volume": "volume", "LabelClass": "labels",
         "LabelClasses": "labels", "DrrProjector": "projector", "DrrResult": "projector"}


def __getattr__(name: str):
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    if name == "views":
        return importlib.import_module(".views", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DrrProjector",
    "DrrResult",
    "GeometryError",
    "InputError",
    "LabelClass",
    "LabelClasses",
    "Volume",
    "XraySegError",
    "XrayGeometry",
    "read_volume",
    "views",
]
