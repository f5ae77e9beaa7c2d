"""Launching a function in two gloo processes on this machine, as torchrun would start them."""

from __future__ import annotations

import os
import socket

import torch
import torch.multiprocessing as mp

from napari_dynamight.engine import distributed

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, split: bool | None, call, args: tuple) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    distributed.initialise(split_halves=split)
    call(*args)
    # on failure the process just exits and the launcher stops the other rank
    distributed.shutdown()


def launch(call, *args, split: bool | None = None) -> None:
    """Run ``call(*args)`` in two gloo processes (as torchrun would start them)."""
    mp.start_processes(
        _worker, args=(_free_port(), split, call, args), nprocs=WORLD, start_method="spawn"
    )
