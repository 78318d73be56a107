"""The processes of a run: which one this is, its share of the work, the others' gathered.

Under ``accelerate launch`` or ``torchrun`` several processes run the same pipeline
(:mod:`lib.experiment`), one per GPU (two CPU processes over gloo in the tests). Training
splits its batches itself (DDP, :mod:`lib.train.loop`); the rest of the work is split here,
where every process reaches the same code together (:func:`together`): the feature pass
(:func:`lib.data.features.extract_features`) and decoding (:mod:`lib.evaluate.decode`). Each
process takes :func:`share` of a list, :func:`gather` puts the pieces back in the list's
order on every process, and a result kept in the cache is written by the main process
alone, the others waiting at a :func:`barrier` until it is there (:func:`lib.cache.cached`).

Outside :func:`together` (a chapter, or one process doing something the others do not, like
the dev check inside training) a process is rank 0 of 1: it does the whole work and waits
for no one. Imports nothing of the library. Stage: all (several processes).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

T = TypeVar("T")
_TOGETHER = [False]


def _group() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@contextlib.contextmanager
def together() -> Iterator[None]:
    """Mark code that every process of the run reaches at the same point: inside it the
    work is split among them (:func:`rank_world`); nested uses are one."""
    outer = _TOGETHER[0]
    _TOGETHER[0] = True
    try:
        yield
    finally:
        _TOGETHER[0] = outer


def rank_world() -> tuple[int, int]:
    """``(rank, number of processes)`` splitting the work here: the process group's inside
    :func:`together`, else ``(0, 1)``."""
    return _group() if _TOGETHER[0] else (0, 1)


def leads() -> bool:
    """Whether this process decides for those splitting the work with it (rank 0 inside
    :func:`together`; any process working alone)."""
    return rank_world()[0] == 0


def is_main() -> bool:
    """Whether this process writes what all of them computed (the main one, or the only)."""
    return _group()[0] == 0


def barrier() -> None:
    """Wait until every process splitting the work has come here."""
    if rank_world()[1] > 1:
        import torch.distributed as dist

        dist.barrier()


def share(items: Sequence[T]) -> list[T]:
    """This process's share of ``items``: every ``world``-th from its rank on (a list sorted
    longest first gives each process as much)."""
    rank, world = rank_world()
    return list(items[rank::world])


def gather(mine: Sequence[Any]) -> list[Any]:
    """Every process's :func:`share`, computed item by item, put back in the order of the
    list the shares were taken from, on every process."""
    rank, world = rank_world()
    if world == 1:
        return list(mine)
    import torch.distributed as dist

    every: list[Any] = [None] * world
    dist.all_gather_object(every, list(mine))
    out: list[Any] = [None] * sum(len(p) for p in every)
    for r, piece in enumerate(every):
        out[r::world] = piece
    return out


def agree(value: T) -> T:
    """The main process's ``value`` on every process (e.g. whether a result is cached: all
    compute it, or none)."""
    if rank_world()[1] == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
