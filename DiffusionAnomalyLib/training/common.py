"""Shared training machinery: devices, torchrun/DDP, EMA, checkpoints (safetensors), logs and plots."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from DiffusionAnomalyLib.errors import InputError

logger = logging.getLogger(__name__)


# -- devices and distributed ---------------------------------------------------------------------
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


# -- work folders ----------------------------------------------------------------------------------
def cleans_empty_work(func):
    """Decorator for a ``train_*(cfg)`` function: when it fails, its ``<cfg.out>.work`` folder is removed again if the
    run created it and wrote no file into it (a bad dataset leaves no empty work folder behind)."""
    import functools
    import shutil

    @functools.wraps(func)
    def wrapper(cfg, *args, **kwargs):
        work = Path(f"{cfg.out}.work")
        existed = work.exists()
        try:
            return func(cfg, *args, **kwargs)
        except BaseException:
            if not existed and work.is_dir() and not any(p.is_file() for p in work.rglob("*")):
                shutil.rmtree(work, ignore_errors=True)
            raise

    return wrapper


# -- EMA -----------------------------------------------------------------------------------------
class EMA:
    """Exponential moving average of a model's parameters (kidney thesis: decay 0.995)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        import copy

        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for e, p in zip(self.model.state_dict().values(), model.state_dict().values(), strict=True):
            if e.dtype.is_floating_point:
                e.mul_(self.decay).add_(p.detach(), alpha=1 - self.decay)
            else:
                e.copy_(p)


# -- checkpoints (no pickle) -------------------------------------------------------------------------
def save_checkpoint(folder: Path, modules: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                    state: dict) -> None:
    """Model and optimizer tensors in safetensors, everything else in JSON; written atomically."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    meta: dict = {"state": state, "optimizers": {}}
    for name, m in modules.items():
        for k, v in m.state_dict().items():
            tensors[f"module.{name}.{k}"] = v.detach().cpu().contiguous()
    for name, opt in optimizers.items():
        sd = opt.state_dict()
        meta["optimizers"][name] = {"param_groups": sd["param_groups"], "state_keys": {}}
        for idx, st in sd["state"].items():
            keys = []
            for k, v in st.items():
                if torch.is_tensor(v):
                    tensors[f"optim.{name}.{idx}.{k}"] = v.detach().cpu().contiguous()
                    keys.append(k)
            meta["optimizers"][name]["state_keys"][str(idx)] = keys
    tmp = folder / ".checkpoint.tmp.safetensors"
    save_file(tensors, str(tmp))
    (folder / ".checkpoint.tmp.json").write_text(json.dumps(meta))
    os.replace(tmp, folder / "checkpoint.safetensors")
    os.replace(folder / ".checkpoint.tmp.json", folder / "checkpoint.json")


def load_checkpoint(folder: Path, modules: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                    device: torch.device) -> dict | None:
    """Restore a checkpoint written by :func:`save_checkpoint`; None when there is none."""
    from safetensors.torch import load_file

    if not (folder / "checkpoint.safetensors").is_file():
        return None
    tensors = load_file(str(folder / "checkpoint.safetensors"), device=str(device))
    meta = json.loads((folder / "checkpoint.json").read_text())
    for name, m in modules.items():
        prefix = f"module.{name}."
        m.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    for name, opt in optimizers.items():
        om = meta["optimizers"][name]
        state = {int(idx): {k: tensors[f"optim.{name}.{idx}.{k}"] for k in keys}
                 for idx, keys in om["state_keys"].items()}
        opt.load_state_dict({"state": state, "param_groups": om["param_groups"]})
    return meta["state"]


# -- logs -----------------------------------------------------------------------------------------
class TrainLog:
    """Progress with ETA as log records (INFO), plus ``log.jsonl`` and ``log.csv`` in the work folder (rank 0 only)."""

    def __init__(self, folder: Path, total: int, enabled: bool = True, start: int = 0) -> None:
        self.folder, self.total, self.enabled = folder, total, enabled
        self.t0, self.start = time.perf_counter(), start
        self.rows: list[dict] = []
        if enabled and start == 0:
            (folder / "log.jsonl").unlink(missing_ok=True)
        if enabled and (folder / "log.jsonl").is_file():
            self.rows = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines() if line]
            self.rows = [r for r in self.rows if r["iteration"] <= start]

    def eta(self, it: int) -> float:
        done = max(it - self.start, 1)
        return (time.perf_counter() - self.t0) / done * (self.total - it)

    def log(self, it: int, **values: float) -> None:
        if not self.enabled:
            return
        row = {"iteration": it, "elapsed_s": round(time.perf_counter() - self.t0, 2), **values}
        self.rows.append(row)
        with open(self.folder / "log.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        shown = " ".join(f"{k} {v:.4f}" for k, v in values.items() if isinstance(v, float) and math.isfinite(v))
        logger.info("[%d/%d] %s | ETA %.0f s", it, self.total, shown, self.eta(it))

    def write_csv_and_plot(self, out: Path, title: str) -> None:
        if not self.enabled or not self.rows:
            return
        keys = sorted({k for r in self.rows for k in r})
        with open(out / "log.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(self.rows)
        (out / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in self.rows))
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for key in [k for k in keys if k not in ("iteration", "elapsed_s")]:
            pts = [(r["iteration"], r[key]) for r in self.rows if isinstance(r.get(key), (int, float))]
            if pts:
                ax.plot(*zip(*pts, strict=True), label=key)
        ax.set_xlabel("iteration")
        ax.set_title(title)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "loss_curve.png", dpi=100)
        plt.close(fig)


def infinite_batches(n: int, batch_size: int, dist: Dist, seed: int, weights=None):
    """Endless index batches over ``n`` items, sharded across ranks (DistributedSampler semantics).

    ``weights`` (per item) draws with replacement, e.g. to balance healthy and unhealthy.
    """
    epoch = 0
    while True:
        g = torch.Generator().manual_seed(seed + epoch)
        if weights is not None:
            order = torch.multinomial(torch.as_tensor(weights, dtype=torch.float), n, replacement=True, generator=g)
        else:
            order = torch.randperm(n, generator=g)
        order = order[dist.rank::dist.world_size]
        for i in range(0, len(order) - batch_size + 1 if len(order) >= batch_size else 1, batch_size):
            yield order[i:i + batch_size]
        epoch += 1


def autocast(device: torch.device, enabled: bool = True):
    """bfloat16 autocast on CUDA (no loss scaling needed); a no-op elsewhere."""
    if device.type == "cuda" and enabled:
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    import contextlib

    return contextlib.nullcontext()


def wrap_ddp(model: nn.Module, dist: Dist, device: torch.device) -> nn.Module:
    if not dist.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


def bundle_extras(previous: Path | None, work: Path, part: str) -> dict[str, Path]:
    """Files to put in the new bundle: the logs and loss curves of the bundle it extends, plus this part's."""
    extras = {p.name: p for p in sorted(previous.glob("*_log.csv")) + sorted(previous.glob("*_loss.png"))} \
        if previous else {}
    extras.update({f"{part}_log.csv": work / "log.csv", f"{part}_loss.png": work / "loss_curve.png"})
    return extras
