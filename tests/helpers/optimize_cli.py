"""The ``optimize-deformations`` command of the tiny simulated set with quick settings, a finished
run made by it (one torch thread), and the check of a one-line command-line error; shared by the
command-line, atomic-prior, run-safety and bad-input tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from napari_dynamight.cli import main


def quick_options(epochs: int = 2, refinement_rounds: int = 1) -> list[str]:
    """Small networks, a one-epoch warm-up and a checkpoint every epoch; each refinement round (if
    any) one epoch long."""
    options = [
        "--epochs",
        str(epochs),
        "--batch-size",
        "64",
        "--decoder-width",
        "16",
        "--decoder-depth",
        "1",
        "--warmup-epochs",
        "1",
        "--checkpoint-every",
        "1",
        "--refinement-rounds",
        str(refinement_rounds),
    ]
    if refinement_rounds:
        options += ["--refinement-epochs", "1"]
    return options


# The finished run's settings: the quick ones, encoder latents and one torch thread.
QUICK = [
    *quick_options(),
    "--latent-inference",
    "encoder",
    "--posterior-candidates",
    "16",
    "--threads",
    "1",
]


def optimize_command(
    simulated,
    out: Path,
    *extra: str,
    star: Path | None = None,
    quick: list[str] = QUICK,
    consensus_model: bool = True,
) -> list[str]:
    """``optimize-deformations`` of the tiny set (``star`` instead of its particles if given) into
    ``out`` with the ``quick`` settings, then ``extra``; without ``--consensus-model`` if
    ``consensus_model`` is false."""
    model = ["--consensus-model", str(simulated.model)] if consensus_model else []
    return [
        "optimize-deformations",
        "--particles",
        str(star or simulated.star),
        "--consensus",
        str(simulated.consensus),
        *model,
        "--output-directory",
        str(out),
        *quick,
        *extra,
    ]


def one_line_error(capsys, status: int, *words: str) -> None:
    """The command exited with 2 and wrote one ``error: `` line to stderr containing ``words``."""
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and err[0].startswith("error: "), err
    for word in words:
        assert word in err[0], err[0]


@pytest.fixture(scope="session")
def finished_run(simulated, tmp_path_factory) -> Path:
    """A finished quick run (2 epochs, 1 refinement round, encoder latents: a few seconds), trained
    on one torch thread."""
    import torch

    threads = torch.get_num_threads()
    out = tmp_path_factory.mktemp("finished") / "run"
    try:
        assert main(optimize_command(simulated, out)) == 0
    finally:
        torch.set_num_threads(threads)
    return out
