"""napari-dynamight-relion driven with the command lines RELION-5's DynaMight job builds
(src/pipeline_jobs.cpp, getCommandsDynaMightJob), in a RELION project folder: the job's files, the
half maps relion_postprocess reads, the exit and abort files, the CPU fallback and
--checkpoint-file."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import threading
import time
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile

from napari_dynamight.cli import relion_job
from napari_dynamight.cli.relion_job import main
from napari_dynamight.engine.deformation.settings import DeformationSettings

JOB = "DynaMight/job012/"  # RELION's output name ends with a slash
EXE = "napari-dynamight-relion"
# Quick training (our options, as a user would give them in "Additional arguments"); --n-epochs is
# the reference implementation's name for --epochs.
QUICK = (
    "--n-epochs 2 --batch-size 64 --decoder-width 16 --decoder-depth 1 --warmup-epochs 1 "
    "--checkpoint-every 1 --refinement-rounds 1 --refinement-epochs 1 --latent-inference encoder "
    "--posterior-candidates 16 --seed 0"
)


def new_job(job: str = JOB, other: str = QUICK, gpu: str = "0") -> str:
    """The command line of a new job, as RELION writes it (spaces included)."""
    return (
        f"{EXE} optimize-deformations  --refinement-star-file Refine3D/job010/run_data.star "
        f"--output-directory {job} --initial-model Refine3D/job010/run_class001.mrc --n-gaussians "
        "300 --regularization-factor 1 --n-threads 1"
        + (f" --gpu-id {gpu}" if gpu else "")
        + f" {other}"
    )


def relion(command: str, project: Path) -> int:
    """Run a RELION command line (its first word, the executable, dropped) with cwd = the
    project."""
    before = Path.cwd()
    os.chdir(project)
    try:
        return main(shlex.split(command)[1:])
    finally:
        os.chdir(before)


def soft_mask(folder: Path, box: int = 32, voxel: float = 2.5) -> Path:
    """A soft spherical solvent mask, as a MaskCreate job would write (radius box/2 - 4 px, 3 px
    edge)."""
    offsets = np.arange(box) - box // 2
    radius = np.sqrt(
        offsets[:, None, None] ** 2 + offsets[None, :, None] ** 2 + offsets[None, None, :] ** 2
    )
    folder.mkdir(parents=True)
    with mrcfile.new(folder / "mask.mrc") as handle:
        handle.set_data(np.clip((box / 2 - 4 - radius) / 3, 0, 1).astype(np.float32))
        handle.voxel_size = voxel
    return folder / "mask.mrc"


def exit_files(job: Path) -> set[str]:
    return {p.name for p in job.glob("RELION_JOB_*")}


def make_project(simulated, project: Path) -> Path:
    """A RELION project: Refine3D/job010/run_data.star whose image names are relative to the project
    folder (Extract/job007/...), as RELION writes them, its map, and the job folder RELION
    creates."""
    (project / "Extract" / "job007").mkdir(parents=True)
    (project / "Refine3D" / "job010").mkdir(parents=True)
    shutil.copy(
        simulated.star.parent / "particles.mrcs", project / "Extract" / "job007" / "particles.mrcs"
    )
    shutil.copy(simulated.consensus, project / "Refine3D" / "job010" / "run_class001.mrc")
    blocks = starfile.read(simulated.star, always_dict=True)
    names = blocks["particles"]["rlnImageName"].str.split("@")
    blocks["particles"]["rlnImageName"] = names.str[0] + "@Extract/job007/particles.mrcs"
    starfile.write(blocks, project / "Refine3D" / "job010" / "run_data.star")
    (project / JOB).mkdir(parents=True)
    (project / JOB / "note.txt").write_text("written by RELION\n")
    return project


@pytest.fixture(scope="module")
def project(simulated, tmp_path_factory, one_torch_thread):
    """A project whose job 12 ran a new job (2 epochs) and the inverse deformations (2 epochs)."""
    project = make_project(simulated, tmp_path_factory.mktemp("relion") / "project")
    assert relion(new_job(), project) == 0
    assert exit_files(project / JOB) == {"RELION_JOB_EXIT_SUCCESS"}
    inverse = (
        f"{EXE} optimize-inverse-deformations {JOB} --n-epochs 2 --preload-images --gpu-id 0 "
        "--batch-size 64"
    )
    assert relion(inverse, project) == 0
    assert exit_files(project / JOB) == {"RELION_JOB_EXIT_SUCCESS"}
    return project


def test_a_new_job_fits_the_consensus_and_trains_both_halves_in_the_job_folder(project):
    import json

    job = project / JOB
    info = json.loads((job / "run.json").read_text())
    assert (
        info["result"]["epochs"] == 2
        and info["n_gaussians"] == 300
        and info["consensus_model"] is None
    )
    assert info["data_root"] == str(project.resolve())  # image names are relative to the project
    # --regularization-factor 1: the default weighting
    assert info["settings"]["regularisation_ratio"] == DeformationSettings().regularisation_ratio
    assert (
        info["settings"]["epochs"] == 2 and info["settings"]["decoder_width"] == 16
    )  # additional arguments
    assert (job / "consensus_initial.pt").is_file() and (job / "checkpoints" / "final.pt").is_file()
    assert (job / "note.txt").read_text() == "written by RELION\n"  # RELION's own files stay
    assert (job / "inverse" / "summary.json").is_file()


def test_deformable_backprojection_leaves_the_half_maps_relion_postprocess_reads(project, capsys):
    job = project / JOB
    command = f"{EXE} deformable-backprojection {JOB} --batch-size 10 --preload-images --gpu-id 0 "
    assert relion(command, project) == 0
    out = capsys.readouterr().out
    assert "notice: --gpu-id 0: CUDA is not available on this machine; running on the CPU" in out
    assert exit_files(job) == {"RELION_JOB_EXIT_SUCCESS"}
    reference = mrcfile.read(project / "Refine3D" / "job010" / "run_class001.mrc")
    for name in ("map_half1.mrc", "map_half2.mrc"):
        with mrcfile.open(job / "backprojection" / name, permissive=False) as handle:
            assert handle.data.shape == reference.shape == (32, 32, 32)
            assert float(handle.voxel_size.x) == pytest.approx(2.5)
            assert np.isfinite(handle.data).all() and handle.data.std() > 0
    np.testing.assert_array_equal(
        mrcfile.read(job / "backprojection" / "map_half1.mrc"),
        mrcfile.read(job / "reconstruction" / "half1.mrc"),
    )
    if shutil.which("relion_postprocess") is None:
        pytest.skip("relion_postprocess is not installed")
    (project / "PostProcess" / "job014").mkdir(parents=True)
    # RELION's PostProcess job: half map 1 (it finds half map 2 by its name) and a solvent mask
    done = subprocess.run(
        [
            "relion_postprocess",
            "--mask",
            str(soft_mask(project / "MaskCreate" / "job013")),
            "--i",
            f"{JOB}backprojection/map_half1.mrc",
            "--o",
            "PostProcess/job014/postprocess",
            "--angpix",
            "-1",
            "--auto_bfac",
            "--autob_lowres",
            "10",
        ],
        cwd=project,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    general = starfile.read(
        project / "PostProcess" / "job014" / "postprocess.star", always_dict=True
    )["general"]
    resolution = float(general["rlnFinalResolution"])
    assert np.isfinite(resolution) and 5.0 <= resolution < 100


def test_explore_latent_space_opens_the_explorer_on_the_chosen_half(project, monkeypatch):
    from napari_dynamight._widgets import explorer

    opened = []
    monkeypatch.setattr(
        explorer, "show_explorer", lambda *args, **kwargs: opened.append((args, kwargs))
    )
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")  # no window is opened: the check passes
    final = f"{JOB}checkpoints/final.pt"
    assert (
        relion(
            f"{EXE} explore-latent-space {JOB} --half-set 2 --checkpoint-file {final} --gpu-id 0 ",
            project,
        )
        == 0
    )
    assert relion(f"{EXE} explore-latent-space {JOB} --half-set 0 --gpu-id 0 ", project) == 0
    assert opened == [
        ((Path(JOB), "pca"), {"half": 2, "errors": False}),
        ((Path(JOB), "pca"), {"half": 1, "errors": True}),
    ]
    assert exit_files(project / JOB) == {"RELION_JOB_EXIT_SUCCESS"}


@pytest.mark.parametrize(
    "command, expected",
    [
        (
            f"{EXE} explore-latent-space {JOB} --half-set 1 --checkpoint-file "
            f"{JOB}checkpoints/epoch_0001.pt",
            "an intermediate checkpoint",
        ),
        (
            f"{EXE} optimize-inverse-deformations {JOB} --n-epochs 2 --checkpoint-file "
            "DynaMight/job012/forward_deformations/checkpoints/checkpoint_final.pth",
            "not found",
        ),
        (
            f"{EXE} deformable-backprojection {JOB} --batch-size 10 --checkpoint-file "
            "Refine3D/job010/run_data.star",
            "not the final checkpoint",
        ),
        (f"{EXE} explore-latent-space {JOB} --half-set 3", "--half-set 3"),
        (f"{EXE} deformable-backprojection {JOB} --batch-size 10 --gpu-id 0,1", "--gpu-id '0,1'"),
        (
            f"{EXE} deformable-backprojection {JOB} --batch-size 10 --no-such-option 3",
            "--no-such-option",
        ),
        (f"{EXE} explore-latent-space DynaMight/job099/ --half-set 1", "job099"),
    ],
)
def test_a_refused_checkpoint_or_bad_input_is_one_line_exit_2_and_failure(
    project, capsys, command, expected
):
    job = project / JOB
    maps = job / "backprojection"
    before = {p.name: p.stat().st_mtime_ns for p in maps.iterdir()} if maps.is_dir() else {}
    assert relion(command, project) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and expected in err, err
    if "job099" not in command:
        assert exit_files(job) == {"RELION_JOB_EXIT_FAILURE"}
    assert (
        {p.name: p.stat().st_mtime_ns for p in maps.iterdir()} if maps.is_dir() else {}
    ) == before


def test_the_backprojection_honours_the_checkpoint_it_uses(project):
    for checkpoint in (f"{JOB}checkpoints/final.pt", f"{JOB}inverse/final.pt"):
        command = (
            f"{EXE} deformable-backprojection {JOB} --batch-size 64 --checkpoint-file {checkpoint}"
        )
        assert relion(command, project) == 0
        assert exit_files(project / JOB) == {"RELION_JOB_EXIT_SUCCESS"}


@pytest.mark.parametrize(
    "change, expected",
    [
        (("run_data.star", "missing.star"), "missing.star"),
        (("--regularization-factor 1", "--regularization-factor -1"), "--regularization-factor -1"),
        (("--n-threads 1", "--n-threads one"), "--n-threads"),
        (("--n-epochs 2", "--n-epochs 0"), "epochs"),
    ],
)
def test_a_bad_new_job_is_one_line_exit_2_and_failure(
    simulated, tmp_path, capsys, change, expected
):
    project = make_project(simulated, tmp_path / "project")
    command = new_job().replace(*change)
    assert relion(command, project) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and expected in err, err
    assert exit_files(project / JOB) == {"RELION_JOB_EXIT_FAILURE"}
    assert sorted(p.name for p in (project / JOB).iterdir()) == [
        "RELION_JOB_EXIT_FAILURE",
        "note.txt",
    ]


def test_an_abort_during_training_stops_cleanly_and_continuing_resumes(
    simulated, tmp_path, capsys, one_torch_thread
):
    project = make_project(simulated, tmp_path / "project")
    job = project / JOB
    first = job / "checkpoints" / "epoch_0001.pt"

    def press_abort():  # the GUI's abort button, once the first epoch is saved
        deadline = time.monotonic() + 300
        while not first.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        (job / "RELION_JOB_ABORT_NOW").touch()

    presser = threading.Thread(target=press_abort)
    presser.start()
    command = new_job(other=QUICK.replace("--n-epochs 2", "--n-epochs 6"))
    status = relion(command, project)
    presser.join()
    assert status == 130
    assert exit_files(job) == {"RELION_JOB_EXIT_ABORTED"}  # and the abort request is gone
    assert "aborted: RELION_JOB_ABORT_NOW" in capsys.readouterr().err
    assert not list(job.rglob(".*.tmp*")) and not (job / ".dynamight.lock").exists()
    assert (
        not (job / "latent_means.npy").exists() and not (job / "checkpoints" / "final.pt").exists()
    )
    assert (job / "checkpoints" / "epoch_0001.pt").is_file()
    # the job's command run again (RELION keeps it in note.txt) resumes to the end
    assert relion(command, project) == 0
    assert exit_files(job) == {"RELION_JOB_EXIT_SUCCESS"}
    assert (job / "latent_means.npy").is_file()


def test_the_cpu_is_used_without_cuda_and_a_missing_gpu_is_refused(monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert relion_job.torch_device("0") == "cpu"
    assert capsys.readouterr().out.strip() == (
        "notice: --gpu-id 0: CUDA is not available on this machine; running on the CPU"
    )
    assert relion_job.torch_device(None) == "cpu" and capsys.readouterr().out == ""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert relion_job.torch_device("1") == "cuda:1"
    with pytest.raises(Exception, match="--gpu-id 2: this machine has 2 GPU"):
        relion_job.torch_device("2")


def test_relion_control_options_are_accepted():
    args, extra = relion_job.build_parser().parse_known_args(
        shlex.split(f"explore-latent-space {JOB} --half-set 1 --gpu-id 0 --pipeline-control {JOB}")
    )
    assert extra == [] and args.pipeline_control == JOB
    args, extra = relion_job.build_parser().parse_known_args(
        shlex.split(f"deformable-backprojection {JOB} --batch-size 10 --pipeline_control {JOB}")
    )
    assert extra == [] and args.batch_size == 10


def test_the_module_runs_as_a_program_and_the_console_script_is_declared():
    import sys

    import tomllib

    root = Path(__file__).parents[1]
    scripts = tomllib.loads((root / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["napari-dynamight-relion"] == "napari_dynamight.cli.relion_job:main"
    done = subprocess.run(
        [sys.executable, "-m", "napari_dynamight.cli.relion_job", "--help"],
        capture_output=True,
        text=True,
        env=os.environ | {"PYTHONPATH": str(root / "src")},
    )
    assert done.returncode == 0 and "explore-latent-space" in done.stdout


def test_the_explorer_opens_on_the_half_set_relion_asks_for(project, make_napari_viewer):
    from napari_dynamight._widgets._explorer_validation import ERRORS_LAYER
    from napari_dynamight._widgets.explorer import open_explorer

    widget = open_explorer(make_napari_viewer(), project / JOB, half=2)
    assert widget.view.half == 2 and ERRORS_LAYER not in widget.viewer.layers
    widget = open_explorer(make_napari_viewer(), project / JOB, half=1, errors=True)  # --half-set 0
    assert widget.view.half == 1 and ERRORS_LAYER in widget.viewer.layers


@pytest.mark.parametrize(
    "status, ending",
    [
        (0, "SUCCESS"),
        (2, "FAILURE"),
        (1, "FAILURE"),
        (130, "ABORTED"),
        (143, "ABORTED"),
        (129, "ABORTED"),
    ],
)
def test_each_exit_status_leaves_its_exit_file_and_a_new_run_removes_old_ones(
    tmp_path, status, ending
):
    (tmp_path / "RELION_JOB_EXIT_FAILURE").touch()
    (tmp_path / "RELION_JOB_ABORT_NOW").touch()  # left by a run that was killed
    job = relion_job.Job(
        relion_job.job_directory(["deformable-backprojection", str(tmp_path), "--batch-size", "1"])
    )
    job.start()
    assert exit_files(tmp_path) == set()
    job.finish(status)
    assert exit_files(tmp_path) == {f"RELION_JOB_EXIT_{ending}"}
