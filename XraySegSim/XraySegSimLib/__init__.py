"""XraySegSimLib: CT -> simulated radiograph (DRR) with exactly projected labels. Qt-free, Slicer-free core.

Quick start (Python console or script)::

    from XraySegSimLib import read_volume, views, DrrProjector, LabelClasses
    ct = read_volume("ct.nii.gz"); labels = read_volume("labels.nii.gz")
    geometry = views.from_preset("chest-pa", isocenter=ct.center_ras, size=512)
    projector = DrrProjector(ct, labels, LabelClasses.totalsegmentator_bones())
    result = projector.render(geometry)   # result.line_integral, result.thickness_mm, result.label_image
"""

from .errors import GeometryError, InputError, XraySegError
from .geometry import XrayGeometry
from .volume import Volume, read_volume
from .labels import LabelClass, LabelClasses
from .projector import DrrProjector, DrrResult
from . import views

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
