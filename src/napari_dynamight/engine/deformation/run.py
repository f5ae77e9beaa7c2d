"""Stage 3 as one operation: two half-set VAEs learn every particle's deformation.

``optimize_deformations`` is a generator of :class:`Progress` events (cancel by closing it) that
checks every input, builds or loads the consensus Gaussian model, trains the two halves epoch by
epoch on the schedule of ``schedule.py``, checkpoints every few epochs, refines each half's decoder
in EM rounds on candidate latents (``refinement.py``; a checkpoint after each), and finally writes
the outputs listed in ``outputs.py``. With ``resume=True`` it continues from the last checkpoint in
the run directory and ends with the same result as a run that was never interrupted.

With the atomic-model prior the reference positions stay the model's: no position updates and no
reference replacements (the amplitude and width scales still train), so the model is the frame
every deformation starts from, as in DynaMight, and only the deformations fit the data.

The same function runs in every process of a ``torchrun`` launch (``engine.distributed``): with an
even number of ranks the first half train half set 1 and the others half set 2, each half
data-parallel over its ranks; with one rank or an odd number every rank trains both halves in turn.
Every rank reads the inputs and the checkpoint; only rank 0 writes files. Epoch losses are
exchanged every epoch (so every rank takes the same stopping decision), references at the agreed
epochs, and the halves' full state before each checkpoint and before the error estimates.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import distributed
from ..atomic_model import atomic_prior_model, model_bias_reminder
from ..consensus import automatic_threshold, fill_with_gaussians, fit_to_map, save_model
from ..consensus_stage import suggested_gaussian_count
from ..data.particle_file import passthrough_paths
from ..device import check_device
from ..errors import InputError
from ..gaussians import GaussianModel
from ..io.atomic import atomic_path
from ..local_processes import check_processes, on_processes_asked
from ..progress import Progress, ProgressGenerator
from ..run_folder import RunFolder
from ..run_identity import check_same_inputs, input_identity
from . import checkpoint as ckpt
from . import outputs, watchdog
from .batches import ParticleBatches
from .inputs import RunInputs, moving_flags, read_inputs
from .refinement import refine_round
from .schedule import StopRule, epoch_mode, is_reference_update, update_references
from .settings import DeformationSettings
from .trainer import HalfSet
from .validation import estimate_errors

# The amplitude fit's z-score below which the images are taken not to show the consensus map: a
# standard normal number on images of noise, hundreds on simulated AdK particles at SNR 0.01.
MIN_AMPLITUDE_Z = 8.0
# Options a resumed run may change: more epochs or refinement rounds, how the final latents are
# inferred, and whether the model-bias control follows.
CHANGEABLE_ON_RESUME = (
    "epochs",
    "refinement_rounds",
    "latent_inference",
    "posterior_candidates",
    "exact_posteriors",
    "bias_check",
)


@dataclass
class DeformationResult:
    run_directory: Path
    epochs: int
    stopped_early: bool
    n_gaussians: int
    train_box: int
    seconds: float
    latents: np.ndarray
    warnings: list[str] = field(
        default_factory=list
    )  # the watchdog's, at the end (also in run.json)
    bias_report: object | None = None  # model_bias.BiasReport, where the control followed the run


def _consensus_model(
    inputs: RunInputs, n_gaussians, threshold, seed, device
) -> ProgressGenerator[GaussianModel]:
    if inputs.consensus_model is not None:
        return inputs.consensus_model
    volume, voxel = inputs.consensus_map, inputs.voxel_size_angstrom
    level = automatic_threshold(volume) if threshold is None else float(threshold)
    count = (
        suggested_gaussian_count(volume, voxel, level) if n_gaussians is None else int(n_gaussians)
    )
    start = fill_with_gaussians(volume, voxel, count, threshold=level, mask=None, seed=seed)
    fit = yield from fit_to_map(start, volume, voxel, n_steps=200, device=device, threshold=level)
    return fit.model


def _atomic_prior(
    settings: DeformationSettings, inputs: RunInputs, consensus, consensus_model, n_gaussians
):
    """(Gaussians, bonds) of ``settings.atomic_model`` in the consensus map, checked to sit in it;
    None without the prior."""
    if settings.atomic_model is None:
        return None
    if consensus_model is not None or n_gaussians is not None:
        option = "--consensus-model" if consensus_model is not None else "--n-gaussians"
        raise InputError(
            f"--atomic-model {settings.atomic_model}: the Gaussians come from the atomic model; "
            f"drop {option}"
        )
    model, bonds, _ = atomic_prior_model(
        settings.atomic_model, consensus, inputs.consensus_map, inputs.voxel_size_angstrom
    )
    return model, bonds


def _check_run_directory(run: Path, resume: bool, settings: DeformationSettings) -> dict | None:
    """The state of the last epoch checkpoint to resume from, or None; refuse to overwrite a run
    without ``resume``. A resumed run may change the options in ``CHANGEABLE_ON_RESUME``; every
    other must match."""
    if run.exists() and not run.is_dir():
        raise InputError(f"{run}: exists and is not a folder; give a folder for the run")
    return ckpt.state_to_resume(
        run,
        resume,
        settings,
        ckpt.final_path(run),
        "a deformation run",
        "or choose another --output-directory",
        CHANGEABLE_ON_RESUME,
    )


def optimize_deformations(
    particles: str | Path,
    consensus: str | Path,
    output_directory: str | Path,
    *,
    settings: DeformationSettings = DeformationSettings(),
    mask: str | Path | None = None,
    consensus_model: str | Path | None = None,
    n_gaussians: int | None = None,
    threshold: float | None = None,
    box: int | None = None,
    data_root: str | Path | None = None,
    device: str | torch.device = "cpu",
    resume: bool = False,
    passthroughs: list[str | Path] | None = None,
    processes: int = 1,
) -> ProgressGenerator[DeformationResult]:
    """Train the two half-set VAEs and write the run directory (see the module docstring).
    ``processes`` > 1 runs it on that many local processes (``engine.local_processes``: the half
    sets side by side), each with its share of this process's torch threads."""
    arguments = dict(locals())  # every argument, for the processes of ``processes`` > 1
    started = time.perf_counter()
    settings.check()
    context = distributed.current()
    check_processes(processes, device)
    if processes > 1:
        result = yield from on_processes_asked(optimize_deformations, arguments)
        result.seconds = time.perf_counter() - started
        return result
    main = context.is_main
    run = Path(output_directory)
    resumed = _check_run_directory(run, resume, settings)
    inputs = read_inputs(
        particles,
        consensus,
        mask,
        consensus_model,
        n_gaussians,
        box,
        data_root,
        context.device_for(check_device(device)),
        settings.validation_fraction,
        settings.seed,
        passthroughs,
    )
    prior = _atomic_prior(settings, inputs, consensus, consensus_model, n_gaussians)
    identity = input_identity(
        particles,
        inputs.table,
        consensus,
        mask,
        consensus_model,
        inputs.train_box,
        n_gaussians,
        threshold,
        {k: v for k, v in settings.to_dict().items() if k not in CHANGEABLE_ON_RESUME},
        passthrough_paths(particles, passthroughs),
        settings.atomic_model,
    )
    if resume:
        check_same_inputs(run, identity)  # before anything is written
    context.barrier()  # every rank has checked the run directory before rank 0 writes to it
    dev = inputs.device
    yield Progress(
        "preparing", 0, None, message=f"{len(inputs.table)} particles at box {inputs.train_box}"
    )
    batches = ParticleBatches(inputs.table, inputs.train_box, dev)
    try:
        if resumed is not None:
            initial = GaussianModel.from_state_dict(resumed["initial_model"])
        else:
            initial = None
            if prior is not None:
                initial = prior[0]
            elif main:
                initial = (
                    yield from _consensus_model(inputs, n_gaussians, threshold, settings.seed, dev)
                ).to("cpu")
            if context.is_distributed:  # the fit runs once, on rank 0
                state = context.broadcast_object(initial.state_dict() if main else None)
                initial = GaussianModel.from_state_dict(state)
        moving = moving_flags(initial.positions_angstrom, inputs.mask, inputs.voxel_size_angstrom)
        extent = 0.5 * inputs.consensus_map.shape[0] * inputs.voxel_size_angstrom
        halves = []
        for half in (1, 2):
            members = inputs.halves == half
            halves.append(
                HalfSet(
                    half,
                    initial,
                    np.nonzero(members & ~inputs.validation)[0],
                    np.nonzero(members & inputs.validation)[0],
                    batches.box,
                    extent,
                    settings,
                    moving,
                    dev,
                    context.half_group(half),
                    bonds=None if prior is None else prior[1],
                )
            )
            if prior is not None:  # the model is the reference: only the deformations move it
                halves[-1].positions.requires_grad_(False)
        history, stop, epoch = [], StopRule(settings.stop_after_increases), 0
        mine = [half for half in halves if context.holds(half.half)]
        if resumed is not None:
            for half, state in zip(halves, resumed["halves"], strict=True):
                ckpt.load_half_state(half, state)
            history = json.loads(resumed["history"])
            stop.load_state_dict(json.loads(resumed["stop"]))
            epoch = int(resumed["epoch"])
            amplitude_z = json.loads(resumed.get("amplitude_z", "null"))
        else:
            fits = {}
            for half in mine:  # before anything is written: a refusal leaves no run folder
                subset = half.train_rows[: settings.noise_subset]
                fits[half.half] = half.fit_amplitude(batches, subset)
                half.estimate_noise(batches, subset, deform=False)
            fits = _exchange_by_half(context, halves, fits)
            check_map_in_images(fits, particles, consensus)
            amplitude_z = {str(h): round(fit.z, 1) for h, fit in sorted(fits.items())}
            if main:
                run.mkdir(parents=True, exist_ok=True)
                save_model(
                    RunFolder(run).initial_model,
                    initial,
                    box=inputs.consensus_map.shape[0],
                    voxel_size_angstrom=inputs.voxel_size_angstrom,
                )
        if main:
            _write_run_file(
                run,
                settings,
                inputs,
                particles,
                consensus,
                consensus_model,
                mask,
                initial,
                None,
                identity=identity,
                data_root=data_root,
            )

        def state(stopped: bool) -> dict:
            return {
                "epoch": epoch,
                "refinement_round": refined,
                "stopped": stopped,
                "settings": json.dumps(settings.to_dict()),
                "history": json.dumps(history),
                "stop": json.dumps(stop.state_dict()),
                "amplitude_z": json.dumps(amplitude_z),
                "initial_model": initial.state_dict(),
                "halves": [ckpt.half_state(h) for h in halves],
            }

        stopped = bool(resumed["stopped"]) if resumed is not None else False
        reported: set[str] = set()  # kinds of watchdog warning already reported
        refined = int(resumed.get("refinement_round", 0)) if resumed is not None else 0
        while epoch < settings.epochs and not stopped and refined == 0:
            epoch += 1
            mode = epoch_mode(epoch, settings)
            losses = {}
            for half in mine:
                losses[half.half] = yield from half.epoch(mode, batches, epoch, settings.epochs)
                losses[half.half] |= watchdog.diagnose(half, batches)
                if mode == "warmup":
                    half.estimate_noise(
                        batches, half.train_rows[: settings.noise_subset], deform=False
                    )
            losses = _exchange_by_half(context, halves, losses)
            for index, half in enumerate(halves):
                stop.record(index, losses[half.half]["data"])
                history.append(
                    {"epoch": epoch, "half": half.half, "mode": mode} | losses[half.half]
                )
            yield from _report_new_warnings(watchdog.check(history), reported, epoch)
            if is_reference_update(epoch, settings):
                if prior is None:
                    update_references(
                        halves, batches, settings, batches.pixel_size_angstrom, context
                    )
                for half in mine:
                    half.estimate_noise(
                        batches, half.train_rows[: settings.noise_subset], deform=True
                    )
            stopped = stop.should_stop
            if main:
                outputs.write_loss_log(RunFolder(run).loss_log, history)
            if epoch % settings.checkpoint_every == 0 or epoch == settings.epochs or stopped:
                ckpt.share_halves(context, halves)
                if main:
                    ckpt.save_checkpoint(ckpt.epoch_path(run, epoch), state(stopped))
        while refined < settings.refinement_rounds:
            refined += 1
            losses = {}
            for half in mine:
                losses[half.half] = yield from refine_round(
                    half, batches, refined, settings.refinement_rounds
                )
                losses[half.half] |= watchdog.diagnose(half, batches)
            losses = _exchange_by_half(context, halves, losses)
            done = epoch + refined * settings.refinement_epochs
            history.extend(
                {"epoch": done, "half": half.half, "mode": "refinement"} | losses[half.half]
                for half in halves
            )
            yield from _report_new_warnings(watchdog.check(history), reported, done)
            ckpt.share_halves(context, halves)
            if main:
                outputs.write_loss_log(RunFolder(run).loss_log, history)
                ckpt.save_checkpoint(ckpt.epoch_path(run, done), state(stopped))
        if (
            main
        ):  # the last epoch or round was checkpointed, so every rank holds both halves' final state
            ckpt.save_checkpoint(ckpt.final_path(run), state(stopped))

        estimates = yield from estimate_errors(
            halves, batches, np.nonzero(inputs.validation)[0], group=context
        )
        latents = outputs.own_half_latents(estimates, inputs.halves, inputs.validation)
        agreement = watchdog.final_agreement(
            halves, estimates.latents, np.nonzero(inputs.validation)[0]
        )
        warnings = watchdog.check(history) + watchdog.final_check(
            halves, estimates.latents, np.nonzero(inputs.validation)[0], agreement
        )
        if prior is not None and not settings.bias_check:  # else the control follows the run
            warnings.append(model_bias_reminder(run))
        yield from _report_new_warnings(warnings, reported, epoch)
        if main:
            _write_outputs(run, inputs, estimates, halves, history)
        seconds = time.perf_counter() - started
        if main:
            _write_run_file(
                run,
                settings,
                inputs,
                particles,
                consensus,
                consensus_model,
                mask,
                initial,
                {
                    "epochs": epoch,
                    "refinement_rounds": refined,
                    "stopped_early": stopped and epoch < settings.epochs,
                    "seconds_last_start": seconds,
                    "world_size": context.world_size,
                    "amplitude_z": amplitude_z,
                    "halves_agreement": agreement,
                },
                warnings,
                identity=identity,
                data_root=data_root,
            )
        context.barrier()  # on return the run directory is complete for every rank
    finally:
        batches.close()
    return DeformationResult(
        run,
        epoch,
        stopped and epoch < settings.epochs,
        initial.n_gaussians,
        batches.box,
        seconds,
        latents,
        warnings,
    )


def _report_new_warnings(warnings: list[str], reported: set[str], epoch: int):
    """A ``Progress`` event (with ``warning`` set) for each watchdog warning of a kind not reported
    yet."""
    for warning in warnings:
        if watchdog.warning_key(warning) not in reported:
            reported.add(watchdog.warning_key(warning))
            yield Progress("watchdog", epoch, None, message=warning, warning=warning)


def check_map_in_images(fits: dict, particles, consensus) -> None:
    """Refuse (InputError) when a half's images show no trace of the consensus map: the amplitude
    fit's z-score (``HalfSet.fit_amplitude``) below ``MIN_AMPLITUDE_Z``. Such images (a map of
    another molecule, a wrong pixel size, a stack of noise) carry nothing a deformation could be
    learnt from, and training on them only fits noise."""
    weak = {h: fit.z for h, fit in sorted(fits.items()) if not fit.z >= MIN_AMPLITUDE_Z}
    if weak:
        scores = ", ".join(f"{fit.z:.1f} in half {h}" for h, fit in sorted(fits.items()))
        raise InputError(
            f"{particles}: the images do not show the consensus map {consensus} (amplitude fit "
            f"z = {scores}; particles of that map give z > {MIN_AMPLITUDE_Z:g}): check that the "
            "map, the particles and their pixel size belong together"
        )


def _exchange_by_half(context: distributed.Context, halves: list[HalfSet], values: dict) -> dict:
    """Both halves' values (epoch losses, amplitude fits) on every rank, each from the leader of its
    half's ranks."""
    if not context.halves_split:
        return values
    led = {h: v for h, v in values.items() if context.half_group(h).is_leader}
    return {h: v for part in context.all_gather_object(led) for h, v in part.items()}


def _write_outputs(
    run: Path, inputs: RunInputs, estimates, halves: list[HalfSet], history: list[dict]
) -> None:
    """Rank 0: latents, particle table, half models, per-Gaussian errors and the loss plot."""
    latents = outputs.write_latents(run, estimates, inputs.halves, inputs.validation)
    outputs.write_particle_table(
        run, inputs.table, latents, inputs.halves, inputs.validation, estimates
    )
    models = [h.model(detach=True).to("cpu") for h in halves]
    outputs.write_half_models(
        run, models, inputs.consensus_map.shape[0], inputs.voxel_size_angstrom
    )
    outputs.write_gaussian_errors(
        run, models[0].positions_angstrom.numpy(), estimates.gaussian_error_angstrom
    )
    outputs.plot_losses(run, history)


def _write_run_file(
    run,
    settings,
    inputs,
    particles,
    consensus,
    consensus_model,
    mask,
    initial,
    result,
    warnings=(),
    identity=None,
    data_root=None,
) -> None:
    """The run file (``RunFolder.info``): inputs, settings, sizes, the inputs' identity, and (at the
    end) the result and the watchdog's warnings; decode reads it. ``data_root``: the folder image
    names are relative to, when it is not the STAR file's (``run_folder.image_root``). The result's
    ``seconds_last_start`` is the wall time of the latest start only (a resumed run does not add the
    time before the resume)."""
    info = {
        "particles": str(Path(particles).resolve()),
        "consensus": str(Path(consensus).resolve()),
        "consensus_model": None
        if consensus_model is None
        else str(Path(consensus_model).resolve()),
        "mask": None if mask is None else str(Path(mask).resolve()),
        "data_root": None if data_root is None else str(Path(data_root).resolve()),
        "n_particles": len(inputs.table),
        "n_gaussians": initial.n_gaussians,
        "n_moving_gaussians": int(
            moving_flags(initial.positions_angstrom, inputs.mask, inputs.voxel_size_angstrom).sum()
        ),
        "half_sizes": [int((inputs.halves == h).sum()) for h in (1, 2)],
        "n_validation": int(inputs.validation.sum()),
        "consensus_box": int(inputs.consensus_map.shape[0]),
        "voxel_size_angstrom": float(inputs.voxel_size_angstrom),
        "train_box": int(inputs.train_box),
        "device": str(inputs.device),
        "settings": settings.to_dict(),
        "result": result,
        "warnings": list(warnings),
        "identity": identity,
    }
    with atomic_path(RunFolder(run).info) as tmp:
        tmp.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
