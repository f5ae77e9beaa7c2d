"""napari-dynamight: continuous molecular motions from cryo-EM images (DynaMight).

Kept import-light on purpose: napari loads plugin modules lazily, and torch or Qt
must not be imported just because the package is.
"""

__version__ = "0.1.0"
