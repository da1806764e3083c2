"""XraySegInferLib: bone segmentation of radiographs (X-ray images).

The inference core (model loading and prediction) comes with a later issue; this package only reserves
the name so the XraySeg Infer module and the ``xrayseg`` Python package can already import it.
"""

__all__ = []
