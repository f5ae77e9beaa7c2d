"""One entry point for a user's particle file: a RELION STAR file or a cryoSPARC ``.cs`` file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError
from .cryosparc import is_cryosparc, passthrough_files, read_cryosparc
from .star import read_particles

if TYPE_CHECKING:
    from ..data.particles import ParticleTable

__all__ = ["passthrough_paths", "read_particle_file"]


def read_particle_file(
    path: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    passthroughs: list[str | os.PathLike] | None = None,
    pixel_size_angstrom: float | None = None,
) -> ParticleTable:
    """Read a STAR or ``.cs`` particle file (chosen by its suffix) into a :class:`ParticleTable`.

    ``passthroughs`` (``.cs`` only) are merged on ``uid``; None finds the job's own. ``data_root`` is the
    folder image names are relative to (for ``.cs``: the cryoSPARC project folder).
    """
    if is_cryosparc(path):
        return read_cryosparc(path, data_root=data_root, passthroughs=passthroughs)
    if passthroughs:
        raise InputError(
            f"{path}: passthrough files apply to cryoSPARC .cs input only; drop --passthrough"
        )
    return read_particles(path, data_root=data_root, pixel_size_angstrom=pixel_size_angstrom)


def passthrough_paths(
    path: str | os.PathLike, passthroughs: list[str | os.PathLike] | None = None
) -> list[Path]:
    """The passthrough files :func:`read_particle_file` merges into ``path`` (none for a STAR file)."""
    if not is_cryosparc(path):
        return []
    return passthrough_files(path) if passthroughs is None else [Path(p) for p in passthroughs]
