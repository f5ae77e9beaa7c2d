"""The layout of a run folder: every file a stage writes, how to read it back, what has finished.

A deformation run (stage 3) is one folder; the later stages write into subfolders of it::

    RUN/run.json                              inputs, settings, sizes; "result" once finished
    RUN/consensus_initial.pt                  the Gaussian model training started from
    RUN/checkpoints/epoch_NNNN.pt, final.pt   training state (engine/deformation/checkpoint.py)
    RUN/losses.jsonl, losses.png              one line per epoch and half set; their plot
    RUN/latent_means.npy                      (N, D) latent codes, input STAR row order
    RUN/latent_means_half2_validation.npy     half 2's codes of the validation particles
    RUN/particles.star                        the input STAR plus the dm* result columns
    RUN/input_particles.cs                    a cryoSPARC input's records (every field, uid), for
                                              exports
    RUN/consensus_half{1,2}.pt, .mrc          each half's final reference model, and rendered
    RUN/gaussian_errors.csv                   per-Gaussian error estimates (half 1's reference)
    RUN/common_motion_space.npz               both halves' particles placed by their motion
                                              (explorer)
    RUN/model_bias.json                       the model-bias control's report (runs with
                                              --atomic-model)
    RUN/model_bias/                           its deliberately wrong model and the rerun made with
                                              it (run/)
    RUN/inverse/                              stage 4: checkpoints/, final.pt, losses.jsonl,
                                              summary.json
    RUN/reconstruction[_standard]/            stage 5: half1.mrc, half2.mrc, full.mrc, fsc.csv,
                                              fsc.png, maps.cxc
    RUN/subsets/NAME/reconstruction[_standard]/  the same for a subset of the particles (reconstruct
                                                 --subset)

The consensus stage writes its own folder (:class:`ConsensusFolder`) and the demo one folder around
all of them (:class:`DemoFolder`). Stages, widgets, readers and the command line take every path
from here, so the layout is defined once. Only the standard library is imported: napari's readers
use it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from .errors import InputError

CHECKPOINTS = "checkpoints"
SUBSETS = "subsets"
_EPOCH_CHECKPOINT = re.compile(r"^epoch_(\d+)\.pt$")
_LOSS_LOG = "losses.jsonl"


def read_loss_log(path: str | os.PathLike) -> list[dict]:
    """A ``losses.jsonl``: one entry per epoch and half set ([] before the first epoch ends)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


class Checkpoints:
    """A stage's epoch checkpoints: ``FOLDER/checkpoints/epoch_NNNN.pt``."""

    def __init__(self, stage_folder: str | os.PathLike):
        self.folder = Path(stage_folder) / CHECKPOINTS

    def epoch(self, epoch: int) -> Path:
        return self.folder / f"epoch_{epoch:04d}.pt"

    def latest(self) -> Path | None:
        """The epoch checkpoint with the highest epoch, if any."""
        if not self.folder.is_dir():
            return None
        found = [
            (int(m.group(1)), p)
            for p in self.folder.iterdir()
            if (m := _EPOCH_CHECKPOINT.match(p.name))
        ]
        return max(found)[1] if found else None


class _Folder:
    """A folder with a fixed layout; ``os.fspath`` and ``str`` give its path."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and other.path == self.path

    def __hash__(self) -> int:
        return hash((type(self), self.path))


class RunFolder(_Folder):
    """A deformation run folder (see the module docstring) and its later stages' subfolders."""

    # --- stage 3: optimize-deformations ------------------------------------------------------
    @property
    def info(self) -> Path:
        return self.path / "run.json"

    @property
    def initial_model(self) -> Path:
        return self.path / "consensus_initial.pt"

    @property
    def checkpoints(self) -> Checkpoints:
        return Checkpoints(self.path)

    @property
    def final_checkpoint(self) -> Path:
        return self.checkpoints.folder / "final.pt"

    def newest_checkpoint(self) -> Path | None:
        """``final.pt`` once written, else the highest epoch checkpoint, else None."""
        return (
            self.final_checkpoint if self.final_checkpoint.is_file() else self.checkpoints.latest()
        )

    @property
    def loss_log(self) -> Path:
        return self.path / _LOSS_LOG

    @property
    def loss_plot(self) -> Path:
        return self.path / "losses.png"

    @property
    def latents(self) -> Path:
        return self.path / "latent_means.npy"

    @property
    def latents_half2(self) -> Path:
        return self.path / "latent_means_half2_validation.npy"

    @property
    def particles(self) -> Path:
        return self.path / "particles.star"

    @property
    def common_space(self) -> Path:
        return self.path / "common_motion_space.npz"

    @property
    def input_records(self) -> Path:
        """A cryoSPARC input's original records (merged with its passthrough files), input row
        order."""
        return self.path / "input_particles.cs"

    def half_model(self, half: int) -> Path:
        return self.path / f"consensus_half{half}.pt"

    def half_map(self, half: int) -> Path:
        return self.path / f"consensus_half{half}.mrc"

    @property
    def gaussian_errors(self) -> Path:
        return self.path / "gaussian_errors.csv"

    # --- the atomic-model prior's model-bias control (engine/model_bias.py) ---------------------
    @property
    def model_bias_report(self) -> Path:
        return self.path / "model_bias.json"

    @property
    def model_bias_folder(self) -> Path:
        """The control's work: ``wrong_model.pdb`` and ``run/``, the deformation run made with
        it."""
        return self.path / "model_bias"

    def model_bias_warning(self) -> str | None:
        """For a run made with the atomic-model prior: a warning line unless its model-bias report
        exists and found no bias; None for other runs (and for folders that are no runs)."""
        if not self.is_run():
            return None
        try:
            info = self.read_info()
        except InputError:
            return None
        model = (info.get("settings") or {}).get("atomic_model")
        if not model:
            return None
        command = f"napari-dynamight model-bias {self.path}"
        if not self.model_bias_report.is_file():
            return (
                f"maps of {self.path} are made with the atomic-model prior and have no model-bias "
                f"report; run {command}"
            )
        try:
            report = json.loads(self.model_bias_report.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return f"{self.model_bias_report}: unreadable; run {command} again"
        if report.get("biased", True):
            decoded = report.get("reproduced_percent_decoded")
            return (
                f"maps of {self.path} are made with the atomic-model prior, and its model-bias "
                f"control found that {report.get('reproduced_percent', '?')}% of a deliberately "
                "wrong feature shows up in a deformed map made the same way"
                + ("" if decoded is None else f" and {decoded}% in its decoded volumes")
                + ": features that only the model supports may be model bias "
                f"({self.model_bias_report.name})"
            )
        return None

    # --- later stages ------------------------------------------------------------------------
    @property
    def inverse(self) -> InverseFolder:
        return InverseFolder(self.path / "inverse")

    def reconstruction(self, deformations: bool = True) -> ReconstructionFolder:
        return ReconstructionFolder(self.path / ReconstructionFolder.NAMES[bool(deformations)])

    def subset_reconstruction(self, name: str, deformations: bool = False) -> ReconstructionFolder:
        """The reconstruction of a subset of the particles named ``name``
        (``reconstruct --subset``)."""
        return ReconstructionFolder(
            self.path / SUBSETS / name / ReconstructionFolder.NAMES[bool(deformations)]
        )

    # --- state and reading -------------------------------------------------------------------
    @classmethod
    def of(cls, path: str | os.PathLike) -> RunFolder:
        """The run folder of ``path``: the folder itself, or the folder of its
        ``particles.star``."""
        path = Path(path)
        if path.is_file() and cls(path.parent).is_run():
            return cls(path.parent)
        return cls(path)

    def is_run(self) -> bool:
        """Whether the folder holds a ``run.json`` (a deformation run, finished or not)."""
        return self.info.is_file()

    def read_info(self) -> dict:
        """``run.json`` (written by the deformation stage), or InputError naming the file."""
        if not self.info.is_file():
            raise InputError(
                f"{self.info}: not found; choose the folder of a deformation run "
                "(made by optimize-deformations or the Deformations widget)"
            )
        try:
            info = json.loads(self.info.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise InputError(
                f"{self.info}: unreadable ({type(error).__name__}); the run folder is damaged"
            ) from None
        if not isinstance(info, dict):
            raise InputError(
                f"{self.info}: unreadable (not a JSON object); the run folder is damaged"
            )
        return info

    def read_loss_log(self) -> list[dict]:
        return read_loss_log(self.loss_log)

    def require_finished(self) -> dict:
        """``run.json`` of a finished deformation run (a result, and the latents written);
        InputError otherwise. ``run_identity.check_finished_run`` also checks the latents'
        contents."""
        if not self.is_run():
            raise InputError(
                f"{self.path}: not a deformation run ({self.info.name} missing); "
                "run optimize-deformations first"
            )
        info = self.read_info()
        if info.get("result") is None or not self.latents.is_file():
            raise InputError(
                f"{self.path}: the deformation run has not finished; finish it "
                "(optimize-deformations --resume) first"
            )
        return info


def image_root(info: dict) -> Path:
    """The folder a run's image names are relative to: its ``data_root`` if training was given one
    (e.g. a RELION project folder), else the input file's folder. A cryoSPARC ``.cs`` input's names
    are always relative to its own folder (the reader rewrites them so), whatever the data root."""
    particles = Path(info["particles"])
    if particles.suffix == ".cs" or not info.get("data_root"):
        return particles.parent
    return Path(info["data_root"])


def read_run_info(run_directory: str | os.PathLike) -> dict:
    """A run folder's ``run.json`` (:meth:`RunFolder.read_info`), or InputError naming the file."""
    return RunFolder(run_directory).read_info()


class InverseFolder(_Folder):
    """``RUN/inverse``: stage 4's checkpoints, networks, loss log and summary."""

    @property
    def checkpoints(self) -> Checkpoints:
        return Checkpoints(self.path)

    @property
    def final(self) -> Path:
        """Both halves' trained networks (``engine/inverse/field.py`` loads them)."""
        return self.path / "final.pt"

    @property
    def loss_log(self) -> Path:
        return self.path / _LOSS_LOG

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    def read_loss_log(self) -> list[dict]:
        return read_loss_log(self.loss_log)

    def read_summary(self) -> dict | None:
        """``summary.json`` of a finished inverse run, or None before it."""
        if not self.summary.is_file():
            return None
        return json.loads(self.summary.read_text(encoding="utf-8"))


class ReconstructionFolder(_Folder):
    """``RUN/reconstruction`` (or ``reconstruction_standard``): stage 5's maps and FSC."""

    NAMES = {
        True: "reconstruction",
        False: "reconstruction_standard",
    }  # with / without deformations
    ROLES = ("half1", "half2", "full")

    def half_map(self, half: int) -> Path:
        return self.path / f"half{half}.mrc"

    @property
    def half_maps(self) -> tuple[Path, Path]:
        return self.half_map(1), self.half_map(2)

    @property
    def full_map(self) -> Path:
        return self.path / "full.mrc"

    @property
    def maps(self) -> dict[str, Path]:
        """``{"half1": ..., "half2": ..., "full": ...}``."""
        return dict(zip(self.ROLES, (*self.half_maps, self.full_map), strict=True))

    @property
    def fsc_table(self) -> Path:
        return self.path / "fsc.csv"

    @property
    def fsc_plot(self) -> Path:
        return self.path / "fsc.png"

    @property
    def subset(self) -> Path:
        """The particles of a subset's reconstruction, image names leading to the original
        images."""
        return self.path / "particles.star"

    @property
    def chimerax_script(self) -> Path:
        """Opens the half maps (hidden) and the full map in ChimeraX (``engine/chimerax.py``)."""
        return self.path / "maps.cxc"

    def missing(self) -> list[Path]:
        """The maps and the FSC table not written yet ([] for a finished reconstruction)."""
        return [path for path in (*self.maps.values(), self.fsc_table) if not path.is_file()]

    def read_fsc(self) -> tuple:
        """``fsc.csv`` as (spatial frequency 1/Å, {name: values}) for its ``fsc_*`` columns."""
        import pandas as pd

        table = pd.read_csv(self.fsc_table)
        curves = {
            name.removeprefix("fsc_"): table[name].to_numpy(float)
            for name in table.columns
            if name.startswith("fsc")
        }
        return table["frequency_per_angstrom"].to_numpy(float), curves


class ConsensusFolder(_Folder):
    """The consensus stage's output folder (``fit-consensus``)."""

    @property
    def model(self) -> Path:
        """The fitted Gaussians (``engine.consensus.load_model``)."""
        return self.path / "consensus_gaussians.pt"

    @property
    def rendered_map(self) -> Path:
        return self.path / "consensus_gaussians.mrc"

    @property
    def table(self) -> Path:
        return self.path / "consensus_gaussians.csv"

    @property
    def complete_marker(self) -> Path:
        """Written last (``io.file_set``): the model, map and table beside it belong together."""
        return self.path / "consensus_gaussians.json"


class DemoFolder(_Folder):
    """The demo's output folder: the stages' folders, and the headless mode's summary and
    pictures."""

    @property
    def data(self) -> Path:
        """The simulated data set (``napari-dynamight simulate``)."""
        return self.path / "data"

    @property
    def consensus(self) -> ConsensusFolder:
        return ConsensusFolder(self.path / "consensus")

    @property
    def run(self) -> RunFolder:
        return RunFolder(self.path / "run")

    summary = property(lambda self: self.path / "demo_summary.json")
    consensus_slices = property(lambda self: self.path / "consensus_slices.png")
    latent_space = property(lambda self: self.path / "latent_space.png")
    selection = property(lambda self: self.path / "selection.star")
    motion_gif = property(lambda self: self.path / "motion.gif")
    napari_explorer = property(lambda self: self.path / "napari_explorer.png")
    napari_volume = property(lambda self: self.path / "napari_volume.png")
    napari_movie = property(lambda self: self.path / "motion_napari.mp4")
    napari_movie_gif = property(lambda self: self.path / "motion_napari.gif")

    def headless_files(self, motion: bool) -> list[Path]:
        """What ``demo --headless`` writes (``motion``: with a deformation run)."""
        files = [self.summary, self.consensus_slices]
        if motion:
            files += [
                self.latent_space,
                self.selection,
                self.motion_gif,
                self.napari_explorer,
                self.napari_volume,
                self.napari_movie,
                self.napari_movie_gif,
            ]
        return files
