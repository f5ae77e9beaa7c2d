"""Stage 4 as one operation: per half set, learn the inverse of the forward deformations.

``optimize_inverse_deformations`` is a generator of :class:`Progress` events (cancel by closing it).
It reads a finished deformation run, trains the two halves' inverse networks epoch by epoch on their
own training particles (the validation particles stay out and give an honest held-out error),
checkpoints every few epochs into ``RUN/inverse`` (``RunFolder.inverse``: checkpoints, the final
networks, the loss log and the summary). With ``resume=True`` it continues from the last checkpoint
and ends with the same networks as a run that was never interrupted.

The same function runs in every process of a ``torchrun`` launch (``engine.distributed``), as the
deformation stage does: each half set trains on the ranks of ``context.half_group(half)``,
data-parallel within them; each epoch the halves' log entries go to every rank, before each
checkpoint both halves' states do, and only rank 0 writes files. Checkpoints hold both halves, so
any launch resumes any run. With one process the arithmetic is unchanged.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import distributed
from ..deformation import checkpoint as ckpt
from ..deformation.decode import DeformationRun
from ..deformation.outputs import write_loss_log
from ..device import check_device
from ..errors import InputError
from ..io.atomic import atomic_path
from ..local_processes import check_processes, on_processes_asked
from ..progress import Progress, ProgressGenerator
from ..run_folder import InverseFolder, RunFolder
from ..run_identity import check_finished_run, run_stamp
from .settings import InverseSettings
from .training import InverseHalf


@dataclass
class InverseResult:
    directory: Path
    epochs: int
    seconds: float
    summary: dict  # {"half1": {...}, "half2": {...}}: see summary.json in docs/inverse.md


def inverse_directory(run_directory: str | Path) -> Path:
    return RunFolder(run_directory).inverse.path


def final_path(run_directory: str | Path) -> Path:
    return RunFolder(run_directory).inverse.final


def _check_deformation_run(run: RunFolder) -> str:
    """Refuse anything but a finished deformation run (its run file with a result, and its latents);
    returns the run's stamp, which the inverse outputs record."""
    return run_stamp(check_finished_run(run.path))


def _resume_state(folder: InverseFolder, resume: bool, settings: InverseSettings) -> dict | None:
    """The last checkpoint's state to resume from, or None; refuse to overwrite without ``resume``.
    A resumed run may ask for more epochs; every other setting must match."""
    return ckpt.state_to_resume(
        folder.path,
        resume,
        settings,
        folder.final,
        "an inverse run",
        "(or delete the folder to start again)",
    )


def _particle_sets(
    run: RunFolder, forward: DeformationRun
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per half: the latents of its training particles and the held-out latents of the validation
    particles as that half's encoder saw them (half 2's are in ``RunFolder.latents_half2``)."""
    latents, validation = forward.latents, forward.validation
    second = (
        np.load(run.latents_half2) if run.latents_half2.is_file() else np.full_like(latents, np.nan)
    )
    train, held_out = [], []
    for half, codes in ((1, latents), (2, second)):
        train.append(latents[(forward.half_sets == half) & ~validation])
        candidates = codes[validation]
        held_out.append(candidates[np.isfinite(candidates).all(axis=1)])
    if min(len(t) for t in train) == 0:
        raise InputError(
            f"{run.latents}: a half set has no training particles; nothing to learn from"
        )
    return train, held_out


def optimize_inverse_deformations(
    run_directory: str | Path,
    *,
    settings: InverseSettings = InverseSettings(),
    device: str | torch.device = "cpu",
    resume: bool = False,
    processes: int = 1,
) -> ProgressGenerator[InverseResult]:
    """Train both halves' inverse networks and write ``RunFolder.inverse`` (see the module
    docstring). ``processes`` > 1 runs it on that many local processes (``engine.local_processes``:
    the half sets side by side), each with its share of this process's torch threads."""
    arguments = dict(locals())  # every argument, for the processes of ``processes`` > 1
    started = time.perf_counter()
    settings.check()
    context = distributed.current()
    check_processes(processes, device)
    if processes > 1:
        result = yield from on_processes_asked(optimize_inverse_deformations, arguments)
        result.seconds = time.perf_counter() - started
        return result
    dev = context.device_for(check_device(device))
    run = RunFolder(run_directory)
    stamp = _check_deformation_run(run)
    folder = run.inverse
    resumed = _resume_state(folder, resume, settings)
    if resumed is not None and resumed.get("deformation_run", stamp) != stamp:
        raise InputError(
            f"{folder}: its checkpoints were made from another state of the deformation run "
            "(it was resumed or rerun since); delete the folder to start again"
        )
    context.barrier()  # every rank has checked the folder before rank 0 writes to it
    forward = DeformationRun.load(run.path, dev)
    train, held_out = _particle_sets(run, forward)
    yield Progress(
        "preparing", 0, None, message=f"{len(train[0])} + {len(train[1])} training particles"
    )
    halves = [
        InverseHalf(h, forward, train[h - 1], held_out[h - 1], settings, dev, context.half_group(h))
        for h in (1, 2)
    ]
    mine = [half for half in halves if context.holds(half.half)]
    history, epoch, seconds = [], 0, [0.0, 0.0]
    if resumed is not None:
        for half, state in zip(halves, resumed["halves"], strict=True):
            half.load_state(state)
        history, epoch, seconds = (
            json.loads(resumed["history"]),
            int(resumed["epoch"]),
            json.loads(resumed["seconds"]),
        )

    def state() -> dict:
        return {
            "epoch": epoch,
            "settings": json.dumps(settings.to_dict()),
            "history": json.dumps(history),
            "seconds": json.dumps(seconds),
            "halves": [h.state() for h in halves],
            "deformation_run": stamp,
        }

    while epoch < settings.epochs:
        epoch += 1
        entries = {}
        for half in mine:
            clock = time.perf_counter()
            losses = yield from half.epoch(epoch, settings.epochs)
            elapsed = time.perf_counter() - clock
            check = half.evaluate(held_out=True)["error_angstrom"]
            entries[half.half] = (
                {"epoch": epoch, "half": half.half} | losses | {"held_out_error_angstrom": check},
                elapsed,
            )
        for index, (entry, elapsed) in enumerate(_from_leaders(context, entries)):
            seconds[index] += elapsed
            history.append(entry)
        if context.is_main:
            write_loss_log(folder.loss_log, history)
        if epoch % settings.checkpoint_every == 0 or epoch == settings.epochs:
            _share_states(context, halves)
            if context.is_main:
                ckpt.save_checkpoint(folder.checkpoints.epoch(epoch), state())

    yield Progress("evaluating", 0, 2)
    numbers = {}
    for index, half in enumerate(halves):
        if context.holds(half.half):
            trained, check = half.evaluate(held_out=False), half.evaluate(held_out=True)
            numbers[half.half] = {
                "train_error_angstrom": trained["error_angstrom"],
                "held_out_error_angstrom": check["error_angstrom"],
                "train_displacement_angstrom": trained["displacement_angstrom"],
                "held_out_displacement_angstrom": check["displacement_angstrom"],
                "n_train": len(train[index]),
                "n_held_out": len(held_out[index]),
                "seconds": seconds[index],
            }
        yield Progress("evaluating", index + 1, 2)
    summary = {f"half{h}": values for h, values in enumerate(_from_leaders(context, numbers), 1)}
    summary |= {"epochs": epoch, "settings": settings.to_dict(), "deformation_run": stamp}
    if context.is_main:  # the last epoch was checkpointed, so rank 0 holds both halves' networks
        # the summary marks a complete set: removed first, written last (after the final checkpoint)
        folder.summary.unlink(missing_ok=True)
        ckpt.save_checkpoint(
            folder.final,
            {
                "epoch": epoch,
                "settings": json.dumps(settings.to_dict()),
                "latent_dim": forward.latent_dim,
                "extent_angstrom": halves[0].extent_angstrom,
                "halves": [{"network": h.network.state_dict()} for h in halves],
            },
        )
        with atomic_path(folder.summary) as tmp:
            tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    context.barrier()  # on return RUN/inverse is complete for every rank
    return InverseResult(folder.path, epoch, time.perf_counter() - started, summary)


def _from_leaders(context: distributed.Context, values: dict) -> list:
    """Both halves' ``values[half]`` on every rank, in half order, each from the leader of the ranks
    that train it (every rank already has both when the halves are not split)."""
    if context.halves_split:
        led = {h: v for h, v in values.items() if context.half_group(h).is_leader}
        values = {h: v for part in context.all_gather_object(led) for h, v in part.items()}
    return [values[1], values[2]]


def _share_states(context: distributed.Context, halves: list[InverseHalf]) -> None:
    """Give every rank both halves' training state, each from the leader of its ranks, so that rank
    0 writes checkpoints holding both (a no-op when every rank trains both)."""
    if not context.halves_split:
        return
    for half in halves:
        source = half.group.leader
        state = context.broadcast_object(
            half.state() if context.rank == source else None, src=source
        )
        if not half.group.contains_me:
            half.load_state(state)
