"""The atomic-model prior's coarse-graining, bonds and map-fit check, against counts made by hand
and numbers read independently from the PDB text."""

from __future__ import annotations

import gzip
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
DNA = Path(__file__).parent / "data" / "nucleic" / "1pfe.cif.gz"  # real: PDB 1PFE, data/SOURCES.md
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
    """(residue number, residue name, atom name, x, y, z) of the heavy atoms, read from the PDB
    text."""
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
    # Met 1 by hand: main chain N C O = 21, CA CB CG = 18, SD CE = 22; the main chain at
    # mean(N, C, O)
    assert model.amplitudes[:3].tolist() == [21, 18, 22]
    first = {atom: np.array(xyz) for number, _, atom, *xyz in atoms if number == 1}
    assert np.allclose(model.positions_angstrom[0], (first["N"] + first["C"] + first["O"]) / 3)
    assert np.allclose(model.positions_angstrom[1], (first["CA"] + first["CB"] + first["CG"]) / 3)
    # a Tyr: 21 | CA CB CG 18 | CD1 CD2 CE1 CE2 24 | CZ OH 14; a Val: main with CA 27 | CB CG1 CG2
    # at CB 18
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
    # by hand: P OP1 OP2 O5' 39; five C and three O of the sugar 54; G's imidazole N9 C8 N7 C5 C4 32
    # and N1 C2 N3 C6 O6 N2 41; U's N1 C2 O2 C6 27 and N3 C4 O4 C5 27
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


def _cif_atoms(path):
    """(chain, residue number, residue name, atom name, Z, x, y, z) of the first conformer's heavy
    atoms (alternate location '.' or 'A'), read from the mmCIF text of the atom_site loop."""
    columns, rows = [], []
    with gzip.open(path, "rt") as file:
        text = file.read()
    for line in text.splitlines():
        if line.startswith("_atom_site."):
            columns.append(line.split()[0][len("_atom_site.") :])
        elif line.startswith(("ATOM", "HETATM")):
            row = dict(zip(columns, (v.strip('"') for v in line.split()), strict=True))
            if row["label_alt_id"] in (".", "A") and row["type_symbol"] != "H":
                rows.append(
                    (
                        row["auth_asym_id"],
                        int(row["auth_seq_id"]),
                        row["auth_comp_id"],
                        row["auth_atom_id"],
                        {"CL": 17}.get(row["type_symbol"], Z.get(row["type_symbol"], 0)),
                        *(float(row[f"Cartn_{a}"]) for a in "xyz"),
                    )
                )
    return rows


def test_real_dna_nucleotides_by_hand():
    """PDB 1PFE (X-ray, 1.1 Å): the DNA strand GCGTACGC (chain A, alternate conformers in C2) with
    echinomycin (chain B: two Ala and four non-standard residues), quinoxalines, waters and a Cl."""
    model = coarse_grain(DNA)
    dna = [r for r in model.residues if r[0] == "A"]
    assert [r[2] for r in dna] == list("GCGTACGC") and [r[1] for r in dna] == list(range(1, 9))
    # only the two alanines of the depsipeptide are standard residues; ligands and waters are out
    assert [r for r in model.residues if r[0] != "A"] == [("B", 2, "ALA"), ("B", 6, "ALA")]
    # by hand: the 5' G has no phosphate (sugar with its O5' hydroxyl: five C, three O = 54); then
    # phosphate P OP1 OP2 O5' 39, deoxyribose five C and two O 46, and the bases: G N9 C8 N7 C5 C4
    # 32 and N1 C2 N3 C6 O6 N2 41; A 32 and N1 C2 N3 C6 N6 33; C N1 C2 O2 C6 27 and N3 C4 N4 C5 26;
    # T 27 and N3 C4 O4 C5 C7 33
    bases = {"G": [32, 41], "A": [32, 33], "C": [27, 26], "T": [27, 33]}
    expected = [54] + bases["G"]
    for letter in "CGTACGC":
        expected += [39, 46] + bases[letter]
    n_dna = len(expected)
    assert n_dna == 31 and model.amplitudes[:n_dna].tolist() == expected
    assert (
        model.kind[:n_dna].tolist()
        == ["sugar", "base", "base"]
        + [
            "phosphate",
            "sugar",
            "base",
            "base",
        ]
        * 7
    )
    assert model.amplitudes[n_dna:].tolist() == [27, 6, 27, 6]  # Ala: N C O CA, and CB
    # every heavy atom of a nucleotide in exactly one Gaussian: the text's atomic numbers per
    # residue
    atoms = _cif_atoms(DNA)
    for index, (chain, number, _) in enumerate(model.residues):
        total = sum(a[4] for a in atoms if a[0] == chain and a[1] == number)
        assert model.amplitudes[model.residue == index].sum() == total, (chain, number)
    # positions from the text: C2's sugar (its C4' and C5' in conformer A), G1's sugar with O5'
    sugar2 = [a[5:] for a in atoms if a[:2] == ("A", 2) and a[3].endswith("'") and a[3] != "O5'"]
    assert len(sugar2) == 7 and np.allclose(model.positions_angstrom[4], np.mean(sugar2, 0))
    sugar1 = [a[5:] for a in atoms if a[:2] == ("A", 1) and a[3].endswith("'")]
    assert len(sugar1) == 8 and np.allclose(model.positions_angstrom[0], np.mean(sugar1, 0))
    # bonds: sugar-base-base of G1, then per nucleotide phosphate-sugar-base-base and the previous
    # sugar to its phosphate; Ala main-side; nothing between the chains
    bonds = {(0, 1), (1, 2)}
    sugar = 0
    for first in range(3, n_dna, 4):
        bonds |= {(sugar, first), (first, first + 1), (first + 1, first + 2)}
        bonds |= {(first + 2, first + 3)}
        sugar = first + 1
    bonds |= {(n_dna, n_dna + 1), (n_dna + 2, n_dna + 3)}
    assert set(map(tuple, model.bonds.tolist())) == bonds and len(model.bonds) == len(bonds)
    dna_bonds = model.bonds[(model.bonds < n_dna).all(axis=1)]
    lengths = np.linalg.norm(np.diff(model.positions_angstrom[dna_bonds], axis=1)[:, 0], axis=1)
    assert lengths.min() > 2.0 and lengths.max() < 6.5  # a real geometry: bonded neighbours


def _adk_map(box=64, voxel=1.5):
    """A map of the AdK atoms (every heavy atom a Gaussian) centred in the box, and the origin (Å)
    that puts the PDB's coordinates into it."""
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
