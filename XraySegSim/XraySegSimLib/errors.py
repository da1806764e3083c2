"""Errors with messages meant for the user: each says what is wrong and how to fix it."""


class XraySegError(Exception):
    """Base class; the command line prints the message and exits with status 2."""


class GeometryError(XraySegError):
    """The X-ray set-up cannot produce an image (degenerate, source inside the volume, detector edge-on...)."""


class InputError(XraySegError):
    """An input file or node is missing, of the wrong kind, or does not match the CT."""
