"""Checkpoints: state dicts and plain tensors only (``torch.load(..., weights_only=True)`` reads
them).

A checkpoint holds, per half set, the encoder, decoder and optimiser state dicts, the Gaussian
parameters, the noise spectrum, λ, the random generator's state and (once refinement has begun) the
candidate latent points, plus the epoch, the refinement round, the loss history,
the stopping rule and the settings. Restoring it and training on gives exactly the run that was
never interrupted. Files are written atomically (a temporary file renamed into place), so a kill
during a write leaves the previous checkpoint intact and the new one absent.

With several ranks only rank 0 writes; when the halves train on disjoint ranks, :func:`share_halves`
first gives every rank both halves' state, so a checkpoint always holds both halves and any launch
(one process or many, any number of ranks) resumes from it.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch

from .. import distributed
from ..errors import InputError
from ..io.atomic import atomic_path
from ..run_folder import CHECKPOINTS, Checkpoints, RunFolder
from ..settings_record import SettingsRecord, refuse_changed_settings
from .trainer import HalfSet

CHECKPOINT_FOLDER = CHECKPOINTS


def half_state(half: HalfSet) -> dict:
    """Everything that defines one half set's training state, as plain tensors and numbers."""
    return {
        "encoder": half.encoder.state_dict(),
        "decoder": half.decoder.state_dict(),
        "optimisers": {name: opt.state_dict() for name, opt in half.optimisers.items()},
        "positions": half.positions.detach().cpu().clone(),
        "base_amplitudes": half.base_amplitudes.cpu().clone(),
        "base_sigmas": half.base_sigmas.cpu().clone(),
        "log_amplitude_scale": half.log_amplitude_scale.detach().cpu().clone(),
        "log_sigma_scale": half.log_sigma_scale.detach().cpu().clone(),
        "moving": half.moving.cpu().clone(),
        "noise": half.noise.state_dict(),
        "lambda": float(half.lam),
        "generator": half.generator.get_state(),
        "train_rows": torch.as_tensor(half.train_rows),
        "validation_rows": torch.as_tensor(half.validation_rows),
    } | ({} if half.candidates is None else {"candidates": half.candidates.detach().cpu().clone()})


def load_half_state(half: HalfSet, state: dict) -> None:
    """Restore :func:`half_state` into a freshly built half set with the same settings."""
    half.encoder.load_state_dict(state["encoder"])
    half.decoder.load_state_dict(state["decoder"])
    with torch.no_grad():
        half.positions.copy_(state["positions"])
        half.log_amplitude_scale.copy_(state["log_amplitude_scale"])
        half.log_sigma_scale.copy_(state["log_sigma_scale"])
    half.base_amplitudes = state["base_amplitudes"].to(half.device)
    half.base_sigmas = state["base_sigmas"].to(half.device)
    half.moving = state["moving"].to(half.device)
    for name, opt in half.optimisers.items():
        opt.load_state_dict(state["optimisers"][name])
    half.noise.load_state_dict(state["noise"])
    half.lam = float(state["lambda"])
    half.generator.set_state(state["generator"])
    half.train_rows = state["train_rows"].numpy()
    half.validation_rows = state["validation_rows"].numpy()
    half.candidates = state["candidates"].to(half.device) if "candidates" in state else None
    half.rebuild_graph()


def share_halves(context: distributed.Context, halves: list[HalfSet]) -> None:
    """Give every rank the current state of both halves, each from the leader of the ranks that
    train it (a no-op when every rank trains both)."""
    if not context.halves_split:
        return
    for half in halves:
        source = half.group.leader
        state = context.broadcast_object(
            half_state(half) if context.rank == source else None, src=source
        )
        if not half.group.contains_me:
            load_half_state(half, state)


def _serialise(state: dict, path: Path) -> None:
    torch.save(state, path)


def save_checkpoint(path: Path, state: dict) -> None:
    """Write ``state`` atomically to ``path``."""
    with atomic_path(path) as tmp:
        _serialise(state, tmp)


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint (tensors only) or raise InputError naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as error:
        raise InputError(
            f"{path}: not a readable deformation checkpoint ({error.__class__.__name__}); "
            "delete it to resume from an earlier one"
        ) from None


def epoch_path(stage_folder: Path, epoch: int) -> Path:
    return Checkpoints(stage_folder).epoch(epoch)


def final_path(run_directory: Path) -> Path:
    """A deformation run's final checkpoint."""
    return RunFolder(run_directory).final_checkpoint


def latest_checkpoint(stage_folder: Path) -> Path | None:
    """The epoch checkpoint with the highest epoch in a stage's folder, if any."""
    return Checkpoints(stage_folder).latest()


def state_to_resume(
    folder: Path,
    resume: bool,
    settings: SettingsRecord,
    final: Path,
    what: str,
    hint: str,
    changeable: tuple[str, ...] = ("epochs",),
) -> dict | None:
    """The state of the last epoch checkpoint in ``folder`` to resume from, or None (nothing to
    resume).

    Without ``resume`` a folder that already holds ``what`` (checkpoints or ``final``) is refused
    with ``hint``; a resume that changes settings other than ``changeable`` is refused too.
    """
    latest = latest_checkpoint(folder)
    if not resume:
        if latest is not None or final.exists():
            raise InputError(f"{folder}: already holds {what}; add --resume to continue it {hint}")
        return None
    if latest is None:
        return None
    state = load_checkpoint(latest)
    saved = type(settings).from_dict(json.loads(state["settings"]))
    refuse_changed_settings(latest, saved, settings, changeable)
    return state
