"""The reconstruction stage end to end on a tiny run directory: RELION agreement with deformations
off, relion_postprocess on the half maps, the CLI, the deformed path with
the real inverse networks of a tiny trained run, and bad input."""

from __future__ import annotations

import json
import shutil
import subprocess

import mrcfile
import numpy as np
import pytest
import starfile
import torch

from helpers.relion_data import BOX, PIXEL, blob_volume, masked_correlation, particle_blocks, relion
from napari_dynamight.cli import main
from napari_dynamight.engine.fourier import fsc, resolution_at
from napari_dynamight.engine.io.mrc import read_map
from napari_dynamight.engine.progress import run
from napari_dynamight.engine.reconstruction.stage import reconstruct_run

N = 800
# The files of a reconstruction folder.
MAP_FILES = {"half1.mrc", "half2.mrc", "full.mrc", "fsc.csv", "fsc.png", "maps.cxc"}


@pytest.fixture(scope="module")
def run_directory(tmp_path_factory):
    """relion_project --ctf images of a blob map, relion_reconstruct --ctf of them, and a run
    directory (run.json, particles.star with dmHalfSet, latents) pointing at them."""
    folder = tmp_path_factory.mktemp("stage")
    with mrcfile.new(folder / "truth.mrc") as handle:
        handle.set_data(blob_volume())
        handle.voxel_size = PIXEL
    blocks = particle_blocks(N, seed=2, ctf=True)
    starfile.write(blocks, folder / "angles.star")
    relion(
        folder,
        "relion_project",
        "--i",
        "truth.mrc",
        "--o",
        "proj",
        "--ang",
        "angles.star",
        "--ctf",
        "--add_noise",
        "--white_noise",
        "3",
    )
    blocks["particles"]["rlnImageName"] = [f"{i + 1:06d}@proj.mrcs" for i in range(N)]
    starfile.write(blocks, folder / "particles.star")
    relion(folder, "relion_reconstruct", "--i", "particles.star", "--o", "relion.mrc", "--ctf")
    halves = np.arange(N) % 2 + 1
    for half in (1, 2):
        starfile.write(
            {"optics": blocks["optics"], "particles": blocks["particles"][halves == half]},
            folder / f"half{half}.star",
        )
        relion(
            folder,
            "relion_reconstruct",
            "--i",
            f"half{half}.star",
            "--o",
            f"relion_half{half}.mrc",
            "--ctf",
        )
    rundir = folder / "run"
    rundir.mkdir()
    blocks["particles"]["dmHalfSet"] = halves
    blocks["particles"]["dmValidation"] = (np.arange(N) % 10 == 0).astype(int)
    starfile.write(blocks, rundir / "particles.star")
    info = {
        "particles": str(folder / "particles.star"),
        "consensus_box": BOX,
        "voxel_size_angstrom": PIXEL,
        "n_particles": N,
        "result": {"epochs": 1},
    }
    (rundir / "run.json").write_text(json.dumps(info))
    np.save(rundir / "latent_means.npy", np.zeros((N, 2), np.float32))
    return rundir


@pytest.mark.relion
def test_default_standard_maps_agree_with_relion_reconstruct(run_directory):
    """With deformations off, the default filter's half maps and full map are relion_reconstruct
    --ctf of the same particles (the unfiltered maps RELION's PostProcess expects), header included.
    The Wiener filter fails it: half 1 correlates 0.42 with RELION's map."""
    result = run(reconstruct_run(run_directory, deformations=False))
    assert result.directory == run_directory / "reconstruction_standard"
    for ours_path, name in zip(
        (*result.half_maps, result.full_map),
        ("relion_half1", "relion_half2", "relion"),
        strict=True,
    ):
        ours, voxel = read_map(ours_path)
        with mrcfile.open(run_directory.parent / f"{name}.mrc") as handle:
            reference = handle.data.copy()
            relion_voxel, relion_origin = float(handle.voxel_size.x), handle.header.origin
        with mrcfile.open(ours_path) as handle:
            origin = handle.header.origin
        curve = fsc(ours, reference, PIXEL)[1]
        correlation = masked_correlation(ours, reference)
        print(
            f"\nstage (standard) {ours_path.name} vs {name} (relion_reconstruct --ctf): "
            f"correlation {correlation:.6f}, FSC at 3/4 Nyquist {curve[BOX * 3 // 8]:.4f}"
        )
        assert ours.shape == reference.shape == (BOX,) * 3
        assert voxel == pytest.approx(PIXEL) and relion_voxel == pytest.approx(PIXEL)
        assert tuple(origin.item()) == pytest.approx(tuple(relion_origin.item()))
        assert correlation >= 0.98 and curve[1 : BOX * 3 // 8 + 1].min() >= 0.9
    table = np.loadtxt(result.fsc_csv, delimiter=",", skiprows=1)
    assert table.shape == (BOX // 2 + 1, 3) and table[1, 2] > 0.99
    assert (result.directory / "fsc.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.relion
def test_relion_postprocess_agrees_with_our_fsc(run_directory, tmp_path):
    """relion_postprocess on our half maps: its unmasked-map FSC is ours (the stage's fsc.csv and
    engine.fourier.fsc) shell by shell, and so is the 0.143 resolution of that curve."""
    result = run(reconstruct_run(run_directory, deformations=False))
    offsets = np.arange(BOX) - BOX // 2
    radius = np.sqrt(
        offsets[:, None, None] ** 2 + offsets[None, :, None] ** 2 + offsets[None, None, :] ** 2
    )
    mask = np.clip((BOX / 2 - 4 - radius) / 3, 0, 1).astype(np.float32)
    with mrcfile.new(tmp_path / "mask.mrc") as handle:
        handle.set_data(mask)
        handle.voxel_size = PIXEL
    half1, half2 = result.half_maps
    (tmp_path / "post").mkdir()
    done = subprocess.run(
        [
            "relion_postprocess",
            "--i",
            str(half1),
            "--i2",
            str(half2),
            "--mask",
            "mask.mrc",
            "--angpix",
            str(PIXEL),
            "--o",
            "post/postprocess",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert read_map(tmp_path / "post" / "postprocess.mrc")[0].shape == (BOX,) * 3
    blocks = starfile.read(tmp_path / "post" / "postprocess.star", always_dict=True)
    table = blocks["fsc"]
    theirs = table["rlnFourierShellCorrelationUnmaskedMaps"].to_numpy()
    frequency, ours = fsc(read_map(half1)[0], read_map(half2)[0], PIXEL)
    stage_curve = np.loadtxt(result.fsc_csv, delimiter=",", skiprows=1)[:, 2]
    corrected = table["rlnFourierShellCorrelationCorrected"].to_numpy()
    relion_resolution = float(blocks["general"]["rlnFinalResolution"])
    print(
        "\nlargest FSC difference to RELION's unmasked-map FSC "
        f"{np.abs(ours - theirs)[1:].max():.1e}; 0.143 resolution of the corrected curve: RELION "
        f"{relion_resolution:.3f} Å, interpolated "
        f"{resolution_at(frequency, corrected, 0.143):.3f} Å"
    )
    assert len(theirs) == len(ours) == BOX // 2 + 1
    np.testing.assert_allclose(
        table["rlnResolution"].to_numpy()[1:], frequency[1:], atol=1e-6
    )  # shell 0: 0.001
    np.testing.assert_allclose(theirs[1:], ours[1:], atol=1e-5)  # the STAR file has 6 decimals
    np.testing.assert_allclose(stage_curve, ours, atol=1e-5)
    assert resolution_at(frequency, theirs, 0.143) == pytest.approx(
        resolution_at(frequency, ours, 0.143), abs=1e-3
    )
    # RELION reports the last shell before its masked, corrected FSC first drops below 0.143
    last = np.nonzero(corrected[1:] < 0.143)[0][0]
    assert relion_resolution == pytest.approx(1 / frequency[last], abs=1e-3)
    assert 1 / frequency[last + 1] < resolution_at(frequency, corrected, 0.143) < relion_resolution


def test_the_default_filter_is_the_same_in_the_engine_and_the_cli():
    import argparse
    import inspect
    from dataclasses import fields

    from napari_dynamight.cli.reconstruct import add_arguments
    from napari_dynamight.engine.reconstruction.settings import ReconstructionSettings
    from napari_dynamight.engine.reconstruction.stage import DEFAULT_FILTER, FILTERS

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    option = next(a for a in parser._actions if a.dest == "filter")
    assert DEFAULT_FILTER == "constant" and FILTERS[0] == DEFAULT_FILTER
    assert option.default == DEFAULT_FILTER and tuple(option.choices) == FILTERS
    assert ReconstructionSettings().filter == DEFAULT_FILTER
    # the settings record is the one source of the defaults: reconstruct_run repeats none of them
    parameters = inspect.signature(reconstruct_run).parameters
    assert not {f.name for f in fields(ReconstructionSettings)} & set(parameters)


def test_cli_writes_the_maps_and_reports_errors_in_one_line(run_directory, tmp_path, capsys):
    assert (
        main(["reconstruct", str(run_directory), "--no-deformations", "--batch-size", "150"]) == 0
    )
    for name in ("half1.mrc", "half2.mrc", "full.mrc", "fsc.csv", "fsc.png"):
        assert (run_directory / "reconstruction_standard" / name).is_file()
    capsys.readouterr()
    assert main(["reconstruct", str(run_directory)]) == 2
    error = capsys.readouterr().err.strip()
    assert (
        "optimize-inverse-deformations" in error
        and "--no-deformations" in error
        and "\n" not in error
    )
    assert main(["reconstruct", str(tmp_path / "missing"), "--no-deformations"]) == 2
    assert "not a finished deformation run" in capsys.readouterr().err


def test_cancelling_leaves_no_output(run_directory, tmp_path):
    """Closing the stage at its first progress step, in half 2, or at "inverting" (the last step
    before the maps are written) adds no file to a fresh copy of the run; running it to the end adds
    the maps."""
    fresh = tmp_path / "run"
    shutil.copytree(run_directory, fresh, ignore=shutil.ignore_patterns("reconstruction*"))
    before = sorted(fresh.rglob("*"))
    for stop in (1, 6, 9):
        operation = reconstruct_run(fresh, deformations=False, batch_size=100)
        for _ in range(stop):
            step = next(operation)
        operation.close()
        assert sorted(fresh.rglob("*")) == before, f"cancelled at step {stop} ({step.message})"
    assert step.message == "inverting"
    result = run(reconstruct_run(fresh, deformations=False, batch_size=100))
    assert result.directory == fresh / "reconstruction_standard"
    assert {p.name for p in result.directory.iterdir()} == MAP_FILES


def best_frame_correlation(volume: np.ndarray, frames: list[np.ndarray]) -> float:
    """Correlation with the ground-truth frame map that the volume matches best."""
    return max(float(np.corrcoef(volume.ravel(), frame.ravel())[0, 1]) for frame in frames)


def test_deformed_half_maps_match_the_ground_truth_frames(moving_run, simulated):
    """The real inverse networks of a tiny trained run: each half map is at least as close to its
    best-matching ground-truth frame as the standard half map, with the run's voxel size."""
    torch.set_num_threads(1)
    deformed = run(reconstruct_run(moving_run, batch_size=100, clusters=8))
    standard = run(reconstruct_run(moving_run, deformations=False, batch_size=100))
    frames = [
        read_map(path)[0]
        for path in sorted((simulated.folder / "sim" / "ground_truth").glob("frame_*.mrc"))
    ]
    assert len(frames) == 25
    for ours, theirs in zip(deformed.half_maps, standard.half_maps, strict=True):
        volume, voxel = read_map(ours)
        assert voxel == pytest.approx(2.5) and volume.shape == (32,) * 3
        c_def, c_std = (
            best_frame_correlation(volume, frames),
            best_frame_correlation(read_map(theirs)[0], frames),
        )
        print(f"\n{ours.name}: best-frame correlation deformed {c_def:.4f}, standard {c_std:.4f}")
        assert c_def >= c_std - 1e-3 and c_def > 0.8
    header = np.loadtxt(deformed.fsc_csv, delimiter=",", max_rows=1, dtype=str, comments=None)
    assert list(header)[-2:] == ["fsc_deformed", "fsc_standard"]


def chimerax_files(script) -> list:
    """The files a ChimeraX script opens (quoted, relative to its folder)."""
    import re

    opened = [line for line in script.read_text().splitlines() if line.startswith("open ")]
    return [script.parent / name for line in opened for name in re.findall(r'"([^"]+)"', line)]


def test_maps_script_opens_the_three_maps_at_levels_inside_their_range(run_directory, tmp_path):
    """maps.cxc beside a reconstruction: opens half1, half2 and full by relative names, each at a
    finite level inside the map's values, the half maps hidden and coloured apart from the full
    map."""
    import re

    output = tmp_path / "a folder with spaces"
    result = run(reconstruct_run(run_directory, deformations=False, output=output, batch_size=200))
    script = output / "maps.cxc"
    text = script.read_text()
    assert chimerax_files(script) == [*result.half_maps, result.full_map]
    assert all(path.is_file() for path in chimerax_files(script))
    assert str(tmp_path) not in text and '"half1.mrc"' in text
    levels = [float(v) for v in re.findall(r"^volume #\d style surface level (\S+)", text, re.M)]
    colours = re.findall(r"color (#[0-9a-f]{6})", text)
    assert len(levels) == 3 and len(set(colours)) == 3
    for level, path in zip(levels, (*result.half_maps, result.full_map), strict=True):
        volume = read_map(path)[0]
        assert np.isfinite(level) and volume.min() < level < volume.max()
    assert "hide #1,2 models" in text and "vseries" not in text and "movie" not in text


def subset_star(run_directory, rows, name="closed state.star"):
    """The rows of the run's input STAR (without dm* columns) as a subset beside it."""
    blocks = starfile.read(run_directory.parent / "particles.star", always_dict=True)
    path = run_directory.parent / name
    starfile.write({"optics": blocks["optics"], "particles": blocks["particles"].iloc[rows]}, path)
    return path


@pytest.mark.relion
def test_subset_agrees_with_relion_reconstruct_of_the_same_subset(run_directory, capsys):
    """reconstruct --subset: half maps and full map of exactly the subset's particles (each in its
    run half set), as relion_reconstruct --ctf of the same particles, in a folder of their own; the
    run's whole reconstruction is not touched; the subset beside the maps leads to the same
    images."""
    rows = np.sort(np.random.default_rng(5).choice(N, 500, replace=False))
    path = subset_star(run_directory, rows)
    folder = run_directory.parent
    relion(folder, "relion_reconstruct", "--i", path.name, "--o", "relion_subset.mrc", "--ctf")
    halves = np.arange(N) % 2 + 1
    for half in (1, 2):
        subset_star(run_directory, rows[halves[rows] == half], f"subset_half{half}.star")
        relion(
            folder,
            "relion_reconstruct",
            "--i",
            f"subset_half{half}.star",
            "--o",
            f"relion_subset{half}.mrc",
            "--ctf",
        )
    before = {
        p: p.stat().st_mtime_ns for p in (run_directory / "reconstruction_standard").glob("*")
    }
    assert (
        main(["reconstruct", str(run_directory), "--subset", str(path), "--batch-size", "200"]) == 0
    )
    output = run_directory / "subsets" / "closed state" / "reconstruction_standard"
    assert f"chimerax {output / 'maps.cxc'}" in capsys.readouterr().out
    assert {p.name for p in output.iterdir()} == MAP_FILES | {"particles.star"}
    assert {
        p: p.stat().st_mtime_ns for p in (run_directory / "reconstruction_standard").glob("*")
    } == before
    from napari_dynamight.engine.data.particle_file import read_particles
    from napari_dynamight.engine.reconstruction import reconstruct_particles

    for ours, theirs in (
        ("half1", "relion_subset1"),
        ("half2", "relion_subset2"),
        ("full", "relion_subset"),
    ):
        volume, voxel = read_map(output / f"{ours}.mrc")
        reference = read_map(folder / f"{theirs}.mrc")[0]
        correlation = masked_correlation(volume, reference)
        particles = read_particles(
            folder / f"{theirs.replace('relion_subset', 'subset_half')}.star"
            if ours != "full"
            else path
        )
        direct = run(reconstruct_particles(particles, np.arange(len(particles)), batch_size=200))[0]
        print(
            f"\nsubset of 500: {ours} ({len(particles)} particles) vs relion_reconstruct --ctf of "
            f"the same particles: correlation {correlation:.6f}; vs the standard reconstruction of "
            f"its STAR file {masked_correlation(volume, direct):.7f}"
        )
        assert voxel == pytest.approx(PIXEL) and masked_correlation(volume, direct) > 0.99999
        # the whole subset as RELION; a 250-particle half of these noisy images 0.965-0.99
        # (draw-dependent)
        assert correlation >= (0.98 if ours == "full" else 0.95)
    table = np.loadtxt(output / "fsc.csv", delimiter=",", skiprows=1)
    assert table.shape == (BOX // 2 + 1, 3) and np.isfinite(table[:, 2]).all() and table[1, 2] > 0.9
    written, source = read_particles(output / "particles.star"), read_particles(path)
    assert list(written.image_files) == list(source.image_files)
    assert list(written.image_indices) == list(source.image_indices)


def test_subset_particle_not_in_the_run_is_refused_in_one_line(run_directory, capsys):
    path = subset_star(run_directory, [3, 4, 5], "stray.star")
    blocks = starfile.read(path, always_dict=True)
    blocks["particles"].loc[1, "rlnImageName"] = "000999@proj.mrcs"
    starfile.write(blocks, path)
    assert main(["reconstruct", str(run_directory), "--subset", str(path)]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and str(path) in error and "000999@proj.mrcs" in error, error
    assert not (run_directory / "subsets" / "stray").exists()
    assert main(["reconstruct", str(run_directory), "--deformed"]) == 2
    assert "--subset" in capsys.readouterr().err


def test_subset_of_one_half_set_is_refused_and_writes_nothing(run_directory, capsys):
    path = subset_star(
        run_directory, [0, 2, 4, 6], "one half.star"
    )  # dmHalfSet = row % 2 + 1: all half 1
    assert main(["reconstruct", str(run_directory), "--subset", str(path)]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and str(path) in error and "half set 2" in error, error
    assert not (run_directory / "subsets" / "one half").exists()


def test_deformed_maps_of_a_subset_with_the_runs_networks(moving_run, tmp_path):
    """--subset --deformed: the subset's particles through the run's inverse fields, in
    RUN/subsets/NAME/reconstruction, with the deformed and the standard FSC as the whole run's
    report; the subset, saved in another folder, is found by its image names."""
    from napari_dynamight.engine.data.subset import read_run_particles, write_subset

    torch.set_num_threads(1)
    table = read_run_particles(moving_run)
    rows = np.arange(0, len(table), 2)
    path = tmp_path / "elsewhere" / "every other.star"
    write_subset(path, table, rows)
    assert (
        main(
            [
                "reconstruct",
                str(moving_run),
                "--subset",
                str(path),
                "--deformed",
                "--clusters",
                "4",
                "--batch-size",
                "100",
            ]
        )
        == 0
    )
    folder = moving_run / "subsets" / "every other" / "reconstruction"
    header = np.loadtxt(folder / "fsc.csv", delimiter=",", max_rows=1, dtype=str, comments=None)
    assert list(header)[-2:] == ["fsc_deformed", "fsc_standard"]
    volume, voxel = read_map(folder / "half1.mrc")
    assert volume.shape == (32,) * 3 and voxel == pytest.approx(2.5) and np.isfinite(volume).all()
    assert len(read_run_particles(moving_run).particles) == len(table)
    from napari_dynamight.engine.data.particle_file import read_particles

    assert list(read_particles(folder / "particles.star").image_files) == list(
        table.image_files[rows]
    )
