"""A finished tiny deformation run made by the command line (one torch thread), shared by the
run-safety and bad-input tests; and the command that makes it."""

from __future__ import annotations

from pathlib import Path

import pytest

from napari_dynamight.cli import main

QUICK = [
    "--epochs",
    "2",
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
    "1",
    "--refinement-epochs",
    "1",
    "--latent-inference",
    "encoder",
    "--posterior-candidates",
    "16",
    "--threads",
    "1",
]


def optimize_command(simulated, out: Path, *extra: str, star: Path | None = None) -> list[str]:
    """``optimize-deformations`` of the tiny set with the quick settings into ``out``."""
    return [
        "optimize-deformations",
        "--particles",
        str(star or simulated.star),
        "--consensus",
        str(simulated.consensus),
        "--consensus-model",
        str(simulated.model),
        "--output-directory",
        str(out),
        *QUICK,
        *extra,
    ]


@pytest.fixture(scope="session")
def finished_run(simulated, tmp_path_factory) -> Path:
    """A finished quick run (2 epochs, 1 refinement round, encoder latents: a few seconds), trained on
    one torch thread."""
    import torch

    threads = torch.get_num_threads()
    out = tmp_path_factory.mktemp("finished") / "run"
    try:
        assert main(optimize_command(simulated, out)) == 0
    finally:
        torch.set_num_threads(threads)
    return out
