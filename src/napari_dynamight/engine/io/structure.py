"""Read an atomic structure (PDB or mmCIF, via gemmi) as atom positions and atomic numbers.

Only the first model is used; of alternative conformations only the first (altloc blank or 'A') is
kept. ``atom_indices`` tells which atoms of the file were kept, so that a trajectory written for the
whole file (same atom order) can be reduced to the same atoms.

Files written by MD programs (CHARMM, NAMD) often have no element columns and left-justified atom
names ("CA" of an amino acid would be read as calcium). When a PDB file has no element columns,
atoms of standard residues (amino acids, nucleotides, water) get the element of the first letter of
their name; other atoms keep gemmi's guess, and an atom whose element stays unknown is an error.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import gemmi
import numpy as np

from ..errors import InputError


@dataclass(frozen=True)
class AtomicStructure:
    """Atoms of one model; arrays have one row per kept atom, in file order."""

    path: Path
    positions_angstrom: np.ndarray  # (n, 3) float64, x y z in Å (file coordinates)
    atomic_numbers: np.ndarray  # (n,) int64
    atom_names: np.ndarray  # (n,) str
    residue_names: np.ndarray  # (n,) str
    residue_numbers: np.ndarray  # (n,) int64
    chain_ids: np.ndarray  # (n,) str
    atom_indices: np.ndarray  # (n,) index of each kept atom among all atoms of the file's model
    n_atoms_in_file: int

    @property
    def n_atoms(self) -> int:
        return len(self.atomic_numbers)

    def select(self, mask: np.ndarray) -> AtomicStructure:
        """The atoms where ``mask`` (bool or index array) selects."""
        return AtomicStructure(
            self.path,
            self.positions_angstrom[mask],
            self.atomic_numbers[mask],
            self.atom_names[mask],
            self.residue_names[mask],
            self.residue_numbers[mask],
            self.chain_ids[mask],
            self.atom_indices[mask],
            self.n_atoms_in_file,
        )


def _pdb_has_element_columns(path: Path) -> bool:
    """True if any ATOM/HETATM record of a PDB file fills the element columns 77-78."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", errors="replace") as handle:
        for line in handle:
            if line.startswith(("ATOM  ", "HETATM")) and line[76:78].strip():
                return True
    return False


# residue names of MD force fields (CHARMM, Amber) that gemmi's table does not know
_MD_RESIDUES = {
    "HSD",
    "HSE",
    "HSP",
    "HID",
    "HIE",
    "HIP",
    "CYX",
    "ASH",
    "GLH",
    "LYN",
    "TIP3",
    "TIP4",
    "SOL",
    "WAT",
    "SPC",
}


def _is_standard_residue(name: str) -> bool:
    if name in _MD_RESIDUES:
        return True
    info = gemmi.find_tabulated_residue(name)
    return info is not None and (info.is_amino_acid() or info.is_nucleic_acid() or info.is_water())


def _element_from_name(atom_name: str) -> int:
    letters = atom_name.lstrip("0123456789'\"")
    return gemmi.Element(letters[:1]).atomic_number if letters else 0


def _is_water(residue: gemmi.Residue) -> bool:
    return residue.is_water() or residue.name in {"TIP3", "TIP4", "SOL", "SPC"}


def read_structure(
    path: str | os.PathLike,
    drop_waters: bool = True,
    drop_hydrogens: bool = False,
) -> AtomicStructure:
    """Atoms of the first model of a PDB/mmCIF file (plain or .gz), optionally without waters/H."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: structure file not found; give an existing PDB or mmCIF file")
    try:
        structure = gemmi.read_structure(str(path))
    except (RuntimeError, ValueError, OSError) as error:
        raise InputError(
            f"{path}: cannot read as PDB/mmCIF ({error}); give a valid structure file"
        ) from None
    if len(structure) == 0 or structure[0].count_atom_sites() == 0:
        raise InputError(f"{path}: no atoms found; give a PDB/mmCIF file with ATOM/HETATM records")
    infer_from_name = (
        structure.input_format == gemmi.CoorFormat.Pdb and not _pdb_has_element_columns(path)
    )

    rows = []
    index = -1
    for chain in structure[0]:
        for residue in chain:
            standard = _is_standard_residue(residue.name)
            water = _is_water(residue)
            for atom in residue:
                index += 1
                if atom.altloc not in ("\0", "A"):
                    continue
                number = atom.element.atomic_number
                if infer_from_name and standard:
                    number = _element_from_name(atom.name)
                if number == 0:
                    raise InputError(
                        f"{path}: unknown element of atom {atom.name} in residue {residue.name} "
                        f"{residue.seqid.num}; add element symbols (PDB columns 77-78)"
                    )
                if (drop_waters and water) or (drop_hydrogens and number == 1):
                    continue
                rows.append(
                    (
                        atom.pos.x,
                        atom.pos.y,
                        atom.pos.z,
                        number,
                        atom.name,
                        residue.name,
                        residue.seqid.num,
                        chain.name,
                        index,
                    )
                )
    if not rows:
        raise InputError(f"{path}: no atoms left after removing waters/hydrogens; check the file")
    columns = list(zip(*rows, strict=True))
    return AtomicStructure(
        path=path,
        positions_angstrom=np.array(columns[:3], dtype=np.float64).T.copy(),
        atomic_numbers=np.array(columns[3], dtype=np.int64),
        atom_names=np.array(columns[4], dtype=str),
        residue_names=np.array(columns[5], dtype=str),
        residue_numbers=np.array(columns[6], dtype=np.int64),
        chain_ids=np.array(columns[7], dtype=str),
        atom_indices=np.array(columns[8], dtype=np.int64),
        n_atoms_in_file=index + 1,
    )
