"""cryoSPARC .cs particle files: the pose convention (by projection), passthrough merging, bad
files, and exports that keep every original field.

The .cs files here are written by hand from the documented fields, with the RELION → cryoSPARC
conversion inverted independently of the reader: the pose is the axis-angle vector of the transpose
of RELION's matrix (a log map written out below), the shift is the origin in pixels, angles in
radians.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import torch

from helpers.relion_data import optics_block
from napari_dynamight.engine.ctf import compute_ctf
from napari_dynamight.engine.data.dataset import ParticleDataset
from napari_dynamight.engine.data.particle_file import (
    read_cryosparc,
    read_particle_file,
    read_particles,
    write_cryosparc,
)
from napari_dynamight.engine.errors import InputError
from napari_dynamight.engine.gaussians import GaussianModel, normalised_cross_correlation, project
from napari_dynamight.engine.geometry import (
    euler_to_matrix,
    euler_to_matrix_numpy,
    random_euler_angles,
)
from napari_dynamight.engine.image_formation import Pose, form_images
from napari_dynamight.engine.io.cryosparc import passthrough_files

BOX, PIXEL, N = 48, 2.0, 32


def _model() -> GaussianModel:
    """Three lobes of different sizes at asymmetric places: no pose can be mistaken for another."""
    generator = torch.Generator().manual_seed(0)
    lobes = torch.tensor([[16.0, 0.0, 0.0], [0.0, 11.0, 0.0], [-6.0, -6.0, 13.0]])
    centres = torch.cat(
        [
            lobe + 4.0 * torch.randn(n, 3, generator=generator)
            for lobe, n in zip(lobes, (60, 40, 20))
        ]
    )
    return GaussianModel(centres, torch.ones(len(centres)), torch.full((len(centres),), 3.0))


def _f32(values) -> np.ndarray:
    """Values a float32 .cs field holds exactly, so STAR and .cs carry the same numbers."""
    return np.asarray(values, dtype=np.float32).astype(np.float64)


def _log_map(matrices: np.ndarray) -> np.ndarray:
    """Axis-angle vectors of rotation matrices (angle below π)."""
    angle = np.arccos(np.clip((np.trace(matrices, axis1=1, axis2=2) - 1) / 2, -1, 1))
    axis = np.stack(
        [
            matrices[:, 2, 1] - matrices[:, 1, 2],
            matrices[:, 0, 2] - matrices[:, 2, 0],
            matrices[:, 1, 0] - matrices[:, 0, 1],
        ],
        axis=1,
    )
    return axis / (2 * np.sin(angle))[:, None] * angle[:, None]


def _ground_truth(seed: int = 1) -> pd.DataFrame:
    """Random RELION poses (rotation angle away from π, where the log map is ill-conditioned),
    origins, CTFs."""
    rng = np.random.default_rng(seed)
    euler = np.empty((0, 3))
    while len(euler) < N:
        candidates = random_euler_angles(4 * N, rng)
        matrices = euler_to_matrix_numpy(_f32(candidates))
        angle = np.arccos(np.clip((np.trace(matrices, axis1=1, axis2=2) - 1) / 2, -1, 1))
        euler = np.concatenate([euler, _f32(candidates[angle < np.pi - 0.1])])[:N]
    defocus_u = _f32(rng.uniform(8000, 20000, N))
    return pd.DataFrame(
        {
            "rlnImageName": [f"{i + 1:06d}@../J5/extract/particles.mrc" for i in range(N)],
            "rlnAngleRot": euler[:, 0],
            "rlnAngleTilt": euler[:, 1],
            "rlnAnglePsi": euler[:, 2],
            "rlnOriginXAngst": _f32(rng.uniform(-6, 6, N)),
            "rlnOriginYAngst": _f32(rng.uniform(-6, 6, N)),
            "rlnDefocusU": defocus_u,
            "rlnDefocusV": _f32(defocus_u - rng.uniform(0, 800, N)),
            "rlnDefocusAngle": _f32(rng.uniform(-90, 90, N)),
            "rlnPhaseShift": _f32(rng.uniform(0, 40, N)),
            "rlnRandomSubset": rng.permutation(np.arange(N) % 2 + 1),
            "rlnOpticsGroup": 1,
        }
    )


def _cs_fields(particles: pd.DataFrame, uids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(main, passthrough) records as a cryoSPARC refinement writes them: poses in the main file,
    image locations and CTF in the passthrough file (shuffled, with particles the main file does not
    have)."""
    n = len(particles)
    euler = particles[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy()
    pose = _log_map(np.transpose(euler_to_matrix_numpy(euler), (0, 2, 1)))
    main = np.zeros(
        n,
        dtype=[
            ("uid", "<u8"),
            ("alignments3D/split", "<u4"),
            ("alignments3D/shift", "<f4", (2,)),
            ("alignments3D/pose", "<f4", (3,)),
            ("alignments3D/psize_A", "<f4"),
            ("alignments3D/class", "<u4"),
        ],
    )
    main["uid"] = uids
    main["alignments3D/split"] = particles["rlnRandomSubset"] - 1
    main["alignments3D/shift"] = (
        particles[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy() / PIXEL
    )
    main["alignments3D/pose"] = pose
    main["alignments3D/psize_A"] = PIXEL
    extra = 5
    passthrough = np.zeros(
        n + extra,
        dtype=[
            ("uid", "<u8"),
            ("blob/path", "S40"),
            ("blob/idx", "<u4"),
            ("blob/shape", "<u4", (2,)),
            ("blob/psize_A", "<f4"),
            ("blob/sign", "<f4"),
            ("ctf/type", "S8"),
            ("ctf/accel_kv", "<f4"),
            ("ctf/cs_mm", "<f4"),
            ("ctf/amp_contrast", "<f4"),
            ("ctf/df1_A", "<f4"),
            ("ctf/df2_A", "<f4"),
            ("ctf/df_angle_rad", "<f4"),
            ("ctf/phase_shift_rad", "<f4"),
            ("location/micrograph_path", "S30"),
        ],
    )
    passthrough["uid"][:n] = uids
    passthrough["uid"][n:] = np.arange(extra) + 7
    passthrough["blob/path"] = b">J5/extract/particles.mrc"
    passthrough["blob/idx"][:n] = np.arange(n)
    passthrough["blob/shape"] = BOX
    passthrough["blob/psize_A"] = PIXEL
    passthrough["blob/sign"] = -1.0
    passthrough["ctf/type"] = b"spline"
    passthrough["ctf/accel_kv"], passthrough["ctf/cs_mm"], passthrough["ctf/amp_contrast"] = (
        300.0,
        2.7,
        0.1,
    )
    passthrough["ctf/df1_A"][:n] = particles["rlnDefocusU"]
    passthrough["ctf/df2_A"][:n] = particles["rlnDefocusV"]
    passthrough["ctf/df_angle_rad"][:n] = np.deg2rad(particles["rlnDefocusAngle"])
    passthrough["ctf/phase_shift_rad"][:n] = np.deg2rad(particles["rlnPhaseShift"])
    passthrough["location/micrograph_path"] = b"J3/motioncorrected/mic.mrc"
    order = np.random.default_rng(5).permutation(n + extra)
    return main, passthrough[order]


@pytest.fixture(scope="module")
def project_folder(tmp_path_factory) -> Path:
    """A cryoSPARC-like project: images in J5/extract, the refinement's .cs files in J12, a RELION
    STAR file of the same particles in relion/."""
    root = tmp_path_factory.mktemp("P1")
    particles = _ground_truth()
    table_columns = particles[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy()
    rotations = euler_to_matrix(torch.tensor(table_columns)).float()
    shifts = torch.tensor(particles[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy()).float()
    (root / "relion").mkdir()
    starfile.write(
        {"optics": optics_block(BOX, PIXEL), "particles": particles},
        root / "relion" / "particles.star",
        float_format="%.17g",
    )
    star = read_particles(root / "relion" / "particles.star", data_root=root / "relion")
    ctf_images = compute_ctf(star.ctf.torch(), BOX, PIXEL)
    images = (
        form_images(_model(), Pose(rotations, shifts), BOX, PIXEL, ctf_images)
        .numpy()
        .astype(np.float32)
    )
    (root / "J5" / "extract").mkdir(parents=True)
    with mrcfile.new(root / "J5" / "extract" / "particles.mrc") as handle:
        handle.set_data(images)
    (root / "J12").mkdir()
    main, passthrough = _cs_fields(
        particles, np.random.default_rng(2).integers(1 << 40, 1 << 62, N, dtype=np.uint64)
    )
    _save_cs(root / "J12" / "J12_particles.cs", main)
    _save_cs(root / "J12" / "J12_passthrough_particles.cs", passthrough)
    return root


def _save_cs(path: Path, records) -> Path:
    with open(path, "wb") as handle:
        np.save(handle, records)
    return path


def _projections(table) -> tuple[torch.Tensor, torch.Tensor, dict]:
    with ParticleDataset(table, normalise=False) as dataset:
        batch = dataset.batch(np.arange(len(table)))
    ctf = compute_ctf(batch.ctf, BOX, PIXEL)
    return (
        form_images(_model(), batch.pose, BOX, PIXEL, ctf),
        batch.images,
        batch,
    )


def test_cs_poses_project_like_the_star_poses(project_folder):
    star = read_particles(project_folder / "relion" / "particles.star")
    cs = read_particle_file(project_folder / "J12" / "J12_particles.cs")
    from_star, images, star_batch = _projections(star)
    from_cs, cs_images, cs_batch = _projections(cs)
    ncc = normalised_cross_correlation(from_cs, from_star)
    ncc_images = normalised_cross_correlation(from_cs, cs_images)
    print(
        f".cs vs STAR projections: NCC min {ncc.min():.6f}; .cs projections vs the images: min "
        f"{ncc_images.min():.6f}"
    )
    assert ncc.min() >= 0.99 and ncc_images.min() >= 0.99
    assert torch.equal(images, cs_images)  # the same stack, found through the project folder
    # the untransposed matrix or the opposite shift sign would not match
    wrong = project(
        _model(), cs_batch.rotations.transpose(1, 2), cs_batch.origin_angstrom, BOX, PIXEL
    )
    flipped = project(_model(), cs_batch.rotations, -cs_batch.origin_angstrom, BOX, PIXEL)
    plain = project(_model(), star_batch.rotations, star_batch.origin_angstrom, BOX, PIXEL)
    wrong_ncc, flipped_ncc = (
        normalised_cross_correlation(x, plain).mean() for x in (wrong, flipped)
    )
    print(f"untransposed pose: NCC mean {wrong_ncc:.3f}; opposite shift: {flipped_ncc:.3f}")
    assert wrong_ncc < 0.8 and flipped_ncc < 0.98


def test_cs_fields_agree_with_the_star_file(project_folder):
    star = read_particles(project_folder / "relion" / "particles.star")
    cs = read_cryosparc(project_folder / "J12" / "J12_particles.cs")
    assert np.array_equal(cs.half_sets(), star.half_sets())
    np.testing.assert_array_equal(cs.ctf.defocus_u_angstrom, star.ctf.defocus_u_angstrom)
    np.testing.assert_array_equal(cs.ctf.defocus_v_angstrom, star.ctf.defocus_v_angstrom)
    np.testing.assert_allclose(
        cs.ctf.defocus_angle_degrees, star.ctf.defocus_angle_degrees, atol=1e-4
    )
    np.testing.assert_allclose(cs.ctf.phase_shift_degrees, star.ctf.phase_shift_degrees, atol=1e-4)
    for name in ("voltage_kilovolts", "spherical_aberration_millimetres", "amplitude_contrast"):
        np.testing.assert_allclose(getattr(cs.ctf, name), getattr(star.ctf, name), rtol=1e-6)
    np.testing.assert_allclose(
        euler_to_matrix_numpy(cs.euler_degrees),
        euler_to_matrix_numpy(star.euler_degrees),
        atol=1e-5,
    )
    np.testing.assert_allclose(cs.origin_angstrom, star.origin_angstrom, atol=1e-5)
    np.testing.assert_array_equal(cs.pixel_size_angstrom, star.pixel_size_angstrom)
    np.testing.assert_array_equal(cs.image_box, star.image_box)
    assert list(cs.image_files) == list(star.image_files) and np.array_equal(
        cs.image_indices, star.image_indices
    )
    assert cs.has_poses and cs.has_ctf and len(cs.records) == N


def test_passthrough_merging(project_folder, tmp_path):
    folder = project_folder / "J12"
    assert passthrough_files(folder / "J12_particles.cs") == [
        folder / "J12_passthrough_particles.cs"
    ]
    assert passthrough_files(folder / "cryosparc_P1_J12_005_particles.cs") == [
        folder / "J12_passthrough_particles.cs"
    ]
    merged = read_cryosparc(folder / "J12_particles.cs")
    main = np.load(folder / "J12_particles.cs")
    passthrough = np.load(folder / "J12_passthrough_particles.cs")
    assert np.array_equal(merged.records["uid"], main["uid"])  # the main file's rows, in its order
    assert set(merged.records.dtype.names) == set(main.dtype.names) | set(passthrough.dtype.names)
    where = {int(u): k for k, u in enumerate(passthrough["uid"])}
    rows = [where[int(u)] for u in main["uid"]]
    assert np.array_equal(merged.records["ctf/df1_A"], passthrough["ctf/df1_A"][rows])
    # an explicit passthrough under another name, next to a main file in another folder
    other = tmp_path / "J12"
    other.mkdir()
    _save_cs(other / "main.cs", main)
    _save_cs(tmp_path / "extra.cs", passthrough)
    explicit = read_cryosparc(
        other / "main.cs", data_root=project_folder, passthroughs=[tmp_path / "extra.cs"]
    )
    assert list(explicit.image_files) == list(merged.image_files)
    # without the passthrough the image locations are missing, named as .cs fields
    with pytest.raises(InputError, match=r"main\.cs: missing field blob/path") as error:
        read_cryosparc(other / "main.cs")
    assert "\n" not in str(error.value)
    _save_cs(tmp_path / "none.cs", passthrough[:0])
    with pytest.raises(InputError, match=r"none\.cs: holds no particles"):
        read_cryosparc(other / "main.cs", passthroughs=[tmp_path / "none.cs"])
    # a passthrough file lacking a particle of the main file
    _save_cs(tmp_path / "short.cs", passthrough[passthrough["uid"] != main["uid"][3]])
    with pytest.raises(InputError, match=r"short\.cs: has no uid \d+ of main\.cs \(row 4\)"):
        read_cryosparc(other / "main.cs", passthroughs=[tmp_path / "short.cs"])


def _merged_records(project_folder) -> np.ndarray:
    return read_cryosparc(project_folder / "J12" / "J12_particles.cs").records


def test_bad_cs_files_are_one_line_errors(project_folder, tmp_path):
    records = _merged_records(project_folder)
    cases = {
        "plain.cs": (np.arange(10.0), r"plain\.cs: holds a plain float64 array"),
        "compressed.cs": (None, r"compressed\.cs: compressed cryoSPARC \.cs format"),
        "older.cs": (None, r"older\.cs: compressed cryoSPARC \.cs format"),
        "text.cs": ("text", r"text\.cs: not a cryoSPARC \.cs file"),
        "nouid.cs": (
            records[[n for n in records.dtype.names if n != "uid"]],
            r"nouid\.cs: no field uid",
        ),
        "noidx.cs": (
            records[[n for n in records.dtype.names if n != "blob/idx"]],
            r"noidx\.cs: missing field blob/idx",
        ),
        "empty.cs": (records[:0], r"empty\.cs: holds no particles"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        if name in ("compressed.cs", "older.cs"):
            path.write_bytes(
                (b"\x95CSDAT" if name == "compressed.cs" else b"\x94CSDAT") + bytes(100)
            )
        elif name == "text.cs":
            path.write_text("uid blob/path\n")
        else:
            _save_cs(
                path,
                np.ascontiguousarray(content)
                if content.dtype.names is None
                else np.array(
                    content, dtype=[(n, content.dtype.fields[n][0]) for n in content.dtype.names]
                ),
            )
        with pytest.raises(InputError, match=message) as error:
            read_cryosparc(path, passthroughs=[])
        assert "\n" not in str(error.value), name
    repeated = records.copy()
    repeated["uid"][1] = repeated["uid"][0]
    with pytest.raises(InputError, match=r"repeat\.cs: field uid repeats a value"):
        read_cryosparc(_save_cs(tmp_path / "repeat.cs", repeated), passthroughs=[])
    one_half = records.copy()
    one_half["alignments3D/split"] = 0  # a job without half sets: a random split instead
    table = read_cryosparc(
        _save_cs(tmp_path / "one_half.cs", one_half), data_root=project_folder, passthroughs=[]
    )
    assert "rlnRandomSubset" not in table.particles.columns and set(
        np.unique(table.half_sets())
    ) == {1, 2}
    binned = records.copy()  # a job that aligned at half the sampling: shifts in its own pixels
    binned["alignments3D/psize_A"] *= 2
    binned["alignments3D/shift"] /= 2
    np.testing.assert_array_equal(
        read_cryosparc(
            _save_cs(tmp_path / "binned.cs", binned), data_root=project_folder, passthroughs=[]
        ).origin_angstrom,
        read_cryosparc(project_folder / "J12" / "J12_particles.cs").origin_angstrom,
    )
    bad_split = records.copy()
    bad_split["alignments3D/split"][2] = 2
    with pytest.raises(
        InputError, match=r"split\.cs: field alignments3D/split is 2 in row 3; expected 0 or 1"
    ):
        read_cryosparc(_save_cs(tmp_path / "split.cs", bad_split), passthroughs=[])
    negative = records.copy()
    negative["ctf/df1_A"][4] = -100
    with pytest.raises(
        InputError, match=r"negative\.cs: ctf/df1_A is -100 \(row 5\); defocus must be positive"
    ):
        read_cryosparc(
            _save_cs(tmp_path / "negative.cs", negative), data_root=project_folder, passthroughs=[]
        )
    no_ctf = records[[n for n in records.dtype.names if not n.startswith("ctf/df")]]
    no_ctf = np.array(no_ctf, dtype=[(n, no_ctf.dtype.fields[n][0]) for n in no_ctf.dtype.names])
    table = read_cryosparc(
        _save_cs(tmp_path / "noctf.cs", no_ctf), data_root=project_folder, passthroughs=[]
    )
    with pytest.raises(
        InputError, match=r"noctf\.cs: missing CTF column\(s\) ctf/df1_A, ctf/df2_A"
    ):
        table.require_ctf()
    moved = read_cryosparc(
        _save_cs(tmp_path / "moved.cs", records), passthroughs=[]
    )  # images not found
    with pytest.raises(
        InputError, match=r"moved\.cs: image stack .* not found \(blob/path .*--data-root"
    ):
        moved.check_images()


def _with_results(table, seed: int = 0):
    """``table`` with the result columns a deformation run adds (dmLatent1..2, dmHalfSet, ...)."""
    rng = np.random.default_rng(seed)
    frame = table.particles.copy()
    frame["dmLatent1"], frame["dmLatent2"] = rng.normal(size=(2, len(frame))).astype(np.float32)
    frame["dmHalfSet"] = table.half_sets()
    frame["dmValidation"] = rng.integers(0, 2, len(frame))
    frame["dmErrorAngstrom"] = rng.uniform(0, 3, len(frame))
    frame["dmDisplacementAngstrom"] = rng.uniform(0, 5, len(frame))
    return replace(table, particles=frame)


def test_export_keeps_every_original_field(project_folder, tmp_path):
    table = _with_results(read_cryosparc(project_folder / "J12" / "J12_particles.cs"))
    rows = np.array([3, 0, 7, 8, 20])
    write_cryosparc(tmp_path / "subset.cs", table, rows)
    written = np.load(tmp_path / "subset.cs")
    for name in table.records.dtype.names:  # bit for bit, uid included
        assert written.dtype.fields[name][0] == table.records.dtype.fields[name][0], name
        assert written[name].tobytes() == table.records[name][rows].tobytes(), name
    frame = table.particles.iloc[rows]
    for k in (0, 1):
        np.testing.assert_array_equal(
            written[f"components_mode_{k}/value"], frame[f"dmLatent{k + 1}"]
        )
        np.testing.assert_array_equal(written[f"components_mode_{k}/component"], k)
        np.testing.assert_array_equal(
            written[f"dynamight/latent_{k + 1}"], frame[f"dmLatent{k + 1}"]
        )
    np.testing.assert_array_equal(written["dynamight/half_set"], frame["dmHalfSet"])
    np.testing.assert_array_equal(written["dynamight/validation"], frame["dmValidation"])
    np.testing.assert_allclose(written["dynamight/error_A"], frame["dmErrorAngstrom"], rtol=1e-6)
    np.testing.assert_allclose(
        written["dynamight/displacement_A"], frame["dmDisplacementAngstrom"], rtol=1e-6
    )
    # without results: exactly the original records; the file reads back as the same particles
    write_cryosparc(tmp_path / "J12" / "plain.cs", table, rows, keep_results=False)
    plain = np.load(tmp_path / "J12" / "plain.cs")
    assert plain.dtype == table.records.dtype and plain.tobytes() == table.records[rows].tobytes()
    again = read_cryosparc(tmp_path / "J12" / "plain.cs", data_root=project_folder)
    assert list(again.image_files) == list(table.image_files[rows])
    with pytest.raises(InputError, match="empty selection"):
        write_cryosparc(tmp_path / "none.cs", table, np.zeros(len(table), bool))


def test_star_input_exports_the_documented_fields(project_folder, tmp_path):
    star = _with_results(read_particles(project_folder / "relion" / "particles.star"))
    rows = np.arange(0, N, 3)
    write_cryosparc(tmp_path / "out" / "from_star.cs", star, rows)
    back = read_cryosparc(tmp_path / "out" / "from_star.cs")
    original = star.select(rows)
    assert list(back.image_files) == list(original.image_files)
    assert np.array_equal(back.image_indices, original.image_indices)
    assert np.array_equal(back.half_sets(), original.half_sets())
    np.testing.assert_allclose(
        euler_to_matrix_numpy(back.euler_degrees),
        euler_to_matrix_numpy(original.euler_degrees),
        atol=1e-5,
    )
    np.testing.assert_allclose(back.origin_angstrom, original.origin_angstrom, atol=1e-5)
    np.testing.assert_array_equal(back.ctf.defocus_u_angstrom, original.ctf.defocus_u_angstrom)
    uids = back.records["uid"]
    assert uids.dtype == np.uint64 and len(np.unique(uids)) == len(rows)
    assert "components_mode_1/value" in back.records.dtype.names


def test_explorer_exports_a_cs_run_back_to_cryosparc(project_folder, tmp_path):
    """A run made from a .cs input keeps its records beside particles.star; the explorer's export to
    .cs keeps every original field and uid and adds the results; export to STAR is unchanged."""
    from napari_dynamight.engine.data.particle_file import write_particles
    from napari_dynamight.engine.explore.table import load_run
    from napari_dynamight.engine.io.atomic import save_npy
    from napari_dynamight.engine.run_folder import RunFolder

    table = _with_results(read_cryosparc(project_folder / "J12" / "J12_particles.cs"))
    run = RunFolder(tmp_path / "run")
    write_particles(run.particles, table)
    save_npy(run.input_records, table.records)
    save_npy(run.latents, table.particles[["dmLatent1", "dmLatent2"]].to_numpy(np.float32))
    data = load_run(run.path)
    mask = np.zeros(N, bool)
    mask[[1, 4, 9]] = True
    assert data.export(tmp_path / "selection.cs", mask, keep_results=True) == 3
    written = np.load(tmp_path / "selection.cs")
    for name in table.records.dtype.names:
        assert written[name].tobytes() == table.records[name][mask].tobytes(), name
    np.testing.assert_array_equal(written["components_mode_1/value"], data.latents[mask, 1])
    assert data.export(tmp_path / "selection.star", mask) == 3
    assert "dmLatent1" not in starfile.read(tmp_path / "selection.star")["particles"].columns
    # the run's particles.star alone (in its folder) finds the records too
    assert load_run(run.particles).table.records is not None


def test_cli_info_reads_a_cs_file(project_folder, tmp_path, capsys):
    from napari_dynamight.cli import main

    assert main(["info", str(project_folder / "J12" / "J12_particles.cs")]) == 0
    out = capsys.readouterr().out
    assert ".cs file:" in out and f"particles:       {N}" in out and "1 of 1 found" in out
    assert "cryoSPARC .cs" in out and "poses: alignments3D/pose" in out and "1: 16, 2: 16" in out
    (tmp_path / "bad.cs").write_bytes(b"\x95CSDAT" + bytes(10))
    assert main(["info", str(tmp_path / "bad.cs")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "bad.cs: compressed" in err and "\n" not in err
    star = project_folder / "relion" / "particles.star"
    assert (
        main(
            [
                "info",
                str(star),
                "--passthrough",
                str(project_folder / "J12" / "J12_passthrough_particles.cs"),
            ]
        )
        == 2
    )
    assert "passthrough files apply to cryoSPARC .cs input only" in capsys.readouterr().err


def _split_like_cryosparc(folder: Path, records: np.ndarray) -> Path:
    """Write ``records`` as a job's main file (uid and alignments) and its passthrough file (the
    rest)."""
    folder.mkdir(parents=True, exist_ok=True)
    main_fields = ["uid"] + [n for n in records.dtype.names if n.startswith("alignments3D/")]
    rest = ["uid"] + [n for n in records.dtype.names if n not in main_fields]
    for name, fields in (("J9_particles.cs", main_fields), ("J9_passthrough_particles.cs", rest)):
        part = np.empty(len(records), dtype=[(f, records.dtype.fields[f][0]) for f in fields])
        for f in fields:
            part[f] = records[f]
        _save_cs(folder / name, part)
    return folder / "J9_particles.cs"


def test_training_from_a_cs_file_resumes_and_checks_its_passthrough(simulated, tmp_path):
    """optimize-deformations on a cryoSPARC job's files (found passthrough), killed and resumed; the
    run keeps the input records, its particles.star finds the images as the later stages read it,
    and a resume after the passthrough file changed is refused."""
    from helpers.deformation_data import FAST
    from napari_dynamight.engine.deformation.run import optimize_deformations
    from napari_dynamight.engine.progress import run
    from napari_dynamight.engine.run_folder import RunFolder

    star = read_particles(simulated.star)
    write_cryosparc(tmp_path / "all.cs", star, keep_results=False)
    cs = _split_like_cryosparc(simulated.star.parent / "J9", np.load(tmp_path / "all.cs"))
    settings = replace(FAST, epochs=4, checkpoint_every=2, refinement_rounds=0)
    out = tmp_path / "run"

    def start(resume=False):
        return optimize_deformations(
            cs,
            simulated.consensus,
            out,
            settings=settings,
            consensus_model=simulated.model,
            resume=resume,
        )

    operation = start()
    for event in operation:  # cancel inside epoch 3, after the epoch-2 checkpoint
        if "epoch 3/" in event.stage:
            break
    operation.close()
    run(start(resume=True))
    folder = RunFolder(out)
    info = folder.read_info()
    assert np.load(folder.latents).shape[0] == len(star) == info["n_particles"]
    records = np.load(folder.input_records)
    assert records.tobytes() == read_cryosparc(cs).records.tobytes()
    again = read_particles(
        folder.particles, data_root=Path(info["particles"]).parent
    )  # as reconstruct does
    again.check_images()
    assert list(again.image_files) == list(star.image_files)
    np.testing.assert_allclose(
        euler_to_matrix_numpy(again.euler_degrees),
        euler_to_matrix_numpy(star.euler_degrees),
        atol=1e-5,
    )
    passthrough = np.load(cs.parent / "J9_passthrough_particles.cs")
    passthrough["ctf/df1_A"][0] += 1
    _save_cs(cs.parent / "J9_passthrough_particles.cs", passthrough)
    with pytest.raises(
        InputError, match=r"run\.json: this run was made with another passthrough \.cs files"
    ):
        run(start(resume=True))


def test_napari_opens_a_cs_file(project_folder):
    from napari_dynamight._reader import get_star_reader, read_star

    path = project_folder / "J12" / "J12_particles.cs"
    assert get_star_reader(str(path)) is read_star and get_star_reader("x.csv") is None
    [(points, kwargs, kind)] = read_star(str(path))
    assert kind == "points" and points.shape == (N, 3)
    assert kwargs["metadata"]["summary"]["format"] == "cryoSPARC"
    np.testing.assert_array_equal(
        kwargs["features"]["half_set"], _ground_truth()["rlnRandomSubset"]
    )


def test_real_refinement_file_matches_cryodrgns_pose_conversion():
    """cryoSPARC's own refinement output: our RELION matrices equal cryoDRGN's parse_pose_csparc
    rotations (pose.cs.pkl), and our origins its translations (× the 180 px box)."""
    import pickle

    from conftest import CS_FILES

    table = read_cryosparc(CS_FILES["refinement"])
    with open(CS_FILES["refinement_cryodrgn_poses"], "rb") as handle:
        rotations, translations = pickle.load(
            handle
        )  # a file from a pinned commit (tests/data/SOURCES.md)
    ours = euler_to_matrix_numpy(table.euler_degrees)
    difference = np.abs(ours - rotations).max()
    print(
        f"max |A - cryoDRGN rotation| {difference:.2e}; transposed: "
        f"{np.abs(ours.transpose(0, 2, 1) - rotations).max():.2f}"
    )
    assert difference < 1e-5
    np.testing.assert_allclose(
        table.origin_angstrom / table.pixel_size_angstrom[:, None] / 180, translations, atol=1e-7
    )
    assert (
        len(table) == 2019
        and set(table.image_box) == {180}
        and set(table.pixel_size_angstrom) == {np.float32(2.95)}
    )
    assert np.bincount(table.half_sets()).tolist() == [0, 1010, 1009]
    assert table.has_poses and table.has_ctf


def test_real_cryosparc_ctf_matches_the_same_particles_star_file():
    """EMPIAR-10076's 7 particles as cryoSPARC imported them and as RELION 3.0 STAR: the same
    CTF."""
    from conftest import CS_FILES, STAR_FILES

    cs = read_cryosparc(CS_FILES["empiar10076"])
    star = read_particles(STAR_FILES["empiar10076_relion30"])
    for name in (
        "defocus_u_angstrom",
        "defocus_v_angstrom",
        "voltage_kilovolts",
        "spherical_aberration_millimetres",
        "amplitude_contrast",
    ):
        np.testing.assert_allclose(
            getattr(cs.ctf, name), getattr(star.ctf, name), rtol=1e-6, err_msg=name
        )
    np.testing.assert_allclose(
        cs.ctf.defocus_angle_degrees, star.ctf.defocus_angle_degrees, atol=1e-4
    )
    np.testing.assert_allclose(cs.pixel_size_angstrom, star.pixel_size_angstrom, rtol=1e-5)
    assert list(cs.image_files) == list(star.image_files) and np.array_equal(
        cs.image_indices, star.image_indices
    )
    assert not cs.has_poses
    exported = read_cryosparc(CS_FILES["class2d_exported"])  # '>' paths, 2D alignments only
    assert not exported.has_poses and len(exported) == 22
    assert all(">" not in name and name.endswith(".mrcs") for name in exported.image_files)
