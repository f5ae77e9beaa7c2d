"""The closed AdK structure placed in the tiny simulated set's map, for the atomic-prior tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_dynamight.engine.atomic_model import kabsch, write_moved_structure
from napari_dynamight.engine.example_data import example_file
from napari_dynamight.engine.io.dcd import read_dcd, read_dcd_info
from napari_dynamight.engine.io.structure import read_structure


def closed_model_in_tiny_set(folder: Path, box: int = 32, pixel: float = 2.5) -> Path:
    """``folder/fitted.pdb``: the closed structure superposed on the trajectory's first frame, its
    centre where the simulator puts the molecule's (the box centre)."""
    pdb, dcd = example_file("adk_closed.pdb"), example_file("adk_dims.dcd")
    atoms = read_structure(pdb, drop_hydrogens=True)
    first = read_dcd(dcd, read_dcd_info(dcd).n_atoms, np.array([0]))[0, atoms.atom_indices]
    rotation, translation = kabsch(atoms.positions_angstrom, first.astype(np.float64))
    centre = np.average(first, axis=0, weights=atoms.atomic_numbers)
    return write_moved_structure(
        pdb, folder / "fitted.pdb", translation - centre + box // 2 * pixel, rotation=rotation
    )
