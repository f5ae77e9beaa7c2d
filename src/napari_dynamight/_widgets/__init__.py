"""napari dock widgets: thin Qt views over the engine (all Qt, napari and magicgui code lives here).

Each widget runs engine generators in napari thread workers (``_tasks.py``) and touches layers only
from the workers' callbacks on the main thread. Nothing here computes: the engine does.
"""
