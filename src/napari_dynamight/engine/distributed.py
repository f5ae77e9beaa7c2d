"""One code path for one process or many: the torch.distributed context of this process.

Launched by ``torchrun`` (directly or under SLURM's ``srun``), every process finds RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT in its environment; :func:`current` then joins the process
group (``gloo`` for CPU tensors, plus ``nccl`` for CUDA tensors when CUDA is present) once and
caches the result. Without those variables, or with WORLD_SIZE 1, it is a single-process context
whose collectives are no-ops that cost nothing, so the engine's stages call them unconditionally.

A :class:`Group` is a set of ranks working on one thing together: the whole world, or the ranks of
one half set. With an even world size of at least 2 the first half of the ranks train half set 1 and
the others half set 2 (:meth:`Context.half_group`); otherwise every rank trains both, one after the
other, and both half groups are the world. Within a group, :meth:`Group.shard` gives each rank a
contiguous, order-keeping share of any row list, so the union over the group is the list itself and
concatenating the shares in rank order restores it.

Data-parallel training with these pieces: every rank of a group builds the same batch, takes its
:meth:`Group.share`, weights its loss with :func:`part_of_mean`, and after ``backward`` calls
:func:`sum_gradients_`; then every rank takes the same optimiser step. Only ``is_main`` writes
files.
"""

from __future__ import annotations

import gc
import os
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

_ENVIRONMENT = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _to_cpu(value: Any) -> Any:
    """A copy of nested dicts/lists/tuples with every tensor moved to the CPU (for pickling)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


class Group:
    """The ranks ``ranks`` (global numbers, ascending) seen from global rank ``rank``."""

    def __init__(self, ranks: tuple[int, ...], rank: int, handle=None):
        self.ranks, self.handle, self._rank = tuple(ranks), handle, rank

    @property
    def size(self) -> int:
        return len(self.ranks)

    @property
    def contains_me(self) -> bool:
        return self._rank in self.ranks

    @property
    def index(self) -> int:
        """This rank's position in the group (0 for the group's leader)."""
        return self.ranks.index(self._rank)

    @property
    def leader(self) -> int:
        """The global rank of the group's first member: it holds the group's results."""
        return self.ranks[0]

    @property
    def is_leader(self) -> bool:
        return self._rank == self.leader

    def share(self, n: int, index: int | None = None) -> slice:
        """The contiguous slice of ``n`` items that group member ``index`` (default: this rank)
        takes; sizes differ by at most one and the first members take the larger shares."""
        index = self.index if index is None else index
        base, extra = divmod(n, self.size)
        start = index * base + min(index, extra)
        return slice(start, start + base + (index < extra))

    def shard(self, rows: np.ndarray) -> np.ndarray:
        """This rank's share of ``rows`` (deterministic, in order; all of it in a group of one)."""
        return rows if self.size == 1 else rows[self.share(len(rows))]

    def all_reduce_sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over the group in place (every member gets the sum); returns it."""
        if self.size > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.handle)
        return tensor

    def all_gather_object(self, obj: Any) -> list:
        """Every member's ``obj`` (tensors moved to the CPU), in group order."""
        if self.size == 1:
            return [obj]
        gathered = [None] * self.size
        dist.all_gather_object(gathered, _to_cpu(obj), group=self.handle)
        return gathered

    def broadcast_object(self, obj: Any, src: int | None = None) -> Any:
        """``obj`` of global rank ``src`` (default: the leader) on every member; tensors on the
        CPU."""
        if self.size == 1:
            return obj
        box = [_to_cpu(obj) if self._rank == (self.leader if src is None else src) else None]
        dist.broadcast_object_list(box, src=self.leader if src is None else src, group=self.handle)
        return box[0]

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier(group=self.handle)


class Context(Group):
    """This process in the world: rank, world size, devices, and the two half groups."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0, halves=None):
        super().__init__(
            tuple(range(world_size)), rank, None
        )  # None: torch's default (world) group
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self._halves = halves or {1: self, 2: self}

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def halves_split(self) -> bool:
        """True when the two half sets train on disjoint groups of ranks."""
        return self._halves[1] is not self._halves[2]

    def half_group(self, half: int) -> Group:
        """The ranks that train half set ``half`` (1 or 2)."""
        return self._halves[half]

    def holds(self, half: int) -> bool:
        """Whether this rank trains half set ``half``."""
        return self._halves[half].contains_me

    def device_for(self, requested: str | torch.device) -> torch.device:
        """The device this process uses when the user asked for ``requested``: with several
        processes a CUDA request means this process's own GPU, ``cuda:LOCAL_RANK`` (one process per
        GPU)."""
        device = torch.device(requested)
        if device.type == "cuda" and self.is_distributed and torch.cuda.is_available():
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        return device


def part_of_mean(mean, count: int, total: int):
    """A share's mean (over ``count`` of ``total`` items) as its part of the whole mean, so that the
    parts summed over the group give the whole mean (and their gradients the whole gradient).
    Returned unchanged, not even multiplied by 1, when the share is everything (one process)."""
    return mean if count == total else mean * (count / total)


def sum_tensors_(group: Group, tensors: list[torch.Tensor]) -> None:
    """Sum tensors (one dtype, one device) over the group in place through one flat buffer, so a
    whole list costs one collective."""
    if group.size == 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    group.all_reduce_sum_(flat)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


def sum_gradients_(group: Group, parameters: list[torch.Tensor]) -> None:
    """Sum ``.grad`` of ``parameters`` over the group (each member's loss being its share of the
    batch mean, the sum is the whole batch's gradient). A missing gradient counts as zeros and stays
    missing only when it is missing on every member, as it would be in one process (Adam skips such
    tensors)."""
    if group.size == 1:
        return
    grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in parameters]
    present = torch.tensor(
        [float(p.grad is not None) for p in parameters], device=parameters[0].device
    )
    sum_tensors_(group, grads + [present])
    for p, g, seen in zip(parameters, grads, present.tolist(), strict=True):
        p.grad = g if seen > 0 else None


_CURRENT: Context | None = None


def _from_environment(split_halves: bool | None) -> Context:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Context()
    missing = [name for name in _ENVIRONMENT if name not in os.environ]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE={world_size} but {', '.join(missing)} not set; launch with torchrun"
        )
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    halves = None
    if split_halves is None:
        split_halves = world_size % 2 == 0
    if split_halves:  # every rank must create every group, members or not
        if world_size % 2:
            raise ValueError(
                f"cannot split the half sets over an odd number of ranks ({world_size})"
            )
        split = world_size // 2
        first, second = tuple(range(split)), tuple(range(split, world_size))
        halves = {
            1: Group(first, rank, dist.new_group(list(first))),
            2: Group(second, rank, dist.new_group(list(second))),
        }
    return Context(rank, world_size, local_rank, halves)


def initialise(split_halves: bool | None = None) -> Context:
    """Join the process group described by the environment and cache the context. ``split_halves``:
    train the half sets on disjoint halves of the ranks (default: whenever the world size is even);
    False keeps both halves on every rank, data-parallel over all of them."""
    global _CURRENT
    shutdown()
    _CURRENT = _from_environment(split_halves)
    return _CURRENT


def current() -> Context:
    """The context of this process (joins the process group on the first call; cached)."""
    return _CURRENT if _CURRENT is not None else initialise()


def single() -> Context:
    """A single-process context whatever the environment (for code that must not communicate)."""
    return Context()


def shutdown() -> None:
    """Leave the process group (if joined; after a barrier, so that no rank tears down its
    connections while a peer's last collective is still in flight) and forget the cached context."""
    global _CURRENT
    if _CURRENT is not None and _CURRENT.is_distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        # Drop our references too, so that no process group is left to be destroyed during
        # interpreter shutdown (gloo then aborts on its still-running threads).
        for group in (_CURRENT._halves[1], _CURRENT._halves[2]):
            group.handle = None
        gc.collect()
    _CURRENT = None
