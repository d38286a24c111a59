"""Shared training machinery: DDP wrapping, EMA, checkpoints (safetensors), logs and plots."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from pathlib import Path

import torch
from torch import nn

from DiffusionAnomalyLib.models.device import (  # noqa: F401 (re-exported for the trainers)
    Dist,
    barrier,
    init_distributed,
    keep_process_group,
    main_rank_first,
    select_device,
    shutdown,
)
from DiffusionAnomalyLib.models.precision import resolve_precision

logger = logging.getLogger(__name__)


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


class TrainingLoop:
    """The loop the three trainers share (autoencoder, denoiser, classifier).

    On construction it resumes from the work folder's checkpoint when asked (``state`` then holds the saved
    iteration and best scores). :meth:`run` calls ``step(it)`` for each remaining iteration (it returns the
    training losses, as tensors or numbers); every ``val_every`` iterations and at the last it calls
    ``validate(state)`` (which returns the validation figures and keeps the best model in ``modules``), logs
    both with an ETA, and every ``checkpoint_every`` iterations saves ``modules`` and ``optimizers``
    (safetensors) on rank 0. At the end it waits for every rank and writes ``log.csv`` and the loss curve.
    """

    def __init__(self, work: Path, iterations: int, val_every: int, checkpoint_every: int, dist: Dist,
                 device: torch.device, modules: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                 state: dict, resume: bool = False) -> None:
        self.work, self.iterations, self.dist = work, iterations, dist
        self.val_every, self.checkpoint_every = val_every, checkpoint_every
        self.modules, self.optimizers, self.state = modules, optimizers, {"iteration": 0, **state}
        if resume:
            self.state = load_checkpoint(work, modules, optimizers, device) or self.state
            if dist.is_main and self.state["iteration"]:
                logger.info(f"resumed at iteration {self.state['iteration']}")
        self.log = TrainLog(work, iterations, dist.is_main, self.state["iteration"])

    @property
    def start(self) -> int:
        """The last iteration already done (0, or the resumed checkpoint's)."""
        return int(self.state["iteration"])

    def run(self, step, validate, title: str) -> dict:
        """Train to ``iterations``; returns the final state (iteration, best scores)."""
        for it in range(self.start + 1, self.iterations + 1):
            losses = step(it)
            if it % self.val_every == 0 or it == self.iterations:
                values = validate(self.state)
                self.log.log(it, **{k: float(v) for k, v in losses.items()}, **values)
            self.state["iteration"] = it
            if self.dist.is_main and (it % self.checkpoint_every == 0 or it == self.iterations):
                save_checkpoint(self.work, self.modules, self.optimizers, self.state)
        barrier(self.dist)
        if self.dist.is_main:
            self.log.write_csv_and_plot(self.work, title)
        return self.state

    def first(self, key: str):
        """The first logged value of ``key`` (e.g. the validation loss before training had any effect)."""
        return next((r[key] for r in self.log.rows if key in r), None)


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


def training_precision(requested: str, device: torch.device, part: str) -> str:
    """The precision (``fp32`` or ``bf16``) a training stage runs its networks' forward and backward passes in.

    ``requested`` is ``auto``, ``fp32`` or ``bf16`` and resolves as at inference (:func:`resolve_precision`:
    ``auto`` is bfloat16 autocast on CUDA GPUs from Ampere on and on CPUs with AMX-BF16). Weights, optimiser
    state and losses stay float32. The autoencoder (``part``) trains in bfloat16 on CUDA only: MONAI's vector
    quantiser turns autocast off for its nearest-code search under CUDA autocast, not under the CPU's."""
    precision = resolve_precision(requested, device)
    if part == "autoencoder" and device.type != "cuda" and precision == "bf16":
        if requested == "bf16":
            logger.warning(f"the autoencoder trains in float32 on {device.type}: MONAI keeps its vector quantiser "
                           "in float32 under CUDA autocast only")
        return "fp32"
    return precision


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
