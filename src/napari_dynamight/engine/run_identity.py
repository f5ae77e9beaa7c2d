"""What a deformation run was made from, and the checks that its consumers and ``--resume`` make.

``run.json`` records, under ``identity``, fingerprints of the particle file's content (STAR or
cryoSPARC .cs, with its passthrough .cs files), of its image names,
of the consensus map, mask, consensus model and atomic model (the prior), the particle count, the
training box and the settings a resumed run may not change. A resume with other inputs is refused
before anything is written; the stages that read a run (inverse, reconstruct, decode, explore) first
check that it finished and that its outputs agree with its particle count.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from .errors import InputError
from .run_folder import RunFolder

# What each identity entry is, for the refusal message.
_LABELS = {
    "star_sha256": "particle file content (--particles)",
    "n_particles": "particle count (--particles)",
    "passthrough_sha256": "passthrough .cs files (--passthrough)",
    "image_names_sha256": "image names (rlnImageName of --particles)",
    "consensus_sha256": "consensus map (--consensus)",
    "mask_sha256": "mask (--mask)",
    "consensus_model_sha256": "consensus model (--consensus-model)",
    "train_box": "training box (--box)",
    "n_gaussians_option": "--n-gaussians",
    "threshold_option": "--threshold",
    "atomic_model_sha256": "atomic model (--atomic-model)",
}


def file_sha256(path: str | os.PathLike | None) -> str | None:
    """SHA-256 of a file's bytes (None for no file)."""
    if path is None:
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def text_sha256(lines) -> str:
    return hashlib.sha256("\n".join(str(line) for line in lines).encode("utf-8")).hexdigest()


def input_identity(
    particles,
    table,
    consensus,
    mask,
    consensus_model,
    train_box: int,
    n_gaussians,
    threshold,
    fixed_settings: dict,
    passthroughs=(),
    atomic_model=None,
) -> dict:
    """The identity of a deformation run's inputs (see the module docstring)."""
    return {
        "star_sha256": file_sha256(particles),
        "n_particles": len(table),
        "passthrough_sha256": [file_sha256(path) for path in passthroughs],
        "image_names_sha256": text_sha256(table.particles["rlnImageName"].astype(str)),
        "consensus_sha256": file_sha256(consensus),
        "mask_sha256": file_sha256(mask),
        "consensus_model_sha256": file_sha256(consensus_model),
        "train_box": int(train_box),
        "n_gaussians_option": n_gaussians,
        "threshold_option": threshold,
        "settings": fixed_settings,
        "atomic_model_sha256": file_sha256(atomic_model),
    }


def check_same_inputs(run: Path, current: dict) -> None:
    """Refuse to resume ``run`` with inputs other than those its run.json records."""
    folder = RunFolder(run)
    path = folder.info
    if not folder.is_run():
        return
    recorded = folder.read_info().get("identity")
    if not isinstance(recorded, dict):
        return  # a run from before identities were recorded: nothing to compare
    for key, label in _LABELS.items():
        if key in recorded and recorded[key] != current.get(key):

            def shown(value):
                return value[:12] if isinstance(value, str) else value

            raise InputError(
                f"{path}: this run was made with another {label} ({shown(recorded[key])} here, "
                f"{shown(current.get(key))} now); resume it with its own inputs and options, "
                "or give a new --output-directory"
            )
    old, new = recorded.get("settings") or {}, current.get("settings") or {}
    for name in sorted(set(old) | set(new)):
        if old.get(name) != new.get(name):
            raise InputError(
                f"{path}: this run was made with {name} = {old.get(name)!r}, now "
                f"{new.get(name)!r}; resume it with the same options, or give a new "
                "--output-directory"
            )


def first_nonfinite_row(array) -> int | None:
    """The index of the first row of ``array`` (N, D) holding NaN or Inf, or None."""
    finite = np.isfinite(np.asarray(array, dtype=np.float64)).all(axis=1)
    return None if finite.all() else int(np.nonzero(~finite)[0][0])


def check_finished_run(run: str | os.PathLike) -> dict:
    """run.json of a finished deformation run (``RunFolder.require_finished``) whose latent means
    hold one finite row per particle; InputError otherwise."""
    folder = RunFolder(run)
    info = folder.require_finished()
    latents_path = folder.latents
    try:
        latents = np.load(latents_path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError):
        raise InputError(
            f"{latents_path}: not a readable .npy file (truncated or damaged); rerun "
            "optimize-deformations --resume to write it again"
        ) from None
    n = info.get("n_particles")
    if latents.ndim != 2 or (n is not None and latents.shape[0] != n):
        raise InputError(
            f"{latents_path}: shape {latents.shape}, but the run has {n} particles; rerun "
            "optimize-deformations --resume to write it again"
        )
    row = first_nonfinite_row(latents)
    if row is not None:
        raise InputError(
            f"{latents_path}: row {row + 1} is not finite (NaN or Inf); rerun "
            "optimize-deformations --resume to write it again"
        )
    return info


def run_stamp(info: dict) -> str:
    """A fingerprint of a finished run's identity and result: a later stage records it and refuses
    outputs made from another state of the run."""
    result = info.get("result") or {}
    return text_sha256(
        [
            json.dumps(info.get("identity"), sort_keys=True),
            result.get("epochs"),
            result.get("refinement_rounds"),
            info.get("n_particles"),
        ]
    )
