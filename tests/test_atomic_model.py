"""The atomic-model prior's coarse-graining, bonds and map-fit check, against counts made by hand
and numbers read independently from the PDB text."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_dynamight.engine.atomic_model import (
    box_positions,
    check_model_in_map,
    coarse_grain,
    gaussian_model,
)
from napari_dynamight.engine.errors import InputError
from napari_dynamight.engine.example_data import example_file
from napari_dynamight.engine.gaussians import GaussianModel, render_volume

ADK = example_file("adk_closed.pdb")
NUCLEIC = Path(__file__).parent / "data" / "nucleic" / "two_nucleotides.pdb"
Z = {"C": 6, "N": 7, "O": 8, "S": 16, "P": 15}
# Gaussians per residue, counted by hand from the rules (main chain + side chain)
PER_RESIDUE = {
    "GLY": 1,
    "ALA": 2,
    "SER": 2,
    "CYS": 2,
    "VAL": 2,
    "THR": 2,
    "PRO": 2,
    "TYR": 4,
    "TRP": 4,
}


def _pdb_atoms(path):
    """(residue number, residue name, atom name, x, y, z) of the heavy atoms, read from the PDB text."""
    rows = []
    for line in Path(path).read_text().splitlines():
        if line.startswith("ATOM"):
            name = line[12:16].strip()
            if not name.startswith("H"):
                rows.append(
                    (
                        int(line[22:26]),
                        line[17:21].strip(),
                        name,
                        float(line[30:38]),
                        float(line[38:46]),
                        float(line[46:54]),
                    )
                )
    return rows


def test_adk_gaussians_per_residue_type_and_amplitudes():
    model = coarse_grain(ADK)
    atoms = _pdb_atoms(ADK)
    names = {number: residue for number, residue, *_ in atoms}
    counts = Counter(names.values())
    assert counts["GLY"] == 20 and counts["TYR"] == 7 and sum(counts.values()) == 214
    expected = sum(n * PER_RESIDUE.get(name.replace("HSD", "HIS"), 3) for name, n in counts.items())
    assert model.n_gaussians == expected == 544
    per_residue = Counter(model.residue.tolist())
    for index, (_, number, name) in enumerate(model.residues):
        assert per_residue[index] == PER_RESIDUE.get(name, 3), (number, name)
    # amplitudes: each residue's Gaussians sum its heavy atoms' atomic numbers
    mass = Counter()
    for number, _, atom, *_ in atoms:
        mass[number] += Z[atom[0]]
    sums = np.bincount(model.residue, weights=model.amplitudes)
    assert np.array_equal(sums, [mass[number] for _, number, _ in model.residues])
    # Met 1 by hand: main chain N C O = 21, CA CB CG = 18, SD CE = 22; the main chain at mean(N, C, O)
    assert model.amplitudes[:3].tolist() == [21, 18, 22]
    first = {atom: np.array(xyz) for number, _, atom, *xyz in atoms if number == 1}
    assert np.allclose(model.positions_angstrom[0], (first["N"] + first["C"] + first["O"]) / 3)
    assert np.allclose(model.positions_angstrom[1], (first["CA"] + first["CB"] + first["CG"]) / 3)
    # a Tyr: 21 | CA CB CG 18 | CD1 CD2 CE1 CE2 24 | CZ OH 14; a Val: main with CA 27 | CB CG1 CG2 at CB 18
    tyr = [i for i, r in enumerate(model.residues) if r[2] == "TYR"][0]
    assert model.amplitudes[model.residue == tyr].tolist() == [21, 18, 24, 14]
    val = [i for i, r in enumerate(model.residues) if r[2] == "VAL"][0]
    assert model.amplitudes[model.residue == val].tolist() == [27, 18]
    cb = [
        xyz for number, _, atom, *xyz in atoms if number == model.residues[val][1] and atom == "CB"
    ][0]
    assert np.allclose(model.positions_angstrom[model.residue == val][1], cb)
    # the C-terminal Gly: N C O OXT (CHARMM's OT1/OT2) and CA
    assert model.amplitudes[-1] == 35 and model.kind[-1] == "main"


def test_adk_bonds_follow_the_chain_and_side_chains():
    model = coarse_grain(ADK)
    main = np.nonzero(model.kind == "main")[0]
    bonds = {tuple(b) for b in model.bonds.tolist()}
    assert len(bonds) == len(model.bonds) == (214 - 1) + (544 - 214)
    assert all((int(a), int(b)) in bonds for a, b in zip(main[:-1], main[1:], strict=True))
    for side in np.nonzero(model.kind == "side")[
        0
    ]:  # each bonded to its predecessor in the residue
        assert (int(side) - 1, int(side)) in bonds and model.residue[side - 1] == model.residue[
            side
        ]
    lengths = np.linalg.norm(
        model.positions_angstrom[model.bonds[:, 0]] - model.positions_angstrom[model.bonds[:, 1]],
        axis=1,
    )
    assert lengths.max() < 6.0  # no bond across the fold


def test_nucleotides_four_gaussians_each():
    model = coarse_grain(NUCLEIC)
    assert model.kind.tolist() == ["phosphate", "sugar", "base", "base"] * 2
    # by hand: P OP1 OP2 O5' 39; five C and three O of the sugar 54; G's imidazole N9 C8 N7 C5 C4 32 and
    # N1 C2 N3 C6 O6 N2 41; U's N1 C2 O2 C6 27 and N3 C4 O4 C5 27
    assert model.amplitudes.tolist() == [39, 54, 32, 41, 39, 54, 27, 27]
    assert sorted(map(tuple, model.bonds.tolist())) == [
        (0, 1),
        (1, 2),
        (1, 4),
        (2, 3),
        (4, 5),
        (5, 6),
        (6, 7),
    ]
    atoms = _pdb_atoms(NUCLEIC)
    imidazole = np.array(
        [xyz for n, _, a, *xyz in atoms if n == 1 and a in ("N9", "C8", "N7", "C5", "C4")]
    )
    assert np.allclose(model.positions_angstrom[2], imidazole.mean(0))


def _adk_map(box=64, voxel=1.5):
    """A map of the AdK atoms (every heavy atom a Gaussian) centred in the box, and the origin (Å) that
    puts the PDB's coordinates into it."""
    atoms = _pdb_atoms(ADK)
    xyz = np.array([a[3:] for a in atoms])
    centre = xyz.mean(0)
    weights = torch.tensor([float(Z[a[2][0]]) for a in atoms])
    volume = render_volume(
        GaussianModel(
            torch.as_tensor(xyz - centre, dtype=torch.float32), weights, torch.tensor(1.5)
        ),
        box,
        voxel,
    ).numpy()
    return volume, centre - box // 2 * voxel


def test_model_in_map_is_accepted_shifted_or_foreign_models_are_refused():
    volume, origin = _adk_map()
    coarse = coarse_grain(ADK)
    fit = check_model_in_map(ADK, gaussian_model(coarse, 64, 1.5, origin), volume, 1.5)
    assert fit.correlation > 0.8 and np.linalg.norm(fit.best_shift_angstrom) < 2.0
    assert np.allclose(
        box_positions(coarse, 64, 1.5, origin).mean(0),
        coarse.positions_angstrom.mean(0) - _pdb_atoms_centre(),
        atol=1e-9,
    )
    with pytest.raises(InputError, match=r"off by a shift.*moved by \(9\.0, 0\.0, -6\.0\) Å"):
        check_model_in_map(
            ADK, gaussian_model(coarse, 64, 1.5, origin + [9.0, 0.0, -6.0]), volume, 1.5
        )
    with pytest.raises(InputError, match="outside the box.*another map's frame"):
        check_model_in_map(ADK, gaussian_model(coarse, 64, 1.5, origin - 100.0), volume, 1.5)
    with pytest.raises(InputError, match="correlates only"):
        check_model_in_map(
            ADK,
            gaussian_model(coarse, 64, 1.5, origin),
            np.random.default_rng(0).normal(size=volume.shape),
            1.5,
        )


def _pdb_atoms_centre():
    return np.array([a[3:] for a in _pdb_atoms(ADK)]).mean(0)
