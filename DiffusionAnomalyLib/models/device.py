"""Where the networks run: the device (auto: CUDA > MPS > CPU) and torch.distributed under torchrun.

Shared by inference (run, batch, evaluate) and training; nothing here trains.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from DiffusionAnomalyLib.errors import InputError


def select_device(name: str = "auto") -> torch.device:
    """auto: CUDA > MPS > CPU; or exactly the device asked for (with a clear error if absent)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    import re

    if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", str(name)):
        raise InputError(f"--device {name!r}: unknown device; use auto, cpu, cuda, cuda:N or mps")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("CUDA was asked for but no CUDA GPU is available to PyTorch (CPU build, no driver or "
                         "no GPU); use --device cpu or install a CUDA build of torch")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise InputError(f"--device {name}: there are only {torch.cuda.device_count()} CUDA device(s) "
                         f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError("--device mps: Apple's MPS backend is not available here; use --device cpu")
    return torch.device(name)


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    """Set up DDP when launched by torchrun (RANK / WORLD_SIZE set): gloo on CPU, NCCL on CUDA."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", 1)) == 1:
        return Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def barrier(d: Dist) -> None:
    if d.enabled:
        import torch.distributed as dist

        dist.barrier()


@contextmanager
def main_rank_first(d: Dist) -> Iterator[None]:
    """Run the block on rank 0 first, then on the other ranks (data caches are written once, then read)."""
    if d.enabled and not d.is_main:
        barrier(d)
    yield
    if d.enabled and d.is_main:
        barrier(d)


#: Set by :func:`keep_process_group`: stages leave the process group in place for the next one.
_KEEP_GROUP = False


@contextmanager
def keep_process_group(device: torch.device) -> Iterator[Dist]:
    """One process group for several stages in one torchrun launch (``train all``): each stage's
    :func:`init_distributed` reuses it and its :func:`shutdown` leaves it; it is destroyed at the end. (Destroying
    and creating the group again in the same launch can hang: the new group meets the old one's keys in the
    launcher's store.)"""
    global _KEEP_GROUP
    d = init_distributed(device)
    _KEEP_GROUP, before = True, _KEEP_GROUP
    try:
        yield d
    finally:
        _KEEP_GROUP = before
        shutdown(d)


def shutdown(d: Dist) -> None:
    if d.enabled and not _KEEP_GROUP:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
