"""An engine operation on several processes of this machine, started the way torchrun starts them.

The two half sets never exchange gradients, so on a CPU they train best side by side: one process
per half set, each with its share of the threads, instead of one process that trains them in turn
with all of them (a step at batch 64 keeps two threads only partly busy: on a 2-core CPU the default
4,000-particle run took 195-261 s this way against 342-346 s in one process with two threads,
docs/deformations.md). :func:`on_local_processes` spawns the processes, joins them into a gloo
process group exactly as ``torchrun`` would (``engine.distributed``), runs the operation in each and
relays rank 0's progress events and result, so the caller (the command line's bar, a napari worker)
sees one ordinary operation. Closing it (the caller's cancel) stops the processes; their outputs are
written atomically by rank 0, so nothing partial is left. A one-line :class:`InputError` in any
process is raised as the same one line here; any other failure as a ``RuntimeError`` with the
process's traceback.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable

import torch

from . import distributed
from .device import check_device
from .errors import InputError
from .progress import ProgressGenerator

POLL_SECONDS = 0.5  # how often the relay looks for processes that ended without a word
STOP_SECONDS = 30.0  # how long a cancelled process may take to unwind before it is killed


def automatic_processes(device: str | torch.device, threads: int | None = None) -> int:
    """How many processes a run of two half sets should use when the user did not say: 2 (one per
    half set, ``threads // 2`` threads each) on a CPU given at least 2 threads (default: torch's
    thread count in this process), else 1 (a GPU, one thread, or a process that ``torchrun``
    already started)."""
    if distributed.current().is_distributed or _device_type(device) != "cpu":
        return 1  # an unknown device too: the operation refuses it in one line
    threads = torch.get_num_threads() if threads is None else threads
    return 2 if threads >= 2 else 1


def _device_type(device: str | torch.device) -> str | None:
    """``cpu``, ``cuda``, ...; None for a string that names no torch device."""
    try:
        return torch.device(device).type
    except (RuntimeError, TypeError):
        return None


def check_processes(processes: int, device: str | torch.device) -> None:
    """Refuse (one line) a process count that cannot run: below 1, several inside a ``torchrun``
    launch, or more CUDA processes than GPUs (each process takes its own, ``cuda:LOCAL_RANK``)."""
    if processes < 1:
        raise InputError(f"--processes {processes}: give at least 1")
    if processes > 1 and distributed.current().is_distributed:
        raise InputError(
            f"--processes {processes} under torchrun: torchrun starts the processes "
            "(--nproc-per-node); drop --processes"
        )
    if processes > 1 and check_device(device).type == "cuda":  # a bad device: refused here
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if processes > gpus:
            raise InputError(
                f"--processes {processes} with --device {device}: each process needs its own GPU "
                f"and this machine has {gpus}; give --processes {max(1, gpus)} or fewer"
            )


def free_port() -> int:
    """A TCP port of this machine that nothing listens on now (for the process group's store)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def join_as_rank(
    rank: int, world_size: int, port: int, threads: int, split_halves: bool | None = None
) -> distributed.Context:
    """Make this process rank ``rank`` of ``world_size`` on this machine (the environment torchrun
    would give it) with ``threads`` torch threads, and join the process group
    (``distributed.initialise(split_halves)``)."""
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(threads)
    return distributed.initialise(split_halves)


def _end_with_parent(parent: int) -> None:
    """Exit this process as soon as its parent is gone (killed without a chance to stop us)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


class _Stopped(BaseException):
    """Raised in a process by SIGTERM (the caller's cancel): unwinds it, so that an atomic write in
    progress removes its temporary file."""


def _stop(signum, frame) -> None:
    raise _Stopped


def _process(rank, world_size, port, threads, parent, operation, kwargs, messages) -> None:
    """The body of one spawned process: run ``operation(**kwargs)`` as rank ``rank``; rank 0 sends
    its events and result, every rank its failure."""
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the caller, which stops us
    _end_with_parent(parent)
    try:
        join_as_rank(rank, world_size, port, threads)
        steps = operation(**kwargs)
        while True:
            try:
                event = next(steps)
            except StopIteration as finished:
                result = finished.value
                break
            if rank == 0:
                messages.put(("event", rank, event))
        distributed.shutdown()
        messages.put(("result", rank, result if rank == 0 else None))
    except _Stopped:
        pass
    except InputError as error:
        messages.put(("input error", rank, str(error)))
    except BaseException:  # noqa: BLE001 - any failure must reach the parent, not vanish
        messages.put(("error", rank, traceback.format_exc()))
    finally:
        # nothing is left to unwind: a SIGTERM during the interpreter's exit (the parent stopping
        # a process slow to exit) ends it quietly instead of raising in an exit handler
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def on_local_processes(
    operation: Callable[..., ProgressGenerator], kwargs: dict, processes: int, threads: int
) -> ProgressGenerator:
    """Run ``operation(**kwargs)`` (a module-level engine generator function whose arguments can be
    pickled) on ``processes`` spawned processes of ``threads`` torch threads each, joined as ranks
    of one gloo process group; yields rank 0's events and returns its result."""
    context = multiprocessing.get_context("spawn")
    messages = context.Queue()
    port = free_port()
    workers = [
        context.Process(
            target=_process,
            args=(rank, processes, port, threads, os.getpid(), operation, kwargs, messages),
            daemon=True,
        )
        for rank in range(processes)
    ]
    try:
        for worker in workers:
            worker.start()
        done, result, silent = set(), None, set()
        while len(done) < processes:
            try:
                kind, rank, payload = messages.get(timeout=POLL_SECONDS)
            except queue.Empty:
                silent = _check_alive(workers, done, silent)
                continue
            if kind == "event":
                yield payload
            elif kind == "result":
                done.add(rank)
                if rank == 0:
                    result = payload
            elif kind == "input error":
                raise InputError(payload)
            else:
                raise RuntimeError(f"process {rank} of {processes} failed:\n{payload}")
        for worker in workers:  # finished: let them exit on their own first
            worker.join(STOP_SECONDS)
        return result
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.terminate()  # SIGTERM: the process unwinds (``_Stopped``)
        for worker in workers:
            worker.join(STOP_SECONDS)
            if worker.is_alive():  # stuck in a long native call: stop it outright
                worker.kill()
                worker.join()
        messages.close()


def _check_alive(workers, done: set[int], silent: set[int]) -> set[int]:
    """The ranks that have ended without reporting their end; raise for one that was already
    silent at the previous look (a process's last message may still be on its way at the first:
    a process killed, or out of memory, sends none)."""
    ended = {r for r, w in enumerate(workers) if r not in done and w.exitcode is not None}
    for rank in sorted(ended & silent):
        raise RuntimeError(
            f"process {rank} of {len(workers)} ended with exit code {workers[rank].exitcode} "
            "before it finished (out of memory? killed?)"
        )
    return ended


def on_processes_asked(
    operation: Callable[..., ProgressGenerator], arguments: dict
) -> ProgressGenerator:
    """``operation(**arguments)`` on ``arguments["processes"]`` local processes, each running it
    with ``processes=1`` and its share of this process's torch threads (what an operation with a
    ``processes`` argument does when that is above 1)."""
    processes = arguments["processes"]
    threads = max(1, torch.get_num_threads() // processes)
    return on_local_processes(operation, arguments | {"processes": 1}, processes, threads)
