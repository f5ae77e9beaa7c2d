"""The simulator: STAR/labels agreement, noise level, frame identity, bad input, RELION."""

from __future__ import annotations

import math
import subprocess

import mrcfile
import numpy as np
import pandas as pd
import pytest
import torch

from napari_dynamight.cli import main
from napari_dynamight.engine.ctf import compute_ctf
from napari_dynamight.engine.data.particle_file import read_particles
from napari_dynamight.engine.errors import InputError
from napari_dynamight.engine.example_data import STRUCTURE, example_file
from napari_dynamight.engine.fourier import fsc
from napari_dynamight.engine.gaussians import normalised_cross_correlation
from napari_dynamight.engine.geometry import euler_to_matrix
from napari_dynamight.engine.image_formation import filter_images
from napari_dynamight.engine.io.mrc import read_map
from napari_dynamight.engine.progress import run
from napari_dynamight.engine.projector import project_volume
from napari_dynamight.engine.simulate import simulate

ADK = example_file(STRUCTURE).parent  # the example files bundled with the package
CLOSED, DCD = ADK / "adk_closed.pdb", ADK / "adk_dims.dcd"
FRAMES = [0, 48, 97]
SMALL = dict(
    n_particles=240,
    box=32,
    pixel_size_angstrom=2.5,
    defocus_range_angstrom=(8000, 20000),
    seed=3,
    frames=FRAMES,
    chunk_size=100,
)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """A noise-free run (3 chunks) over three frames of the AdK transition."""
    folder = tmp_path_factory.mktemp("clean")
    return run(simulate(CLOSED, DCD, output_directory=folder, snr=math.inf, **SMALL))


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    """The same particles (same seed) with noise at SNR 0.1."""
    folder = tmp_path_factory.mktemp("noisy")
    return run(simulate(CLOSED, DCD, output_directory=folder, snr=0.1, **SMALL))


def images(summary) -> np.ndarray:
    with mrcfile.open(summary.stack) as mrc:
        assert mrc.voxel_size.x == pytest.approx(summary.pixel_size_angstrom)
        return np.array(mrc.data)


def test_star_file_loads_and_matches_the_labels_exactly(clean):
    table = read_particles(clean.particles_star)
    labels = pd.read_csv(clean.labels_csv)
    assert len(table) == len(labels) == 240
    assert clean.particles_star.read_text().startswith("# version 30001")
    assert table.optics is not None and len(table.optics) == 1
    assert table.optics["rlnImageDimensionality"][0] == 2
    np.testing.assert_array_equal(table.pixel_size_angstrom, 2.5)
    np.testing.assert_array_equal(table.image_box, 32)
    np.testing.assert_array_equal(table.ctf.voltage_kilovolts, 300.0)
    np.testing.assert_array_equal(table.ctf.spherical_aberration_millimetres, 2.7)
    np.testing.assert_array_equal(table.ctf.amplitude_contrast, 0.1)
    np.testing.assert_array_equal(table.euler_degrees, labels[["rot", "tilt", "psi"]].to_numpy())
    np.testing.assert_array_equal(
        table.origin_angstrom, labels[["origin_x_angstrom", "origin_y_angstrom"]].to_numpy()
    )
    np.testing.assert_array_equal(table.ctf.defocus_u_angstrom, labels["defocus_u_angstrom"])
    np.testing.assert_array_equal(table.ctf.defocus_v_angstrom, labels["defocus_v_angstrom"])
    np.testing.assert_array_equal(table.ctf.defocus_angle_degrees, labels["defocus_angle_degrees"])
    np.testing.assert_array_equal(table.image_indices, np.arange(240))
    assert list(table.particles["rlnImageName"]) == list(labels["image_name"])
    assert table.particles["rlnImageName"][0] == "000001@particles.mrcs"
    mean_defocus = (labels["defocus_u_angstrom"] + labels["defocus_v_angstrom"]) / 2
    assert mean_defocus.between(8000, 20000).all()
    subsets = table.particles["rlnRandomSubset"].value_counts()
    assert subsets[1] == subsets[2] == 120
    assert set(labels["frame"]) == set(FRAMES)
    assert [p.name for p in clean.frame_maps] == ["frame_000.mrc", "frame_048.mrc", "frame_097.mrc"]
    for path in clean.frame_maps + (clean.consensus_map,):
        volume, voxel = read_map(path)
        assert volume.shape == (32, 32, 32) and voxel == pytest.approx(2.5)
    assert images(clean).shape == (240, 32, 32)


def test_noise_gives_the_requested_snr(clean, noisy):
    pd.testing.assert_frame_equal(pd.read_csv(clean.labels_csv), pd.read_csv(noisy.labels_csv))
    signal, data = images(clean).astype(np.float64), images(noisy).astype(np.float64)
    noise = data - signal
    measured = signal.var(axis=(1, 2)).mean() / noise.var()
    print(f"requested SNR 0.1, measured {measured:.4f}; noise mean {noise.mean():.2e}")
    assert measured == pytest.approx(0.1, rel=0.1)
    assert abs(noise.mean()) < 0.05 * noise.std()
    spectrum = np.abs(np.fft.rfft2(noise)) ** 2
    low, high = spectrum[:, 1:4, 1:4].mean(), spectrum[:, 12:16, 12:16].mean()
    assert low == pytest.approx(high, rel=0.2)  # white


def test_images_show_their_own_frame(clean):
    """Noise-free images of frame k match projections of frame k's map better than a far frame's."""
    labels = pd.read_csv(clean.labels_csv)
    table = read_particles(clean.particles_star)
    data = torch.as_tensor(images(clean), dtype=torch.float64)
    maps = {
        f: torch.as_tensor(read_map(p)[0], dtype=torch.float64)
        for f, p in zip(FRAMES, clean.frame_maps, strict=True)
    }
    rotations = euler_to_matrix(torch.as_tensor(table.euler_degrees))
    shifts = torch.as_tensor(table.origin_angstrom)
    ctf = compute_ctf(table.ctf.torch(dtype=torch.float64), 32, 2.5)
    scores = {
        f: normalised_cross_correlation(
            filter_images(project_volume(maps[f], rotations, shifts, 2.5), ctf), data
        )
        for f in FRAMES
    }
    far = {0: 97, 48: 0, 97: 0}
    own = np.array([scores[f][i] for i, f in enumerate(labels["frame"])])
    other = np.array([scores[far[f]][i] for i, f in enumerate(labels["frame"])])
    print(
        f"NCC with own frame: mean {own.mean():.4f} min {own.min():.4f}; "
        f"far frame mean {other.mean():.4f}"
    )
    assert own.min() > 0.95
    assert (own > other).mean() > 0.95
    assert own.mean() - other.mean() > 0.05


def test_consensus_is_the_reconstruction_of_the_particles(clean):
    labels = pd.read_csv(clean.labels_csv)
    counts = labels["frame"].value_counts()
    mean_map = sum(
        read_map(p)[0] * counts[f] for f, p in zip(FRAMES, clean.frame_maps, strict=True)
    ) / len(labels)
    consensus, _ = read_map(clean.consensus_map)
    _, curve = fsc(consensus, mean_map, 2.5)
    print("consensus vs particle-weighted mean of frame maps, FSC:", np.round(curve, 3))
    assert curve[1:11].min() > 0.9


BAD = [
    (dict(box=33), "box 33"),
    (dict(box=14), "box 14"),
    (dict(snr=0.0), "snr 0.0"),
    (dict(n_particles=0), "n_particles 0"),
    (dict(defocus_range_angstrom=(20000, 5000)), "defocus range"),
    (dict(frames=[0, 98]), "frames must lie in 0..97"),
    (dict(frames=[]), "no frames selected"),
    (dict(box=16), "box is only 40.0 Å wide"),
    (dict(structure=ADK / "missing.pdb"), "not found"),
    (dict(trajectory=ADK / "missing.dcd"), "not found"),
]


@pytest.mark.parametrize("change, message", BAD, ids=[m for _, m in BAD])
def test_bad_input_leaves_nothing_behind(tmp_path, change, message):
    arguments = dict(structure=CLOSED, trajectory=DCD, snr=1.0, **SMALL) | change
    out = tmp_path / "out"
    with pytest.raises(InputError, match=message) as error:
        run(simulate(output_directory=out, **arguments))
    assert "\n" not in str(error.value)
    assert not out.exists()


def test_wrong_atom_count_and_cancel_leave_nothing_behind(tmp_path):
    lines = CLOSED.read_text().splitlines()
    (tmp_path / "short.pdb").write_text("\n".join(lines[:-20]) + "\n")
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="trajectory has 3341 atoms but .*short.pdb has"):
        run(simulate(tmp_path / "short.pdb", DCD, output_directory=existing, **SMALL))
    assert sorted(p.name for p in existing.iterdir()) == ["notes.txt"]
    operation = simulate(CLOSED, DCD, output_directory=tmp_path / "cancelled", snr=1.0, **SMALL)
    next(operation)
    operation.close()
    assert not (tmp_path / "cancelled").exists()
    operation = simulate(CLOSED, DCD, output_directory=existing, snr=1.0, **SMALL)
    next(operation)
    operation.close()
    assert sorted(p.name for p in existing.iterdir()) == ["notes.txt"]


def test_command_line(tmp_path, capsys):
    out = tmp_path / "sim"
    common = [
        "simulate",
        "--structure",
        str(CLOSED),
        "--trajectory",
        str(DCD),
        "--output-directory",
        str(out),
        "--box",
        "32",
        "--pixel-size",
        "2.5",
    ]
    assert (
        main(
            common + ["--n-particles", "20", "--snr", "0.05", "--frames", "90:98:4", "--seed", "1"]
        )
        == 0
    )
    labels = pd.read_csv(out / "ground_truth" / "labels.csv")
    assert len(labels) == 20 and set(labels["frame"]) <= {90, 94}
    assert sorted(p.name for p in (out / "ground_truth").iterdir()) == [
        "frame_090.mrc",
        "frame_094.mrc",
        "labels.csv",
        "simulation.json",
    ]
    assert "wrote 20 particles" in capsys.readouterr().out
    # a second run into the same folder replaces everything, leaving no stale frame map
    assert main(common + ["--n-particles", "10", "--frames", "5", "--snr", "inf"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "consensus.mrc",
        "ground_truth",
        "particles.mrcs",
        "particles.star",
    ]
    assert sorted(p.name for p in (out / "ground_truth").iterdir()) == [
        "frame_005.mrc",
        "labels.csv",
        "simulation.json",
    ]
    assert len(read_particles(out / "particles.star")) == 10
    capsys.readouterr()
    assert main(common[:-4] + ["--box", "31", "--output-directory", str(tmp_path / "bad")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: box 31") and "\n" not in error
    assert not (tmp_path / "bad").exists()
    assert main(common + ["--frames", "every other"]) == 2
    assert "--frames" in capsys.readouterr().err


@pytest.mark.relion
def test_relion_reconstruct_recovers_the_frame_map(tmp_path):
    """relion_reconstruct --ctf of 2,000 noise-free images of one frame gives back its map."""
    summary = run(
        simulate(
            CLOSED,
            DCD,
            output_directory=tmp_path,
            n_particles=2000,
            box=32,
            pixel_size_angstrom=2.5,
            snr=math.inf,
            frames=[97],
            seed=5,
            origin_sd_angstrom=5.0,  # 2 px: a wrong origin sign would blur the reconstruction
        )
    )
    subprocess.run(
        ["relion_reconstruct", "--i", "particles.star", "--o", "relion.mrc", "--ctf"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    ours, _ = read_map(summary.frame_maps[0])
    theirs, _ = read_map(tmp_path / "relion.mrc")
    frequency, curve = fsc(theirs, ours, 2.5)
    print("relion_reconstruct vs frame 97 map, FSC by shell (1/Å: FSC):")
    print(" ".join(f"{f:.3f}:{c:.3f}" for f, c in zip(frequency, curve, strict=True)))
    two_thirds = int(round(2 / 3 * 16))
    assert curve[: two_thirds + 1].min() >= 0.9


def test_simulation_settings_record_the_noise_level(tmp_path):
    import json

    summary = run(
        simulate(
            ADK / "adk_closed.pdb",
            None,
            output_directory=tmp_path / "sim",
            n_particles=40,
            box=32,
            pixel_size_angstrom=2.5,
            snr=0.5,
            seed=3,
        )
    )
    settings = json.loads((tmp_path / "sim" / "ground_truth" / "simulation.json").read_text())
    assert settings["noise_variance"] == summary.noise_variance > 0
    assert settings["signal_variance"] / settings["noise_variance"] == pytest.approx(0.5)
    assert settings["frames"] == [0] and settings["n_particles"] == 40


# ----------------------------------------------------------------- data variants for the benchmark


def test_envelope_bfactor_lowers_high_frequency_power_and_is_not_recorded(tmp_path):
    settings = dict(SMALL, n_particles=60, snr=math.inf)
    plain = run(simulate(CLOSED, DCD, output_directory=tmp_path / "plain", **settings))
    bfactor = 100.0
    damped = run(
        simulate(
            CLOSED,
            DCD,
            output_directory=tmp_path / "damped",
            envelope_bfactor_angstrom2=bfactor,
            **settings,
        )
    )
    power0 = np.abs(np.fft.rfft2(images(plain).astype(np.float64))) ** 2
    power1 = np.abs(np.fft.rfft2(images(damped).astype(np.float64))) ** 2
    box, pixel = SMALL["box"], SMALL["pixel_size_angstrom"]
    fy = np.fft.fftfreq(box, pixel)[:, None]
    fx = np.fft.rfftfreq(box, pixel)[None, :]
    s2 = fx**2 + fy**2
    for low, high in ((0.05, 0.08), (0.14, 0.2)):  # 1/Å; Nyquist 0.2
        shell = (s2 >= low**2) & (s2 < high**2)
        expected = (power0[:, shell] * np.exp(-bfactor * s2[shell] / 2)).sum() / power0[
            :, shell
        ].sum()
        measured = power1[:, shell].sum() / power0[:, shell].sum()
        assert measured == pytest.approx(expected, rel=1e-3)
    # at high frequency the power falls to about exp(-B s²/2) ≈ 0.2 of the undamped images'
    assert 0.1 < measured < 0.35
    table = read_particles(damped.particles_star)
    assert (table.particles["rlnCtfBfactor"] == 0).all()
    settings_json = pd.read_json(damped.labels_csv.parent / "simulation.json", typ="series")
    assert settings_json["envelope_bfactor_angstrom2"] == bfactor
    assert damped.envelope_bfactor_angstrom2 == bfactor
    # the same particles: identical poses and ground-truth maps
    assert np.array_equal(read_map(plain.frame_maps[0])[0], read_map(damped.frame_maps[0])[0])


def test_bimodal_and_weighted_frame_distributions(tmp_path):
    from napari_dynamight.engine.simulate import frame_probabilities

    common = dict(box=16, pixel_size_angstrom=4.5, snr=math.inf, seed=2, chunk_size=1000)
    summary = run(
        simulate(
            CLOSED,
            DCD,
            output_directory=tmp_path / "bimodal",
            n_particles=4000,
            frame_distribution="bimodal",
            **common,
        )
    )
    frames = pd.read_csv(summary.labels_csv)["frame"].to_numpy()
    u = frames / 97.0
    p = frame_probabilities(98, "bimodal")
    assert p.sum() == pytest.approx(1.0) and np.argmax(p[:49]) in (19, 20)
    # about a third of the particles within 0.1 of each mode; few in the middle
    near = [np.mean(np.abs(u - c) < 0.1) for c in (0.2, 0.8)]
    middle = np.mean(np.abs(u - 0.5) < 0.1)
    expected_near = p[np.abs(np.linspace(0, 1, 98) - 0.2) < 0.1].sum()
    expected_middle = p[np.abs(np.linspace(0, 1, 98) - 0.5) < 0.1].sum()
    assert expected_near > 0.3 and expected_middle < 0.03
    for value in near:
        assert value == pytest.approx(expected_near, abs=0.03)
    assert middle == pytest.approx(expected_middle, abs=0.015)
    assert summary.frame_probabilities == pytest.approx(p)
    weighted = run(
        simulate(
            CLOSED,
            DCD,
            output_directory=tmp_path / "weights",
            n_particles=2000,
            frames=[0, 10, 20, 30],
            frame_weights=[0, 1, 0, 3],
            **common,
        )
    )
    counts = pd.read_csv(weighted.labels_csv)["frame"].value_counts()
    assert set(counts.index) == {10, 30}
    assert counts[30] / 2000 == pytest.approx(0.75, abs=0.03)


def test_independent_domains(tmp_path):
    from napari_dynamight.engine.domains import domain_frames
    from napari_dynamight.engine.evaluation import abs_spearman
    from napari_dynamight.engine.gaussians import render_volume

    used = list(range(0, 98, 14))
    domains = ((30, 59), (122, 159))
    summary = run(
        simulate(
            CLOSED,
            DCD,
            output_directory=tmp_path / "two",
            n_particles=1500,
            box=32,
            pixel_size_angstrom=3.0,
            snr=math.inf,
            frames=used,
            seed=4,
            independent_domains=domains,
            chunk_size=500,
        )
    )
    labels = pd.read_csv(summary.labels_csv)
    assert "frame" not in labels.columns
    first, second = labels["domain1_frame"].to_numpy(), labels["domain2_frame"].to_numpy()
    # the two motion coordinates are drawn independently and cover the frames
    assert abs_spearman(first, second) < 0.06
    assert set(first) == set(second) == set(used)
    index = {f: k for k, f in enumerate(used)}
    assert np.array_equal(labels["state"], [index[a] * 7 + index[b] for a, b in zip(first, second)])
    states = pd.read_csv(summary.labels_csv.parent / "states.csv")
    assert sorted(states["state"]) == sorted(set(labels["state"]))
    assert len(summary.frame_maps) == len(states) and summary.state_frames.shape == (len(states), 2)
    # each domain's atoms come from its own frame (superposed on the CORE), the CORE from frame 0
    info = domain_frames(CLOSED, DCD, used, domains)
    residues = info.atoms.residue_numbers
    nmp, lid = (residues >= 30) & (residues <= 59), (residues >= 122) & (residues <= 159)
    core = ~(nmp | lid)
    state = int(3 * 7 + 6)  # domain 1 from frame 42, domain 2 from frame 84
    positions = info.positions([state])[0]
    assert np.array_equal(positions[nmp], info.aligned[3][nmp])
    assert np.array_equal(positions[lid], info.aligned[6][lid])
    assert np.array_equal(positions[core], info.core_positions[core])
    # superposition: the aligned frames' CORE sits on the core frame's far better than the raw one
    core_rmsd = np.sqrt(((info.aligned[6][core] - info.core_positions[core]) ** 2).sum(-1).mean())
    assert core_rmsd < 2.5
    # and the domains really moved: frame 84's LID is far from frame 0's
    assert np.sqrt(((positions[lid] - info.core_positions[lid]) ** 2).sum(-1).mean()) > 5.0
    # the ground-truth map of a drawn state is the rendering of its composite positions
    drawn = int(
        states["state"][(states["domain1_frame"] == 42) & (states["domain2_frame"] == 84)].iloc[0]
    )
    assert drawn == state
    scene = info.scene([state], 32, 3.0, None, "cpu")
    expected = render_volume(scene.at_frame(0), 32, 3.0).numpy()
    written = read_map(summary.labels_csv.parent / f"state_{state:04d}.mrc")[0]
    assert np.allclose(written, expected, atol=1e-4 * np.abs(expected).max())
    assert len(read_particles(summary.particles_star)) == 1500


VARIANT_BAD = [
    (dict(envelope_bfactor_angstrom2=-5.0), "envelope B-factor -5.0"),
    (dict(frame_distribution="trimodal"), "frame distribution 'trimodal' is unknown"),
    (dict(frame_weights=[1, 2]), "2 values for 3 frames"),
    (dict(frame_weights=[0, 0, 0]), "not all 0"),
    (dict(frame_weights=[1, 1, 1], frame_distribution="bimodal"), "give one of them"),
    (dict(independent_domains=((59, 30), (122, 159))), "first residue must not exceed"),
    (dict(independent_domains=((30, 59), (50, 159))), "overlap"),
    (dict(independent_domains=((300, 400), (122, 159))), "select no atom"),
    (dict(independent_domains=((30, 59), (122, 159)), core_frame=98), "core frame 98"),
    (dict(core_frame=3), "core frame only applies"),
]


@pytest.mark.parametrize("change, message", VARIANT_BAD, ids=[m for _, m in VARIANT_BAD])
def test_bad_variant_input_leaves_nothing_behind(tmp_path, change, message):
    out = tmp_path / "out"
    with pytest.raises(InputError, match=message) as error:
        run(simulate(CLOSED, DCD, output_directory=out, snr=1.0, **(SMALL | change)))
    assert "\n" not in str(error.value)
    assert not out.exists()


def test_command_line_variants(tmp_path, capsys):
    out = tmp_path / "sim"
    weights = tmp_path / "weights.txt"
    weights.write_text("# one per frame\n1\n0\n3\n")
    common = [
        "simulate",
        "--structure",
        str(CLOSED),
        "--trajectory",
        str(DCD),
        "--box",
        "32",
        "--pixel-size",
        "3",
        "--n-particles",
        "40",
        "--snr",
        "0.1",
    ]
    assert (
        main(
            common
            + [
                "--output-directory",
                str(out),
                "--frames",
                "0,40,80",
                "--frame-weights",
                str(weights),
                "--envelope-bfactor",
                "50",
            ]
        )
        == 0
    )
    assert set(pd.read_csv(out / "ground_truth" / "labels.csv")["frame"]) == {0, 80}
    assert (
        main(
            common
            + [
                "--output-directory",
                str(tmp_path / "two"),
                "--frames",
                "0:98:48",
                "--independent-domains",
                "30-59",
                "122-159",
                "--core-frame",
                "0",
            ]
        )
        == 0
    )
    labels = pd.read_csv(tmp_path / "two" / "ground_truth" / "labels.csv")
    assert {"state", "domain1_frame", "domain2_frame"} <= set(labels.columns)
    assert "domain states" in capsys.readouterr().out
    for bad, word in (
        (["--independent-domains", "30-59", "122"], "--independent-domains"),
        (["--core-frame", "2"], "--core-frame"),
        (["--frame-weights", str(tmp_path / "missing.txt")], "--frame-weights"),
        (["--frame-weights", str(weights), "--frame-distribution", "bimodal"], "--frame-weights"),
    ):
        target = tmp_path / "bad"
        assert main(common + ["--output-directory", str(target)] + bad) == 2
        error = capsys.readouterr().err.strip()
        assert word in error and "\n" not in error, error
        assert not target.exists()


def test_second_pass_over_the_stack_gives_the_same_outputs(tmp_path, monkeypatch, clean):
    """Above the sums budget the second half set is inserted from the written stack: the images,
    the labels and the consensus are those of the one-pass simulation (same seed)."""
    from napari_dynamight.engine import simulate as simulate_module

    monkeypatch.setattr(simulate_module, "CONSENSUS_SUMS_BUDGET", 0)
    streamed = run(simulate(CLOSED, DCD, output_directory=tmp_path, snr=math.inf, **SMALL))
    assert np.array_equal(images(streamed), images(clean))
    assert pd.read_csv(streamed.labels_csv).equals(pd.read_csv(clean.labels_csv))
    expected, _ = read_map(clean.consensus_map)
    consensus, _ = read_map(streamed.consensus_map)
    assert np.abs(consensus - expected).max() <= 1e-6 * np.abs(expected).max()
