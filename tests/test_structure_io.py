"""Atomic structures (gemmi) and DCD trajectories: real AdK files, exact synthetic round trips."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import gemmi
import numpy as np
import pytest

from napari_dynamight.engine.errors import InputError
from napari_dynamight.engine.example_data import STRUCTURE, example_file
from napari_dynamight.engine.io.dcd import read_dcd, read_dcd_info
from napari_dynamight.engine.io.structure import read_structure

ADK = example_file(STRUCTURE).parent  # the example files bundled with the package
CLOSED, OPEN, DCD = ADK / "adk_closed.pdb", ADK / "adk_open.pdb", ADK / "adk_dims.dcd"


def superposed_rmsd(a: np.ndarray, b: np.ndarray) -> float:
    """RMSD (Å) of two (n, 3) point sets after optimal rigid superposition (Kabsch)."""
    a = a - a.mean(0)
    b = b - b.mean(0)
    u, s, vt = np.linalg.svd(a.T @ b)
    s[-1] *= np.sign(np.linalg.det(u @ vt))
    return float(np.sqrt(max(0.0, ((a**2).sum() + (b**2).sum() - 2 * s.sum()) / len(a))))


def write_dcd(
    path: Path, xyz: np.ndarray, order: str = "<", cell: np.ndarray | None = None
) -> None:
    """A minimal CHARMM DCD writer for the round-trip tests (independent of the reader)."""
    n_frames, n_atoms, _ = xyz.shape

    def record(payload: bytes) -> bytes:
        marker = np.array([len(payload)], dtype=f"{order}i4").tobytes()
        return marker + payload + marker

    control = np.zeros(20, dtype=f"{order}i4")
    control[0], control[10], control[19] = n_frames, int(cell is not None), 24
    chunks = [
        record(b"CORD" + control.tobytes()),
        record(np.array([1], f"{order}i4").tobytes() + b"test title".ljust(80)),
        record(np.array([n_atoms], f"{order}i4").tobytes()),
    ]
    for k in range(n_frames):
        if cell is not None:
            chunks.append(record(np.asarray(cell[k], dtype=f"{order}f8").tobytes()))
        for axis in range(3):
            chunks.append(record(xyz[k, :, axis].astype(f"{order}f4").tobytes()))
    path.write_bytes(b"".join(chunks))


def test_adk_structure_elements_and_counts():
    structure = read_structure(CLOSED)
    assert structure.n_atoms == structure.n_atoms_in_file == 3341
    # CHARMM names without element columns: CA is carbon, HG1 hydrogen, not calcium or mercury.
    assert Counter(structure.atomic_numbers.tolist()) == {1: 1685, 6: 1040, 8: 320, 7: 289, 16: 7}
    assert (structure.atom_names == "CA").sum() == 214
    np.testing.assert_array_equal(structure.positions_angstrom[0], [-11.053, 26.680, 12.742])
    heavy = read_structure(CLOSED, drop_hydrogens=True)
    assert heavy.n_atoms == 3341 - 1685 and (heavy.atomic_numbers > 1).all()
    np.testing.assert_array_equal(
        heavy.positions_angstrom, structure.positions_angstrom[heavy.atom_indices]
    )


def test_mmcif_and_pdb_with_elements_give_the_same_atoms(tmp_path):
    reference = read_structure(CLOSED)
    st = gemmi.read_structure(str(CLOSED))
    atoms = [atom for residue in st[0][0] for atom in residue]
    for atom, number in zip(atoms, reference.atomic_numbers, strict=True):
        atom.element = gemmi.Element(int(number))
    st.setup_entities()
    st.make_mmcif_document().write_file(str(tmp_path / "adk.cif"))
    st.write_pdb(str(tmp_path / "adk.pdb"))
    for path in (tmp_path / "adk.cif", tmp_path / "adk.pdb"):
        other = read_structure(path)
        np.testing.assert_array_equal(other.atomic_numbers, reference.atomic_numbers)
        np.testing.assert_allclose(
            other.positions_angstrom, reference.positions_angstrom, atol=1e-3
        )


def test_adk_trajectory_matches_the_end_states():
    info = read_dcd_info(DCD)
    assert (info.n_frames, info.n_atoms, info.has_unit_cell) == (98, 3341, False)
    assert "DIMS ADK" in info.title
    xyz = read_dcd(DCD, expected_atoms=3341)
    assert xyz.shape == (98, 3341, 3) and xyz.dtype == np.float32
    closed, opened = read_structure(CLOSED), read_structure(OPEN)
    ca = closed.atom_names == "CA"
    first = superposed_rmsd(xyz[0][ca], closed.positions_angstrom[ca])
    last = superposed_rmsd(xyz[-1][ca], opened.positions_angstrom[ca])
    ends = superposed_rmsd(closed.positions_angstrom[ca], opened.positions_angstrom[ca])
    print(
        f"CA RMSD: frame 0 vs closed {first:.3f} Å, last vs open {last:.3f} Å, "
        f"closed vs open {ends:.2f} Å"
    )
    assert first == pytest.approx(0.46, abs=0.01)
    assert last == pytest.approx(0.50, abs=0.01)
    assert ends == pytest.approx(6.91, abs=0.02)
    np.testing.assert_array_equal(read_dcd(DCD, frames=[97, 0]), xyz[[97, 0]])


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("with_cell", [False, True])
def test_dcd_round_trip_both_byte_orders_and_unit_cell(tmp_path, order, with_cell):
    rng = np.random.default_rng(1)
    xyz = rng.normal(0, 20, (5, 7, 3)).astype(np.float32)
    cell = rng.uniform(50, 60, (5, 6)) if with_cell else None
    write_dcd(tmp_path / "t.dcd", xyz, order, cell)
    info = read_dcd_info(tmp_path / "t.dcd")
    assert (info.n_frames, info.n_atoms, info.has_unit_cell, info.byte_order) == (
        5,
        7,
        with_cell,
        order,
    )
    np.testing.assert_array_equal(read_dcd(tmp_path / "t.dcd", expected_atoms=7), xyz)
    np.testing.assert_array_equal(read_dcd(tmp_path / "t.dcd", frames=[3, 1]), xyz[[3, 1]])


def test_bad_structure_and_trajectory_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_structure(tmp_path / "missing.pdb")
    (tmp_path / "empty.pdb").write_text("REMARK nothing here\nEND\n")
    with pytest.raises(InputError, match="no atoms"):
        read_structure(tmp_path / "empty.pdb")
    with pytest.raises(InputError, match="not found"):
        read_dcd(tmp_path / "missing.dcd")
    with pytest.raises(InputError, match="3341 atoms but the structure has 3340"):
        read_dcd(DCD, expected_atoms=3340)
    with pytest.raises(InputError, match="frames must lie in 0..97"):
        read_dcd(DCD, frames=[98])
    (tmp_path / "short.dcd").write_bytes(DCD.read_bytes()[:-100])
    with pytest.raises(InputError, match="truncated"):
        read_dcd(tmp_path / "short.dcd")
    (tmp_path / "text.dcd").write_text("this is not a trajectory")
    with pytest.raises(InputError, match="not a DCD"):
        read_dcd(tmp_path / "text.dcd")
    damaged = bytearray(DCD.read_bytes())
    damaged[-4:] = b"\x00\x00\x00\x00"  # closing marker of the last Z record
    (tmp_path / "damaged.dcd").write_bytes(bytes(damaged))
    with pytest.raises(InputError, match="record markers"):
        read_dcd(tmp_path / "damaged.dcd")
