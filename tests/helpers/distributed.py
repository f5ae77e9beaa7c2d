"""Launching a function in two gloo processes on this machine, as torchrun would start them."""

from __future__ import annotations

import torch.multiprocessing as mp

from napari_dynamight.engine import distributed
from napari_dynamight.engine.local_processes import free_port, join_as_rank

WORLD = 2


def _worker(rank: int, port: int, split: bool | None, call, args: tuple) -> None:
    join_as_rank(rank, WORLD, port, threads=1, split_halves=split)
    call(*args)
    # on failure the process just exits and the launcher stops the other rank
    distributed.shutdown()


def launch(call, *args, split: bool | None = None) -> None:
    """Run ``call(*args)`` in two gloo processes (as torchrun would start them)."""
    mp.start_processes(
        _worker, args=(free_port(), split, call, args), nprocs=WORLD, start_method="spawn"
    )
