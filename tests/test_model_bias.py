"""The model-bias control: its wrong models, its measure (a map that reproduces a wrong model scores
higher than one that shows the right model), its region choice and its refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_dynamight.cli import main
from napari_dynamight.engine.atomic_model import (
    Region,
    coarse_grain,
    write_moved_structure,
    write_register_shifted_structure,
)
from napari_dynamight.engine.errors import InputError
from napari_dynamight.engine.example_data import example_file
from napari_dynamight.engine.gaussians import GaussianModel, render_volume
from napari_dynamight.engine.io.structure import read_structure
from napari_dynamight.engine.model_bias import automatic_region, outward_direction, region_placement

ADK = example_file("adk_closed.pdb")
BOX, VOXEL = 48, 2.0


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The AdK model centred in a box-48 map at 2 Å, and a wrong copy with residues 100-111 moved
    5 Å outwards."""
    folder = tmp_path_factory.mktemp("bias")
    atoms = read_structure(ADK, drop_hydrogens=True)
    centre = np.average(atoms.positions_angstrom, axis=0, weights=atoms.atomic_numbers)
    right_path = write_moved_structure(ADK, folder / "right.pdb", BOX // 2 * VOXEL - centre)
    right = coarse_grain(right_path)
    region = Region(None, 100, 111)
    shift = 5.0 * outward_direction(right, region)
    wrong = coarse_grain(write_moved_structure(right_path, folder / "wrong.pdb", shift, region))
    return atoms, centre, right, wrong, shift


def _atom_map(atoms, centre, moved=None, shift=(0.0, 0.0, 0.0), noise=0.0, seed=0):
    """A map of every heavy atom (the data), with the atoms of residues ``moved`` shifted, plus
    noise."""
    xyz = atoms.positions_angstrom - centre
    if moved is not None:
        inside = (atoms.residue_numbers >= moved[0]) & (atoms.residue_numbers <= moved[1])
        xyz = xyz + np.where(inside[:, None], np.asarray(shift), 0.0)
    model = GaussianModel(
        torch.as_tensor(xyz),
        torch.as_tensor(atoms.atomic_numbers, dtype=torch.float64),
        torch.tensor(1.5, dtype=torch.float64),
    )
    volume = render_volume(model, BOX, VOXEL).numpy()
    return volume + noise * volume.std() * np.random.default_rng(seed).normal(size=volume.shape)


def test_wrong_models_change_only_their_region(models, tmp_path):
    _, _, right, wrong, shift = models
    moved = np.linalg.norm(wrong.positions_angstrom - right.positions_angstrom, axis=1) > 1e-6
    residues = {right.residues[r][1] for r in right.residue[moved]}
    assert residues == set(range(100, 112))
    assert np.allclose(
        wrong.positions_angstrom[moved] - right.positions_angstrom[moved], shift, atol=2e-3
    )  # PDB: 3 decimals
    assert np.array_equal(wrong.amplitudes, right.amplitudes) and np.array_equal(
        wrong.bonds, right.bonds
    )
    # register shift: main chains stay, each side chain of 100-104 moves onto the next residue's
    # backbone
    register = coarse_grain(
        write_register_shifted_structure(ADK, tmp_path / "register.pdb", Region(None, 100, 104))
    )
    original = coarse_grain(ADK)
    changed = (
        np.linalg.norm(register.positions_angstrom - original.positions_angstrom, axis=1) > 1e-3
    )
    assert not changed[original.kind == "main"].any()
    assert {original.residues[r][1] for r in original.residue[changed]} <= set(range(100, 105))
    assert changed.sum() >= 5
    # each Cβ (rigid on N, CA, C) lands on the next residue's Cβ
    before, after = read_structure(ADK), read_structure(tmp_path / "register.pdb")

    def cb(atoms, number):
        found = atoms.positions_angstrom[
            (atoms.residue_numbers == number) & (atoms.atom_names == "CB")
        ]
        return found[0] if len(found) else None

    pairs = [(cb(after, k), cb(before, k + 1)) for k in range(100, 105)]
    pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
    assert len(pairs) >= 3 and all(np.linalg.norm(a - b) < 0.5 for a, b in pairs)


def test_a_map_that_reproduces_the_wrong_model_scores_higher(models):
    atoms, centre, right, wrong, shift = models
    data = _atom_map(atoms, centre, noise=0.5)  # the molecule as it is
    biased = _atom_map(
        atoms, centre, moved=(100, 111), shift=shift, noise=0.5, seed=1
    )  # the wrong feature
    half_way = _atom_map(atoms, centre, moved=(100, 111), shift=0.5 * shift, noise=0.5, seed=2)
    t_right = region_placement(data, VOXEL, right, wrong).t
    t_wrong = region_placement(biased, VOXEL, right, wrong).t
    t_half = region_placement(half_way, VOXEL, right, wrong).t
    assert abs(t_right) <= 0.15 and abs(t_wrong - 1.0) <= 0.15 and abs(t_half - 0.5) <= 0.15
    placement = region_placement(biased, VOXEL, right, wrong)
    assert placement.correlation_wrong > placement.correlation_right


def test_automatic_region_is_central_and_regions_parse():
    model = coarse_grain(ADK)
    region = automatic_region(model)
    assert region.last - region.first == 11
    inside = np.array([region.contains(*model.residues[r][:2]) for r in model.residue])
    centre = np.average(model.positions_angstrom, axis=0, weights=model.amplitudes)
    distance = np.linalg.norm(model.positions_angstrom - centre, axis=1)
    assert distance[inside].mean() < 0.6 * distance.mean()
    assert Region.parse("A:10-22") == Region("A", 10, 22) and Region.parse("_:3-4") == Region(
        "", 3, 4
    )
    assert Region.parse("5-9") == Region(None, 5, 9)
    for bad in ("A:10", "A:x-3", "A:9-3"):
        with pytest.raises(InputError, match="--residues"):
            Region.parse(bad)


def test_command_refuses_a_run_without_the_prior(finished_run, capsys):
    assert main(["model-bias", str(finished_run), "--shift", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--shift 0: must be in (0, 50]" in err[0]
    assert main(["model-bias", str(finished_run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "without --atomic-model" in err[0]
    assert not (finished_run / "model_bias.json").exists()
    info = json.loads((finished_run / "run.json").read_text())
    assert info["settings"]["atomic_model"] is None
