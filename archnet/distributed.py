"""The process group under ``torchrun``: one place that knows rank, world size and backend.

Under ``torchrun --nproc_per_node=N`` the environment carries ``RANK``, ``WORLD_SIZE`` and the
rendezvous address; ``init_from_env`` joins the group (gloo on CPU, NCCL when CUDA is present).
Without those variables everything is a group of one and every helper is a no-op, so the same
code runs in a plain process and in tests.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch
import torch.distributed as dist


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env() -> bool:
    """Join the process group ``torchrun`` describes; True when running distributed."""
    if dist.is_available() and dist.is_initialized():
        return True
    if env_world_size() <= 1 or not dist.is_available():
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    return True


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum over ranks (in place; returned for chaining)."""
    if active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_object(obj, src: int = 0):
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def shard(n: int) -> range:
    """This rank's items of ``range(n)``: contiguous, sizes differ by at most one."""
    r, w = rank(), world_size()
    return range(n * r // w, n * (r + 1) // w)


_GLOO_WIDER = {torch.int16: torch.int32}


def gather_shards(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``shard`` along dim 0, in rank order (same on every rank)."""
    if not active():
        return t
    if t.dtype in _GLOO_WIDER:          # gloo gathers no 16-bit integers (a 16-bit stream's)
        return gather_shards(t.to(_GLOO_WIDER[t.dtype])).to(t.dtype)
    sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([t.shape[0]], dtype=torch.int64))
    biggest = int(max(s.item() for s in sizes))
    padded = torch.zeros((biggest, *t.shape[1:]), dtype=t.dtype)
    padded[:t.shape[0]] = t
    parts = [torch.zeros_like(padded) for _ in range(world_size())]
    dist.all_gather(parts, padded)
    return torch.cat([p[:int(s.item())] for p, s in zip(parts, sizes)], dim=0)


@contextmanager
def main_first():
    """Rank 0 runs the body first (e.g. writes a file), the others after it is done."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def shutdown(failed: bool = False) -> None:
    """Leave the group. After success every rank meets at a barrier first: a rank that tears
    its gloo pairs down while its peer still has traffic on them can abort the peer at exit
    (seen once in CI: rank 0 SIGABRT after the last collective). After a failure no barrier,
    since the other ranks may be waiting in a different collective and would hang with it."""
    if dist.is_available() and dist.is_initialized():
        if not failed and dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()
