"""An atomic model as Gaussians and a bond graph: the atomic-model prior (method.md, "Consensus
Gaussian model", the alternative).

Coarse-graining (non-hydrogen atoms; every atom of a residue belongs to exactly one Gaussian, which
sits at the barycentre of its atoms, except where said otherwise, with an amplitude equal to the
summed atomic numbers of its atoms):

- amino acids: one main-chain Gaussian at the barycentre of N, C and O (its amplitude also counts
  OXT (CHARMM's OT1/OT2 are read as O/OXT), and CA where CA is not part of a side-chain Gaussian:
  for Gly and the five residues below);
  side-chain Gaussians by residue type:

  - Gly: none;
  - Ala, Ser, Cys, Val, Thr: one, placed at Cβ (its amplitude sums the whole side chain);
  - Pro: one for Cα–Cδ;
  - the others: one for the α/β/γ atoms (CA, CB, CG*, OG*, SG), one for the remaining side-chain
    atoms, and for Tyr and Trp two instead (Tyr: the ring's δ/ε carbons, then CZ and OH; Trp: the
    five-membered ring's δ/ε atoms CD1, CD2, NE1, CE2, then the six-membered ring's CE3, CZ2, CZ3,
    CH2).

  Gaussians per residue: Gly 1; Ala, Ser, Cys, Val, Thr, Pro 2; Tyr, Trp 4; every other type 3.
- nucleotides: four: phosphate (P, OP1, OP2, OP3, O5'), sugar (the other primed atoms), and two on
  the base (purines: the imidazole ring N9, C8, N7, C5, C4, then the six-membered ring with its
  exocyclic atoms; pyrimidines: N1, C2, O2, C6, then N3, C4, C5 with their exocyclic atoms). A
  nucleotide without phosphate (no P: a 5' end) has three, its O5' hydroxyl in the sugar's.
- Other residues (ligands, ions) and waters are left out; residue names of MD force fields (HSD,
  CYX, ...) and MSE are read as the standard residue.

Bonds (the graph of the prior): the main-chain Gaussians of consecutively numbered residues of a
chain (a gap in the numbering, i.e. missing residues, breaks the chain), each residue's side-chain
Gaussians in a chain starting at its main-chain Gaussian, and per nucleotide
phosphate–sugar–base–base plus the sugar to the next nucleotide's phosphate. Bonds follow the
sequence, not distances, so a model whose segment is misplaced keeps the bonds of the right model.

Positions in the map's box: Å from the box centre,
``file coordinates − map origin − (box//2)·voxel``, the frame in which a model fitted into the map
in ChimeraX or Coot sits. :func:`check_model_in_map` refuses a model that is off by a shift or
outside the box, with one line saying which.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import InputError
from .gaussians import GaussianModel, render_volume
from .io.mrc import read_map, read_map_origin
from .io.structure import read_structure
from .statistics import map_correlation

KINDS = ("main", "side", "phosphate", "sugar", "base")
MIN_MAP_CORRELATION = 0.3  # below this the model does not describe the map at all
SHIFT_GAIN = 0.05  # a shifted placement this much better than the given one means "off by a shift"

_ALIASES = {
    "HSD": "HIS",
    "HSE": "HIS",
    "HSP": "HIS",
    "HID": "HIS",
    "HIE": "HIS",
    "HIP": "HIS",
    "CYX": "CYS",
    "ASH": "ASP",
    "GLH": "GLU",
    "LYN": "LYS",
    "MSE": "MET",
    "A": "A",
    "G": "G",
    "C": "C",
    "U": "U",
    "DA": "A",
    "DG": "G",
    "DC": "C",
    "DT": "T",
    "DU": "U",
    "ADE": "A",
    "GUA": "G",
    "CYT": "C",
    "URA": "U",
    "THY": "T",
    "RA": "A",
    "RG": "G",
    "RC": "C",
    "RU": "U",
}
MAIN_CHAIN = ("N", "C", "O", "OXT")
MAIN_CHAIN_PLACE = ("N", "C", "O")
CB_ONLY = {"ALA", "SER", "CYS", "VAL", "THR"}
# side-chain groups after the main chain; an atom of the residue in no group joins the last group
SIDE_CHAIN_GROUPS: dict[str, tuple[tuple[str, ...], ...]] = {
    "GLY": (),
    "ALA": (("CB",),),
    "SER": (("CB", "OG"),),
    "CYS": (("CB", "SG"),),
    "VAL": (("CB", "CG1", "CG2"),),
    "THR": (("CB", "OG1", "CG2"),),
    "PRO": (("CA", "CB", "CG", "CD"),),
    "LEU": (("CA", "CB", "CG"), ("CD1", "CD2")),
    "ILE": (("CA", "CB", "CG1", "CG2"), ("CD1",)),
    "MET": (("CA", "CB", "CG"), ("SD", "SE", "CE")),
    "ASP": (("CA", "CB", "CG"), ("OD1", "OD2")),
    "ASN": (("CA", "CB", "CG"), ("OD1", "ND2")),
    "GLU": (("CA", "CB", "CG"), ("CD", "OE1", "OE2")),
    "GLN": (("CA", "CB", "CG"), ("CD", "OE1", "NE2")),
    "LYS": (("CA", "CB", "CG"), ("CD", "CE", "NZ")),
    "ARG": (("CA", "CB", "CG"), ("CD", "NE", "CZ", "NH1", "NH2")),
    "HIS": (("CA", "CB", "CG"), ("ND1", "CD2", "CE1", "NE2")),
    "PHE": (("CA", "CB", "CG"), ("CD1", "CD2", "CE1", "CE2", "CZ")),
    "TYR": (("CA", "CB", "CG"), ("CD1", "CD2", "CE1", "CE2"), ("CZ", "OH")),
    "TRP": (("CA", "CB", "CG"), ("CD1", "CD2", "NE1", "CE2"), ("CE3", "CZ2", "CZ3", "CH2")),
}
PHOSPHATE = ("P", "OP1", "OP2", "OP3", "O5'")
PURINE_BASE = (("N9", "C8", "N7", "C5", "C4"), ("N1", "C2", "N3", "C6", "O6", "N6", "N2"))
PYRIMIDINE_BASE = (("N1", "C2", "O2", "C6"), ("N3", "C4", "O4", "N4", "C5", "C7", "C5M"))
TAIL_KIND = {"protein": "main", "nucleic": "sugar"}  # bonded to the next residue's head
_OLD_NAMES = {"O1P": "OP1", "O2P": "OP2", "O3P": "OP3", "C5M": "C7", "OT1": "O", "OT2": "OXT"}


@dataclass(frozen=True)
class CoarseModel:
    """Gaussians of an atomic model in file coordinates, and its bonds.

    ``residue`` is each Gaussian's index into ``residues`` (chain, number, standard name);
    ``kind`` one of :data:`KINDS`; ``bonds`` (E, 2) index pairs i < j."""

    path: Path
    positions_angstrom: np.ndarray  # (n, 3) file coordinates
    amplitudes: np.ndarray  # (n,) summed atomic numbers
    kind: np.ndarray  # (n,) str
    residue: np.ndarray  # (n,) int
    residues: list[tuple[str, int, str]]
    bonds: np.ndarray  # (E, 2) int

    @property
    def n_gaussians(self) -> int:
        return len(self.amplitudes)

    def moved(self, positions_angstrom: np.ndarray) -> CoarseModel:
        """The same Gaussians and bonds at other positions."""
        return CoarseModel(
            self.path,
            np.asarray(positions_angstrom, dtype=np.float64),
            self.amplitudes,
            self.kind,
            self.residue,
            self.residues,
            self.bonds,
        )


def _standard_name(name: str) -> str:
    name = name.strip().upper()
    return _ALIASES.get(name, name)


def _atom_name(name: str) -> str:
    name = name.strip().upper().replace("*", "'")
    return _OLD_NAMES.get(name, name)


def _groups(residue: str, names: set[str]) -> tuple[str, list[tuple[str, ...]]] | None:
    """(kind of polymer, [(kind, atom names), ...]) of a standard residue, or None for other
    residues."""
    if residue in SIDE_CHAIN_GROUPS:
        side = list(SIDE_CHAIN_GROUPS[residue])
        main = MAIN_CHAIN + (("CA",) if residue == "GLY" or residue in CB_ONLY else ())
        groups = [("main", main)] + [("side", g) for g in side]
        return "protein", groups
    if residue in ("A", "G", "C", "U", "T"):
        base = PURINE_BASE if residue in ("A", "G") else PYRIMIDINE_BASE
        phosphate = "P" in names  # a 5' end without phosphate: its O5' is the sugar's hydroxyl
        sugar = tuple(sorted(n for n in names if n.endswith("'") and (n != "O5'" or not phosphate)))
        return "nucleic", [("phosphate", PHOSPHATE)] * phosphate + [
            ("sugar", sugar),
            ("base", base[0]),
            ("base", base[1]),
        ]
    return None


def coarse_grain(path: str | os.PathLike) -> CoarseModel:
    """The Gaussians and bonds of the first model of a PDB/mmCIF file (see the module docstring)."""
    atoms = read_structure(path, drop_waters=True, drop_hydrogens=True)
    positions, amplitudes, kinds, owners, residues, bonds = [], [], [], [], [], []
    keys = np.stack([atoms.chain_ids.astype(str), atoms.residue_numbers.astype(str)], axis=1)
    starts = np.r_[0, np.nonzero((keys[1:] != keys[:-1]).any(axis=1))[0] + 1, atoms.n_atoms]
    previous = None  # (chain, polymer, residue number, Gaussian index to bond to the next residue)
    for first, stop in zip(starts[:-1], starts[1:], strict=True):
        name = _standard_name(atoms.residue_names[first])
        chain = str(atoms.chain_ids[first])
        by_name = {}
        for k in range(first, stop):
            by_name.setdefault(_atom_name(atoms.atom_names[k]), k)
        found = _groups(name, set(by_name))
        if found is None:
            previous = None
            continue
        polymer, groups = found
        listed = {n for _, g in groups for n in g}
        extra = [n for n in by_name if n not in listed]
        index_of_group = []
        residue_index = len(residues)
        for number, (kind, group) in enumerate(groups):
            members = [by_name[n] for n in group if n in by_name]
            if number == len(groups) - 1:
                members += [by_name[n] for n in extra]  # unlisted atoms join the last group
            if not members:
                index_of_group.append(None)
                continue
            members = np.array(members)
            if kind == "main":
                place = [by_name[n] for n in MAIN_CHAIN_PLACE if n in by_name] or list(members)
            elif name in CB_ONLY and "CB" in by_name:
                place = [by_name["CB"]]
            else:
                place = list(members)
            positions.append(atoms.positions_angstrom[place].mean(axis=0))
            amplitudes.append(float(atoms.atomic_numbers[members].sum()))
            kinds.append(kind)
            owners.append(residue_index)
            index_of_group.append(len(positions) - 1)
        present = [i for i in index_of_group if i is not None]
        if not present:
            previous = None
            continue
        residues.append((chain, int(atoms.residue_numbers[first]), name))
        # within the residue: a chain of Gaussians (main chain first, or phosphate-sugar-base-base)
        bonds.extend(zip(present[:-1], present[1:], strict=True))
        number = int(atoms.residue_numbers[first])
        head = present[0]  # the main chain, or the phosphate (the sugar at a 5' end)
        if (
            previous is not None
            and previous[:3] == (chain, polymer, number - 1)
            and head is not None
        ):
            bonds.append((previous[3], head))
        tail = index_of_group[[kind for kind, _ in groups].index(TAIL_KIND[polymer])]
        previous = (chain, polymer, number, tail) if tail is not None else None
    if not positions:
        raise InputError(
            f"{path}: no amino acids or nucleotides found; give an atomic model of the molecule"
        )
    pairs = np.sort(np.array(bonds, dtype=np.int64).reshape(-1, 2), axis=1)
    return CoarseModel(
        Path(path),
        np.array(positions),
        np.array(amplitudes),
        np.array(kinds),
        np.array(owners, dtype=np.int64),
        residues,
        pairs,
    )


def model_sigma(voxel_size_angstrom: float) -> float:
    """The width σ (Å) of every Gaussian of an atomic model: a residue-sized blob (2 Å), and never
    under one voxel so that the rendered density is sampled."""
    return max(2.0, float(voxel_size_angstrom))


def box_positions(
    model: CoarseModel, box: int, voxel_size_angstrom: float, origin_angstrom=(0.0, 0.0, 0.0)
) -> np.ndarray:
    """Positions in Å from the box centre of a map with this box, voxel size and origin (x, y, z
    Å)."""
    return (
        model.positions_angstrom
        - np.asarray(origin_angstrom, dtype=np.float64)
        - (box // 2) * voxel_size_angstrom
    )


def gaussian_model(
    model: CoarseModel, box: int, voxel_size_angstrom: float, origin_angstrom=(0.0, 0.0, 0.0)
) -> GaussianModel:
    """The Gaussian model in the map's box (see :func:`box_positions`), one width for all."""
    positions = box_positions(model, box, voxel_size_angstrom, origin_angstrom)
    return GaussianModel(
        torch.as_tensor(positions, dtype=torch.float32),
        torch.as_tensor(model.amplitudes, dtype=torch.float32),
        torch.tensor(model_sigma(voxel_size_angstrom), dtype=torch.float32),
    )


@dataclass(frozen=True)
class MapFit:
    """How a model sits in a map: correlation where it is, and the best correlation over shifts."""

    correlation: float
    best_shift_angstrom: np.ndarray  # (3,) x y z: moving the model by this fits best
    best_correlation: float


def map_fit(model: GaussianModel, volume: np.ndarray, voxel_size_angstrom: float) -> MapFit:
    """Correlation of the model's rendered density with the map, and the shift (whole voxels, by FFT
    cross-correlation, periodic) that would maximise it."""
    box = volume.shape[0]
    rendered = render_volume(model.to(dtype=torch.float64), box, voxel_size_angstrom).numpy()
    here = map_correlation(rendered, volume)
    a, b = rendered - rendered.mean(), volume - volume.mean()
    cross = np.fft.irfftn(
        np.fft.rfftn(b) * np.conj(np.fft.rfftn(a)), s=volume.shape, axes=(0, 1, 2)
    )
    cross /= np.sqrt((a * a).sum() * (b * b).sum()) or 1.0
    peak = np.unravel_index(int(np.argmax(cross)), cross.shape)
    shift_zyx = np.array([(p + box // 2) % box - box // 2 for p in peak], dtype=np.float64)
    return MapFit(here, shift_zyx[::-1] * voxel_size_angstrom, float(cross[peak]))


def check_model_in_map(
    path, model: GaussianModel, volume: np.ndarray, voxel_size_angstrom: float, map_path=None
) -> MapFit:
    """Refuse (one-line InputError) an atomic model that lies outside the map's box, is off by a
    shift, or does not describe the map; return the fit otherwise."""
    box = volume.shape[0]
    half = box // 2 * voxel_size_angstrom
    positions = model.positions_angstrom.detach().cpu().numpy()
    where = f" of {map_path}" if map_path is not None else ""
    outside = np.abs(positions).max(axis=1) > half
    if outside.mean() > 0.05:
        centre = positions.mean(axis=0)
        raise InputError(
            f"{path}: {100 * outside.mean():.0f}% of the model lies outside the box{where} (its "
            f"centre is {np.linalg.norm(centre):.0f} Å from the box centre); is it in another "
            "map's frame? Fit it into this map first (e.g. ChimeraX fitmap)"
        )
    fit = map_fit(model, volume, voxel_size_angstrom)
    shift = np.linalg.norm(fit.best_shift_angstrom)
    if (
        shift > max(3.0, 2 * voxel_size_angstrom)
        and fit.best_correlation - fit.correlation > SHIFT_GAIN
    ):
        x, y, z = fit.best_shift_angstrom
        raise InputError(
            f"{path}: the model is off by a shift: it correlates {fit.correlation:.2f} with the "
            f"map{where}, {fit.best_correlation:.2f} when moved by ({x:.1f}, {y:.1f}, {z:.1f}) Å; "
            "fit it into this map first (e.g. ChimeraX fitmap)"
        )
    if fit.correlation < MIN_MAP_CORRELATION:
        raise InputError(
            f"{path}: the model's density correlates only {fit.correlation:.2f} with the "
            f"map{where} (at least {MIN_MAP_CORRELATION} needed); give a model built into this map"
        )
    return fit


def atomic_prior_model(
    path, consensus_path, volume: np.ndarray | None = None, voxel_size_angstrom: float | None = None
) -> tuple[GaussianModel, torch.Tensor, MapFit]:
    """The atomic model at ``path`` as Gaussians in the consensus map's box, its bonds (E, 2) and
    how it fits the map; InputError if it does not sit in the map (:func:`check_model_in_map`)."""
    if volume is None or voxel_size_angstrom is None:
        volume, voxel_size_angstrom = read_map(consensus_path)
    coarse = coarse_grain(path)
    model = gaussian_model(
        coarse, volume.shape[0], voxel_size_angstrom, read_map_origin(consensus_path)
    )
    fit = check_model_in_map(path, model, volume, voxel_size_angstrom, consensus_path)
    return model, torch.as_tensor(coarse.bonds, dtype=torch.long), fit


def model_bias_reminder(run) -> str:
    """The line a run made with the atomic-model prior reports until its model-bias control
    exists."""
    return (
        f"maps of {run} are made with the atomic-model prior, which can copy the model's errors "
        f"into them; run the model-bias control: napari-dynamight model-bias {run}"
    )


# --- models moved or deliberately wrong, written as structure files -------------------------------


@dataclass(frozen=True)
class Region:
    """Residues ``first``..``last`` (inclusive, residue numbers) of ``chain``."""

    chain: str | None  # None: any chain
    first: int
    last: int

    def __str__(self) -> str:
        return (
            f"{self.first}-{self.last}"
            if self.chain is None
            else f"{self.chain or '_'}:{self.first}-{self.last}"
        )

    @classmethod
    def parse(cls, text: str) -> Region:
        """``CHAIN:FIRST-LAST`` or ``FIRST-LAST`` (any chain; ``_`` is a blank chain name)."""
        chain, colon, span = text.rpartition(":")
        try:
            first, last = (int(v) for v in span.split("-", 1))
        except ValueError:
            raise InputError(f"--residues {text!r}: give CHAIN:FIRST-LAST, e.g. A:10-22") from None
        if last < first:
            raise InputError(f"--residues {text!r}: the last residue comes before the first")
        return cls(None if not colon else "" if chain == "_" else chain, first, last)

    def contains(self, chain: str, number: int) -> bool:
        return (self.chain is None or chain == self.chain) and self.first <= number <= self.last


def _elements_fixed(path) -> tuple:
    """gemmi's structure of ``path`` with every kept atom's element set as :func:`read_structure`
    reads it (MD files without element columns would otherwise be written with gemmi's guesses)."""
    import gemmi

    atoms = read_structure(path, drop_waters=False, drop_hydrogens=False)
    structure = gemmi.read_structure(str(path))
    structure.setup_entities()
    number_of = dict(zip(atoms.atom_indices.tolist(), atoms.atomic_numbers.tolist(), strict=True))
    index = -1
    for chain in structure[0]:
        for residue in chain:
            for atom in residue:
                index += 1
                if index in number_of:
                    atom.element = gemmi.Element(int(number_of[index]))
    return structure


def write_moved_structure(
    path, output, shift_angstrom, region: Region | None = None, rotation: np.ndarray | None = None
) -> Path:
    """A copy of a structure with every atom (or the atoms of ``region``) moved by
    ``shift_angstrom`` (x, y, z Å; after ``rotation``, a 3×3 matrix about the file's origin, if
    given), written as PDB: fitting a model into a map by a rigid motion, or a deliberately wrong
    model."""
    import gemmi

    structure = _elements_fixed(path)
    shift = np.asarray(shift_angstrom, dtype=np.float64)
    matrix = np.eye(3) if rotation is None else np.asarray(rotation, dtype=np.float64)
    moved = 0
    for chain in structure[0]:
        for residue in chain:
            if region is None or region.contains(chain.name, residue.seqid.num):
                for atom in residue:
                    atom.pos = gemmi.Position(*(matrix @ np.array(atom.pos.tolist()) + shift))
                    moved += 1
    if moved == 0:
        raise InputError(
            f"{path}: no residue in {region}; give residues of the model (CHAIN:FIRST-LAST)"
        )
    output = Path(output)
    structure.write_pdb(str(output))
    return output


def kabsch(source: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotation R and translation t with ``R @ source + t ≈ target`` (least squares, rows are
    points)."""
    a, b = source.mean(0), target.mean(0)
    u, _, vt = np.linalg.svd((source - a).T @ (target - b))
    d = np.sign(np.linalg.det(vt.T @ u.T))
    rotation = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    return rotation, b - rotation @ a


def write_register_shifted_structure(path, output, region: Region) -> Path:
    """A copy with the side chains of ``region`` threaded one residue on: each residue's side chain
    is moved by the rigid motion that takes its N, CA, C onto the next residue's (a register error
    of one). The main chain stays; the residue after ``region`` must exist."""
    import gemmi

    structure = _elements_fixed(path)
    backbone = ("N", "CA", "C")
    for chain in structure[0]:
        if region.chain is not None and chain.name != region.chain:
            continue
        residues = list(chain)
        moves = []
        for k, residue in enumerate(residues[:-1]):
            if not region.contains(chain.name, residue.seqid.num):
                continue
            following = residues[k + 1]
            try:
                source = np.array([residue[n][0].pos.tolist() for n in backbone])
                target = np.array([following[n][0].pos.tolist() for n in backbone])
            except (IndexError, RuntimeError, ValueError):
                raise InputError(
                    f"{path}: residue {residue.seqid.num} or the next lacks N, CA or C; choose "
                    "another region for the register shift"
                ) from None
            moves.append((residue, *kabsch(source, target)))
        for (
            residue,
            rotation,
            translation,
        ) in moves:  # all transforms from the original positions first
            for atom in residue:
                if atom.name.strip() not in ("N", "CA", "C", "O", "OXT") and not atom.is_hydrogen():
                    atom.pos = gemmi.Position(
                        *(rotation @ np.array(atom.pos.tolist()) + translation)
                    )
        if moves:
            output = Path(output)
            structure.write_pdb(str(output))
            return output
    raise InputError(
        f"{path}: no residue in {region} with a following residue; give residues of the model "
        "(CHAIN:FIRST-LAST)"
    )
