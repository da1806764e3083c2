"""Labelled virtual phantoms built from openly licensed meshes (``xrayseg phantom``)."""
