"""Shared test fixtures: the real files in tests/data/ under short labels (see data/SOURCES.md)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import starfile

# napari reads and writes no settings file in the tests (opening a run folder sets napari's reader
# preference for it, which must not reach the user's settings)
os.environ.setdefault("NAPARI_CONFIG", "")

DATA = Path(__file__).parent / "data"

# Every particle STAR file in tests/data, by label.
STAR_FILES = {
    "relion31": DATA / "cryodrgn" / "relion31.star",
    "relion31_6optics": DATA / "cryodrgn" / "relion31.6opticsgroups.star",
    "relion5": DATA / "cryodrgn" / "relion5.star",
    "empiar10076_relion30": DATA / "cryodrgn" / "empiar_10076_7.star",
    "pfcrt_relion30": DATA / "cryodrgn" / "FinalRefinement-OriginalParticles-PfCRT.star",
    "trpv1": DATA / "cryojax_trpv1" / "trpv1_small_stack.star",
    "aspire65": DATA / "aspire_relion_proj" / "rln_proj_65.star",
    "aspire65_shifted": DATA / "aspire_relion_proj" / "rln_proj_65_shifted.star",
    "starfile_inter1965": DATA / "starfile" / "optics_group_inter1965.star",
}
# Real cryoSPARC .cs files (and cryoDRGN's pose conversion of one of them), by label.
CS_FILES = {
    "refinement": DATA / "cryodrgn" / "cryosparc_P12_J24_001_particles.cs",
    "refinement_cryodrgn_poses": DATA / "cryodrgn" / "pose.cs.pkl",
    "empiar10076": DATA / "cryodrgn" / "empiar_10076_7.cs",
    "class2d_exported": DATA / "cryodrgn" / "cryosparc_J2_particles_exported.cs",
}
# STAR files whose image stacks are in tests/data (TRPV1 needs the corrected copy, see trpv1_star).
STAR_FILES_WITH_IMAGES = ["relion31", "aspire65", "aspire65_shifted"]

TRPV1_STACK = DATA / "cryojax_trpv1" / "trpv1_small_stack.mrcs"
TRPV1_MAP = DATA / "cryojax_trpv1" / "trpv1_volume.mrc"


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: BLAS rounding depends on the thread count (numbers compared
    across runs or processes stay equal), and two threads on two shared cores are slow."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def data_dir() -> Path:
    """The folder of test data files."""
    return DATA


@pytest.fixture(params=sorted(STAR_FILES))
def star_label(request) -> str:
    """Every STAR fixture label, one test per file."""
    return request.param


@pytest.fixture
def star_path(star_label) -> Path:
    return STAR_FILES[star_label]


def edit_star(source: Path, target: Path, edit) -> Path:
    """Copy a STAR file, letting ``edit(blocks)`` change its dict of DataFrames first."""
    blocks = starfile.read(source, always_dict=True)
    edit(blocks)
    starfile.write(blocks, target)
    return target


def write_trpv1_star(folder: Path, stack_name: str = "trpv1_small_stack.mrcs") -> Path:
    """The TRPV1 STAR with ``rlnImageName`` pointing at ``stack_name`` (relative to ``folder``).

    The fixture's names say ``./batch_0_restacked.mrc``, a file that was never published.
    """

    def rename(blocks):
        names = blocks["particles"]["rlnImageName"].str.split("@").str[0]
        blocks["particles"]["rlnImageName"] = names + "@" + stack_name

    return edit_star(STAR_FILES["trpv1"], Path(folder) / "trpv1.star", rename)


@pytest.fixture
def trpv1_star(tmp_path) -> Path:
    """A corrected copy of the TRPV1 STAR file in ``tmp_path``, next to a link to its stack."""
    (tmp_path / TRPV1_STACK.name).symlink_to(TRPV1_STACK)
    return write_trpv1_star(tmp_path)


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """The package's wheel, built once from this checkout (without dependencies)."""
    import importlib.util
    import subprocess
    import sys

    folder = tmp_path_factory.mktemp("wheels")
    command = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "-q",
        "-w",
        str(folder),
        str(Path(__file__).resolve().parents[1]),
    ]
    if importlib.util.find_spec("hatchling") is not None:
        command.insert(4, "--no-build-isolation")  # no download when the backend is installed
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    [built] = folder.glob("napari_dynamight-*.whl")
    return built


# Session fixtures of the deformation tests (a tiny simulated AdK data set and a trained run on it),
# registered here so that test modules use them without importing them.
from helpers.deformation_data import moving_run, simulated  # noqa: E402, F401
from helpers.optimize_cli import finished_run  # noqa: E402, F401


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` run where torch sees a CUDA device and are skipped, with the reason,
    elsewhere."""
    marked = [item for item in items if item.get_closest_marker("cuda")]
    if not marked:
        return
    import torch

    if torch.cuda.is_available():
        return
    reason = pytest.mark.skip(
        reason=f"no CUDA device visible to torch {torch.__version__} "
        f"(built with CUDA {torch.version.cuda or 'none'})"
    )
    for item in marked:
        item.add_marker(reason)
