"""optimize-deformations and decode from the command line; bad inputs fail in one line before
epoch 1."""

import numpy as np
import pytest

from helpers.optimize_cli import one_line_error, optimize_command, quick_options
from napari_dynamight.cli import main
from napari_dynamight.engine.consensus import load_model, save_model
from napari_dynamight.engine.deformation.decode import DeformationRun
from napari_dynamight.engine.io.mrc import read_map, write_map

# the quick settings without the finished run's encoder latents and thread count
QUICK = quick_options()


def command(simulated, out, *extra):
    return optimize_command(simulated, out, *extra, quick=QUICK)


@pytest.fixture(scope="module")
def cli_run(simulated, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(command(simulated, out)) == 0
    return out


def test_optimize_then_decode_particles_and_latent_points(cli_run, tmp_path, capsys):
    assert (cli_run / "latent_means.npy").is_file()
    (tmp_path / "picked.txt").write_text("3\n17, 250\n")
    assert (
        main(
            [
                "decode",
                str(cli_run),
                "--particles",
                str(tmp_path / "picked.txt"),
                "--output-directory",
                str(tmp_path / "maps"),
            ]
        )
        == 0
    )
    names = sorted(p.name for p in (tmp_path / "maps").iterdir())
    assert names == [
        "particle_000003.mrc",
        "particle_000017.mrc",
        "particle_000250.mrc",
        "particles.cxc",
    ]
    volume, voxel = read_map(tmp_path / "maps" / "particle_000017.mrc")
    assert volume.shape == (32, 32, 32) and voxel == pytest.approx(2.5)
    expected = DeformationRun.load(cli_run).particle_volume(17).numpy()
    assert np.allclose(volume, expected, atol=1e-5 * np.abs(expected).max())
    np.save(tmp_path / "points.npy", np.zeros((2, 6), np.float32))
    assert (
        main(
            [
                "decode",
                str(cli_run),
                "--latent",
                str(tmp_path / "points.npy"),
                "--half",
                "2",
                "--output-directory",
                str(tmp_path / "latent_maps"),
            ]
        )
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "latent_maps").iterdir()) == [
        "latent_0000.mrc",
        "latent_0001.mrc",
        "latents.cxc",
    ]
    assert "wrote 2 map(s)" in capsys.readouterr().out


def test_bad_inputs_fail_in_one_line_before_anything_is_written(simulated, tmp_path, capsys):
    out = tmp_path / "run"
    base = command(simulated, out)

    def with_option(name, value):
        args = list(base)
        args[args.index(name) + 1] = value
        return args

    one_line_error(
        capsys, main(with_option("--particles", str(tmp_path / "missing.star"))), "missing.star"
    )
    write_map(tmp_path / "small.mrc", np.zeros((16, 16, 16)), 2.5)
    one_line_error(
        capsys, main(with_option("--consensus", str(tmp_path / "small.mrc"))), "small.mrc", "40.0 Å"
    )
    one_line_error(
        capsys, main(base + ["--mask", str(tmp_path / "small.mrc")]), "small.mrc", "mask"
    )
    one_line_error(capsys, main(base + ["--n-gaussians", "12"]), "12", "300")
    one_line_error(capsys, main(base + ["--box", "31"]), "--box 31")
    one_line_error(capsys, main(base + ["--box", "64"]), "--box 64")
    one_line_error(capsys, main(with_option("--epochs", "0")), "--epochs")
    one_line_error(capsys, main(base + ["--validation-fraction", "0.7"]), "--validation-fraction")
    one_line_error(capsys, main(base + ["--device", "cuda:7"]), "cuda")
    write_map(tmp_path / "empty_mask.mrc", np.zeros((32, 32, 32)), 2.5)
    one_line_error(
        capsys, main(base + ["--mask", str(tmp_path / "empty_mask.mrc")]), "empty_mask.mrc"
    )
    model = load_model(simulated.model)
    model.positions_angstrom[0, 0] = float("nan")
    save_model(tmp_path / "nan.pt", model)
    one_line_error(
        capsys, main(with_option("--consensus-model", str(tmp_path / "nan.pt"))), "nan.pt"
    )
    assert not out.exists()


def test_existing_run_needs_resume_and_the_same_options(cli_run, simulated, capsys):
    one_line_error(capsys, main(command(simulated, cli_run)), "--resume")
    one_line_error(
        capsys,
        main(command(simulated, cli_run, "--resume", "--latent-dim", "3")),
        "latent_dim",
        "3",
    )


def test_decode_rejects_bad_indices_and_latents(cli_run, tmp_path, capsys):
    (tmp_path / "bad.txt").write_text("1\n400\n")
    one_line_error(
        capsys,
        main(
            [
                "decode",
                str(cli_run),
                "--particles",
                str(tmp_path / "bad.txt"),
                "--output-directory",
                str(tmp_path / "maps"),
            ]
        ),
        "400",
    )
    assert not (tmp_path / "maps").exists()
    np.save(tmp_path / "wrong.npy", np.zeros((2, 4)))
    one_line_error(
        capsys,
        main(
            [
                "decode",
                str(cli_run),
                "--latent",
                str(tmp_path / "wrong.npy"),
                "--output-directory",
                str(tmp_path / "maps"),
            ]
        ),
        "wrong.npy",
        "6",
    )
    one_line_error(
        capsys,
        main(
            [
                "decode",
                str(tmp_path),
                "--latent",
                str(tmp_path / "wrong.npy"),
                "--output-directory",
                str(tmp_path / "maps"),
            ]
        ),
        "run.json",
    )
