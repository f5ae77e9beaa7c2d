"""The command line: registry, help with examples, errors, `info` numbers, progress, demo."""

from __future__ import annotations

import io
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile

from conftest import STAR_FILES
from napari_dynamight import __version__
from napari_dynamight.cli import COMMANDS, _progress, available_commands, build_parser, main
from napari_dynamight.engine.errors import InputError
from napari_dynamight.engine.progress import Progress

EXPECTED_COMMANDS = (
    "info",
    "simulate",
    "fit-consensus",
    "optimize-deformations",
    "decode",
    "optimize-inverse-deformations",
    "reconstruct",
    "model-bias",
    "explore",
    "demo",
)
SCRIPT = Path(sys.executable).with_name("napari-dynamight")


def test_registry_is_explicit_and_complete():
    assert COMMANDS == EXPECTED_COMMANDS
    assert tuple(available_commands()) == EXPECTED_COMMANDS


@pytest.mark.parametrize("command", EXPECTED_COMMANDS)
def test_help_shows_a_real_example(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: napari-dynamight {command}")
    examples, lines = [], iter(out.splitlines())
    for line in lines:  # an example may continue over lines ending in a backslash
        if line.strip().startswith(f"napari-dynamight {command}"):
            example = line.strip()
            while example.endswith("\\"):
                example = example[:-1] + " " + next(lines).strip()
            examples.append(example)
    assert examples, f"no example line in the help of {command}"
    for example in examples:  # every example is valid syntax for the command's own parser
        args = build_parser(command).parse_args(shlex.split(example)[1:])
        assert args.command == command


def test_top_level_help_lists_every_command_without_importing_torch():
    code = (
        "import sys\n"
        "from napari_dynamight.cli import main\n"
        "try:\n    main(['--help'])\n"
        "except SystemExit as e:\n    assert e.code == 0\n"
        "assert 'torch' not in sys.modules, 'torch imported for --help'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for command in EXPECTED_COMMANDS:
        assert f"    {command}" in done.stdout


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"napari-dynamight {__version__}"


def test_console_script_reports_input_error_in_one_line(tmp_path):
    missing = tmp_path / "nowhere.star"
    done = subprocess.run(
        [str(SCRIPT), "info", str(missing)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: ") and str(missing) in lines[0]
    assert "Traceback" not in done.stderr


def test_input_error_and_cancel_exit_codes(monkeypatch, capsys):
    from napari_dynamight.cli import info

    def bad_input(args):
        raise InputError("particles.star: column rlnVoltage missing;\n add it")

    monkeypatch.setattr(info, "run", bad_input)
    assert main(["info", "x.star"]) == 2
    assert capsys.readouterr().err == "error: particles.star: column rlnVoltage missing; add it\n"

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(info, "run", interrupted)
    assert main(["info", "x.star"]) == 130
    assert capsys.readouterr().err == "cancelled\n"


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["no-such-command"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_info_six_optics_groups_matches_the_raw_star_columns(capsys):
    path = STAR_FILES["relion31_6optics"]
    blocks = starfile.read(path, always_dict=True)
    optics, particles = blocks["optics"], blocks["particles"]
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "particles:       139" in out
    assert "optics groups:   6" in out
    counts = particles["rlnOpticsGroup"].value_counts()
    for _, group in optics.iterrows():
        number = int(group["rlnOpticsGroup"])
        expected = (
            f"group {number}: {counts[number]} particles, pixel size "
            f"{group['rlnImagePixelSize']:.4g} Å, box {int(group['rlnImageSize'])} px, voltage "
            f"{group['rlnVoltage']:.4g} kV, Cs {group['rlnSphericalAberration']:.4g} mm, Q0 "
            f"{group['rlnAmplitudeContrast']:.4g}"
        )
        assert expected in out
    halves = particles["rlnRandomSubset"].value_counts()
    assert f"half sets:       1: {halves[1]}, 2: {halves[2]}" in out
    low = min(particles["rlnDefocusU"].min(), particles["rlnDefocusV"].min())
    high = max(particles["rlnDefocusU"].max(), particles["rlnDefocusV"].max())
    assert f"defocus range:   {low:.1f} to {high:.1f} Å" in out
    assert "poses:           yes" in out
    stacks = particles["rlnImageName"].str.split("@").str[1].nunique()
    assert f"image stacks:    0 of {stacks} found" in out


def test_info_relion30_pixel_size_from_detector_and_magnification(capsys):
    path = STAR_FILES["empiar10076_relion30"]
    assert main(["info", str(path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["relion_version"].startswith("3.0")
    assert summary["particles"] == 7
    assert summary["poses"] is False
    assert summary["half_sets"] is None
    [group] = summary["optics_groups"]
    assert group["pixel_size_angstrom"] == pytest.approx(5.0 * 1e4 / 38168, rel=1e-6)
    assert group["amplitude_contrast"] == pytest.approx(0.07)


def test_info_finds_stacks_and_honours_data_root(tmp_path, capsys):
    path = STAR_FILES["relion31"]
    assert main(["info", str(path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["stacks"] == {"total": 1, "found": 1, "missing": [], "unusable": []}
    assert summary["optics_groups"][0]["pixel_size_angstrom"] == pytest.approx(2.806)
    assert main(["info", str(path), "--data-root", str(tmp_path), "--json"]) == 0
    moved = json.loads(capsys.readouterr().out)
    assert moved["stacks"]["found"] == 0
    assert moved["stacks"]["missing"] == [str(tmp_path / "relion31.mrcs")]


def _events(log: list[str]):
    try:
        yield Progress("load", 1, 2, message="reading")
        yield Progress("load", 2, 2)
        for step in range(1, 4):
            yield Progress("fit", step, 3, metrics={"loss": 1.0 / step})
        return "done"
    finally:
        log.append("closed")


def test_drive_returns_the_result_and_logs_without_a_terminal():
    log: list[str] = []
    stream = io.StringIO()
    assert _progress.drive(_events(log), "demo", file=stream) == "done"
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert lines[0].startswith("demo: load")
    assert lines[-1].startswith("demo: fit") and "3/3" in lines[-1] and "loss=0.3333" in lines[-1]
    assert log == ["closed"]


def test_drive_closes_the_generator_on_ctrl_c():
    log: list[str] = []
    operation = _events(log)

    class InterruptingStream(io.StringIO):
        def write(self, text):
            if "fit" in text:
                raise KeyboardInterrupt
            return super().write(text)

    with pytest.raises(KeyboardInterrupt):
        _progress.drive(operation, "demo", file=InterruptingStream())
    assert log == ["closed"]
    assert operation.gi_frame is None


@pytest.mark.slow
def test_demo_headless_writes_summary_and_png(tmp_path, capsys):
    output = tmp_path / "demo"
    status = main(
        [
            "demo",
            "--output-directory",
            str(output),
            "--headless",
            "--n-particles",
            "300",
            "--snr",
            "1",
            "--frames",
            "0:98:10",
            "--n-gaussians",
            "200",
            "--fit-steps",
            "30",
            "--epochs",
            "0",
        ]
    )
    assert status == 0
    summary = json.loads((output / "demo_summary.json").read_text())
    assert summary["simulation"]["n_particles"] == 300
    assert summary["simulation"]["frames"] == 10
    assert summary["particles"]["particles"] == 300
    assert summary["particles"]["stacks"]["found"] == 1
    assert summary["consensus"]["n_gaussians"] == 200
    assert summary["consensus"]["correlation_with_map"] > 0.8
    from matplotlib.image import imread

    image = imread(output / "consensus_slices.png")
    assert image.shape[0] > 300 and image.shape[1] > 900
    assert image[..., :3].std() > 0.05
    red, green, blue = image[..., 0], image[..., 1], image[..., 2]
    orange = (red > 0.9) & (green > 0.5) & (green < 0.75) & (blue < 0.2)
    assert orange.sum() > 50, "no Gaussian markers drawn"
    assert (output / "data" / "particles.star").is_file()
    assert (output / "consensus" / "consensus_gaussians.pt").is_file()


def test_demo_headless_trains_and_writes_the_motion_outputs(
    tmp_path, make_napari_viewer, monkeypatch
):
    import imageio.v3 as iio

    from napari_dynamight import _napari_demo

    monkeypatch.setattr(_napari_demo, "new_viewer", lambda: make_napari_viewer(show=True))

    from napari_dynamight.engine.data.particle_file import read_particles

    output = tmp_path / "demo"
    status = main(
        [
            "demo",
            "--output-directory",
            str(output),
            "--headless",
            "--n-particles",
            "200",
            "--snr",
            "1",
            "--frames",
            "0:98:10",
            "--n-gaussians",
            "150",
            "--fit-steps",
            "20",
            "--epochs",
            "3",
            "--refinement-rounds",
            "1",
            "--inverse-epochs",
            "2",
            "--movie-frames",
            "3",
        ]
    )
    assert status == 0
    summary = json.loads((output / "demo_summary.json").read_text())
    motion = summary["deformations"]
    assert motion["epochs"] == 3
    maps = summary["reconstruction"]
    for path in maps["half_maps"] + [maps["full_map"]]:
        with mrcfile.open(path, permissive=True) as handle:
            assert handle.data.shape == (64, 64, 64)
            assert float(handle.voxel_size.x) == pytest.approx(1.5)
    check_demo_numbers(output, maps, motion["latent_ordering"])
    from napari_dynamight.engine.explore import embed, load_run

    run_data = load_run(output / "run")
    data = read_particles(output / "data" / "particles.star")
    images = np.array(list(zip(data.image_files, data.image_indices)), dtype=object)
    expected = set()
    for half in (1, 2):  # each half's own particles, in its own latent space
        view = run_data.own_half(half)
        first = embed(view.latents, "pca").coords[:, 0]
        expected |= {tuple(image) for image in images[view.rows][first > np.median(first)]}
    selection = read_particles(
        output / "selection.star"
    )  # beside data/: names lead to data/'s images
    assert set(zip(selection.image_files, selection.image_indices)) == expected
    assert motion["outputs"]["selected_particles"] == len(selection) == len(expected) == 100
    assert motion["outputs"]["napari_movie_frames"] == 3
    assert len(iio.imread(output / "motion_napari.gif")) == 3
    frames = iio.imread(output / "motion.gif")
    assert (
        len(frames) >= 12 and np.abs(frames[0].astype(float) - frames[11].astype(float)).max() > 0
    )


def best_pc_abs_spearman(latents: np.ndarray, frames: np.ndarray) -> float:
    """|Spearman| with the frames of the latents' best principal component (numpy SVD, scipy
    rank)."""
    from scipy.stats import spearmanr

    centred = latents - latents.mean(0)
    components = centred @ np.linalg.svd(centred, full_matrices=False)[2].T
    return max(
        abs(spearmanr(components[:, k], frames).statistic) for k in range(components.shape[1])
    )


def check_demo_numbers(output: Path, maps: dict, ordering: dict) -> None:
    """The demo summary's resolution and latent ordering, recomputed from its files and held against
    the simulation's ground truth (200 particles, SNR 1, frames 0:98:10, box 64, 1.5 Å; 3
    epochs)."""
    import pandas as pd

    from napari_dynamight.engine.explore import load_run
    from napari_dynamight.engine.fourier import fsc, resolution_at
    from napari_dynamight.engine.io.mrc import read_map

    frequency, curve = fsc(*(read_map(path)[0] for path in maps["half_maps"]), 1.5)
    resolution = resolution_at(frequency, curve, 0.143)
    assert maps["deformed_resolution_angstrom"] == pytest.approx(resolution, rel=1e-6)
    # Truth: the noise-free frame maps weighted by how many particles each frame gave. The full
    # map's FSC 0.5 against it is the resolution the half-map FSC 0.143 estimates (measured 4.52 vs
    # 4.70 Å).
    truth_folder = output / "data" / "ground_truth"
    frames = pd.read_csv(truth_folder / "labels.csv")["frame"].to_numpy()
    truth = sum(
        read_map(truth_folder / f"frame_{frame:03d}.mrc")[0] * count
        for frame, count in zip(*np.unique(frames, return_counts=True), strict=True)
    ) / len(frames)
    true_resolution = resolution_at(
        frequency, fsc(read_map(maps["full_map"])[0], truth, 1.5)[1], 0.5
    )
    print(
        f"\nhalf-map FSC 0.143 {resolution:.2f} Å, standard "
        f"{maps['standard_resolution_angstrom']:.2f} Å, full map vs truth FSC 0.5 "
        f"{true_resolution:.2f} Å"
    )
    assert 4.2 < resolution < 5.2 and 4.0 < true_resolution < 5.0  # Nyquist is 3 Å
    assert resolution == pytest.approx(true_resolution, rel=0.1)
    assert resolution <= maps["standard_resolution_angstrom"] + 0.25
    # Latent ordering: recomputed on each half's own particles, and above what shuffled frames give
    # (99th percentile of 200 permutations; measured 0.58 / 0.45 against about 0.3).
    run_data, rng = load_run(output / "run"), np.random.default_rng(0)
    for half in (1, 2):
        view = run_data.own_half(half)
        ours = best_pc_abs_spearman(view.latents, frames[view.rows])
        assert ordering[f"half{half}"]["abs_spearman_with_true_frame"] == pytest.approx(
            ours, abs=1e-9
        )
        null = [
            best_pc_abs_spearman(view.latents, rng.permutation(frames[view.rows]))
            for _ in range(200)
        ]
        print(
            f"half {half}: |Spearman| {ours:.3f}, shuffled frames 99th percentile "
            f"{np.quantile(null, 0.99):.3f}"
        )
        assert ours > np.quantile(null, 0.99)


def test_demo_without_example_data_fails_clearly(tmp_path):
    done = subprocess.run(
        [
            str(SCRIPT),
            "demo",
            "--output-directory",
            str(tmp_path),
            "--structure",
            str(tmp_path / "x.pdb"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and "--structure" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not os.listdir(tmp_path)


def test_demo_without_display_asks_for_headless(tmp_path):
    environment = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")
    }
    done = subprocess.run(
        [str(SCRIPT), "demo", "--output-directory", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: no display") and "--headless" in done.stderr
    assert not (tmp_path / "out").exists()


def test_example_data_are_package_data():
    """The demo's default inputs are the files bundled in the package, not the source checkout's."""
    import napari_dynamight
    from napari_dynamight.cli import demo

    package = Path(napari_dynamight.__file__).parent
    assert package / "sample_data" / "adk_closed.pdb" == demo.EXAMPLE_STRUCTURE
    assert package / "sample_data" / "adk_dims.dcd" == demo.EXAMPLE_TRAJECTORY
    assert demo.EXAMPLE_STRUCTURE.is_file() and demo.EXAMPLE_TRAJECTORY.is_file()


def test_demo_layers_in_napari(make_napari_viewer):
    """The GUI half of the demo: map in Å centred on the box, Gaussians on top of it."""
    import torch

    from napari_dynamight import _napari_demo
    from napari_dynamight.engine.gaussians import GaussianModel

    volume = np.zeros((32, 32, 32), np.float32)
    volume[16, 16, 20] = 1.0  # x = +4 voxels from the box centre
    model = GaussianModel(torch.tensor([[8.0, 0.0, 0.0]]), torch.tensor([1.0]), torch.tensor([1.5]))
    result = {
        "volume": volume,
        "voxel_size_angstrom": 2.0,
        "model": model,
        "summary": {"consensus": {"threshold": 0.5}},
    }
    viewer = make_napari_viewer(show=True)
    _napari_demo.add_layers(viewer, result)
    image, points = viewer.layers["consensus map"], viewer.layers["consensus Gaussians"]
    np.testing.assert_allclose(image.scale, [2.0, 2.0, 2.0])
    # The bright voxel and the Gaussian at x = +8 Å land at the same world position.
    np.testing.assert_allclose(image.data_to_world([16, 16, 20]), [0.0, 0.0, 8.0])
    np.testing.assert_allclose(points.data, [[0.0, 0.0, 8.0]])
