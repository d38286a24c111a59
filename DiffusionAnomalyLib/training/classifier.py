"""Train the noisy-latent classifier C(y | x_t, t) (kidney thesis §4.3.3, App. A.3).

Healthy and unhealthy latents, balanced by sampling; t ~ U{0..T} as in the thesis, or U{0..max_level}
when the classifier only has to guide samplers started at L <= max_level; x_t from q(x_t | x_0);
cross-entropy; AdamW 1e-4, weight decay 1e-3, cosine annealing with warm restarts; random
left-right flips. The backbone starts from the bundle's denoiser with its first two levels frozen.
Optional lesion supervision (``lesion_weight`` > 0, not in the thesis): where the dataset has lesion
masks, a 1x1x1 convolution on the pre-pooling features also learns which feature cells hold lesion
voxels (class-balanced binary cross-entropy), so small lesions shape the features the pooled head
reads; the convolution is dropped from the bundle. Validation AUC is measured at noise levels 0,
250 and 500 (kidney thesis §5); the weights with the best AUC at ``select_level`` are kept.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import numpy as np
import torch

from DiffusionAnomalyLib.errors import InputError
from DiffusionAnomalyLib.evaluation.metrics import voxel_auroc
from DiffusionAnomalyLib.logs import stdout_unless_configured
from DiffusionAnomalyLib.models.bundle import load_bundle, save_bundle
from DiffusionAnomalyLib.models.diffusion.schedule import NoiseSchedule
from DiffusionAnomalyLib.models.nets.classifier import LatentClassifier, LesionSupervisedClassifier
from DiffusionAnomalyLib.models.nets.denoiser import DenoiserConfig
from DiffusionAnomalyLib.models.precision import network_autocast
from DiffusionAnomalyLib.training.common import (
    TrainingLoop,
    bundle_extras,
    cleans_empty_work,
    infinite_batches,
    init_distributed,
    main_rank_first,
    select_device,
    shutdown,
    training_precision,
    wrap_ddp,
)
from DiffusionAnomalyLib.training.configs import ClassifierTraining
from DiffusionAnomalyLib.training.denoiser import latents_for

logger = logging.getLogger(__name__)

EVAL_LEVELS = (0, 250, 500)


def p_unhealthy_at_levels(clf, z: torch.Tensor, schedule: NoiseSchedule, device, seed: int = 99,
                          levels=EVAL_LEVELS) -> dict[int, np.ndarray]:
    """p(unhealthy | x_t, t) of each latent noised to each level (fixed noise for comparability: the noise
    at a level depends only on ``seed``, the level and the shape of ``z``)."""
    clf.eval()
    out = {}
    with torch.no_grad():
        for level in levels:
            noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(seed * 1009 + level))
            x = schedule.q_sample(z, level, noise).to(device)
            t = torch.full((len(z),), level, device=device, dtype=torch.long)
            out[level] = torch.softmax(clf(x, t).float(), dim=1)[:, 1].cpu().numpy()
    clf.train()
    return out


def auc_at_levels(clf, z: torch.Tensor, y: np.ndarray, schedule: NoiseSchedule, device, seed: int = 99,
                  levels=EVAL_LEVELS) -> dict[int, float]:
    """AUC of p(unhealthy) on latents noised to each level (the noise of :func:`p_unhealthy_at_levels`)."""
    return {level: voxel_auroc(p, y) for level, p in p_unhealthy_at_levels(clf, z, schedule, device, seed,
                                                                           levels).items()}


def lesion_cell_targets(masks: np.ndarray, grid: tuple[int, ...], voxel_ml: float, min_ml: float) -> np.ndarray:
    """(N, *grid) float32: 1 where a cell of the coarse ``grid`` holds at least ``min_ml`` of lesion voxels.

    ``masks`` (N, z, y, x) are binary lesion masks on the patch grid, whose sizes must be multiples of ``grid``.
    """
    factors = [s // g for s, g in zip(masks.shape[1:], grid, strict=True)]
    if any(f * g != s for f, g, s in zip(factors, grid, masks.shape[1:], strict=True)):
        raise InputError(f"patch shape {masks.shape[1:]} is not a multiple of the feature grid {grid}")
    shape = [len(masks)] + [v for g, f in zip(grid, factors, strict=True) for v in (g, f)]
    counts = (masks > 0).reshape(shape).sum(axis=(2, 4, 6))
    return (counts * voxel_ml >= min_ml).astype(np.float32)


def balanced_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy over positive cells and over negative cells, averaged (each half)."""
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    pos = target > 0.5
    parts = [bce[m].mean() for m in (pos, ~pos) if m.any()]
    return torch.stack(parts).mean()


@stdout_unless_configured
@cleans_empty_work
def train_classifier(cfg: ClassifierTraining) -> Path:
    device = select_device(cfg.device)
    precision = training_precision(cfg.precision, device, "classifier")
    dist = init_distributed(device)
    bundle = load_bundle(cfg.bundle, device=device, parts=("autoencoder", "denoiser"))
    if "denoiser" not in bundle.networks:
        raise InputError(f"{cfg.bundle}: the bundle has no denoiser; train the denoiser first")
    schedule = NoiseSchedule(**bundle.meta.schedule)
    max_level = schedule.num_timesteps if cfg.max_level is None else cfg.max_level
    if not 1 <= max_level <= schedule.num_timesteps:
        raise InputError(f"--max-level {max_level} is outside [1, T = {schedule.num_timesteps}]")
    if not 0 <= cfg.select_level <= max_level:
        raise InputError(f"the selection level t = {cfg.select_level} is above --max-level {max_level}")
    work = Path(f"{cfg.out}.work")
    work.mkdir(parents=True, exist_ok=True)
    if cfg.lesion_weight < 0 or cfg.lesion_cell_ml <= 0:
        raise InputError(f"--lesion-weight must be >= 0 (got {cfg.lesion_weight}) and the lesion cell volume "
                         f"> 0 (got {cfg.lesion_cell_ml} ml)")
    supervised = cfg.lesion_weight > 0
    with main_rank_first(dist):
        data, lat = latents_for(bundle, cfg.data, work, device, ("healthy", "unhealthy"), lesions=supervised)
    if len(set(data.labels.tolist())) < 2:
        raise InputError(f"{cfg.data}: the classifier needs both healthy and unhealthy structures")
    scale = float(bundle.meta.latent.get("scale_factor", 1.0))
    is_train = ~data.val_mask(cfg.val_fraction)
    z_train, y_train = torch.from_numpy(lat[is_train] * scale), data.labels[is_train]
    z_val, y_val = torch.from_numpy(lat[~is_train] * scale), data.labels[~is_train]
    if dist.is_main:
        logger.info(f"classifier: {len(z_train)} training latents ({int(y_train.sum())} unhealthy), {len(z_val)} "
                    f"validation ({int(y_val.sum())} unhealthy), on {device} ({precision})")
    torch.manual_seed(cfg.seed)
    den_cfg = DenoiserConfig.from_dict(bundle.meta.networks["denoiser"])
    clf = LatentClassifier(den_cfg).to(device)
    clf.load_backbone(bundle.networks["denoiser"].state_dict(), cfg.frozen_levels)
    best = copy.deepcopy(clf)
    model: torch.nn.Module = clf
    cells_train = None
    if supervised:
        grid = tuple(s // den_cfg.downsampling for s in lat.shape[2:])
        voxel_ml = float(np.prod(bundle.preset.spacing_mm)) / 1000.0
        cells = lesion_cell_targets(data.lesions, grid, voxel_ml, cfg.lesion_cell_ml)
        cells_train = torch.from_numpy(cells[is_train])
        model = LesionSupervisedClassifier(clf, den_cfg.channels[-1]).to(device)
        if dist.is_main:
            pos = cells[data.labels == 1].reshape(int(data.labels.sum()), -1).any(axis=1)
            logger.info(f"lesion supervision: feature grid {grid}, {int(cells.sum())} lesion cells of >= "
                        f"{cfg.lesion_cell_ml} ml in {int(pos.sum())} of {int(data.labels.sum())} unhealthy structures")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=max(cfg.iterations // 4, 1))
    saved = work / "checkpoint.json"
    if cfg.resume and saved.is_file():
        before = json.loads(saved.read_text())["state"].get("lesion_weight", 0.0)
        if (before > 0) != supervised:
            raise InputError(f"{work}: the checkpoint was trained with --lesion-weight {before:g}; resume with a "
                             f"weight {'> 0' if before > 0 else 'of 0'} or start a new output folder")
    loop = TrainingLoop(work, cfg.iterations, cfg.val_every, cfg.checkpoint_every, dist, device,
                        {"clf": model, "best": best}, {"opt": opt},
                        {"best_auc": -1.0, "best_aucs": {}, "lesion_weight": cfg.lesion_weight}, cfg.resume)
    sched.last_epoch = loop.start
    model_t = wrap_ddp(model, dist, device)
    counts = np.bincount(y_train, minlength=2).astype(float)
    weights = 1.0 / counts[y_train]
    batches = infinite_batches(len(z_train), cfg.batch_size, dist, cfg.seed + loop.start, weights)
    y_train_t = torch.from_numpy(y_train)

    def step(it: int) -> dict:
        idx = next(batches)
        z = z_train[idx].to(device)
        flip = torch.rand(len(z), device=device) < 0.5
        z = torch.where(flip.reshape(-1, 1, 1, 1, 1), z.flip(-1), z)
        y = y_train_t[idx].to(device)
        t = torch.randint(0, max_level + 1, (len(z),), device=device)
        x_t = schedule.q_sample(z, t, torch.randn_like(z))
        with network_autocast(device, precision):
            out = model_t(x_t, t)
        logits, lesion_logits = out if supervised else (out, None)
        loss = ce = torch.nn.functional.cross_entropy(logits.float(), y)
        losses = {"train_ce": ce.detach()}
        if supervised:
            cell = cells_train[idx].to(device)
            cell = torch.where(flip.reshape(-1, 1, 1, 1), cell.flip(-1), cell)
            lesion_loss = balanced_bce(lesion_logits.float(), cell)
            loss = ce + cfg.lesion_weight * lesion_loss
            losses["train_lesion_bce"] = lesion_loss.detach()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        return losses

    def validate(state: dict) -> dict:
        aucs = auc_at_levels(clf, z_val, y_val, schedule, device)
        score = aucs[cfg.select_level] if np.isfinite(aucs[cfg.select_level]) else 0.0
        if score > state["best_auc"]:
            state["best_auc"], state["best_aucs"] = score, {str(k): v for k, v in aucs.items()}
            best.load_state_dict(clf.state_dict())
        return {f"val_auc_t{k}": v for k, v in aucs.items()}

    state = loop.run(step, validate, "noisy-latent classifier")
    out = Path(cfg.out)
    if dist.is_main:
        meta = bundle.meta
        meta.networks = {**meta.networks, "classifier": {"backbone": den_cfg.to_dict(), "head": [384, 192],
                                                         "head_dropout": [0.6, 0.36], "backbone_dropout": 0.2,
                                                         "num_classes": 2}}
        meta.extra = {**meta.extra, "classifier_training": {"iterations": cfg.iterations,
                                                            "best_val_auc": state["best_aucs"],
                                                            "max_level": max_level, "precision": precision,
                                                            "lesion_weight": cfg.lesion_weight,
                                                            **({"lesion_cell_ml": cfg.lesion_cell_ml}
                                                               if supervised else {}),
                                                            "train_latents": len(z_train),
                                                            "val_latents": len(z_val), "data": str(cfg.data)}}
        save_bundle(out, meta, {"autoencoder": bundle.networks["autoencoder"], "denoiser": bundle.networks["denoiser"],
                                "classifier": best}, bundle_extras(bundle.path, work, "classifier"),
                    change=f"classifier trained: {cfg.iterations} iterations on {len(z_train)} latents, best "
                           f"validation AUC at t = {cfg.select_level} {state['best_auc']:.3f}")
        logger.info(f"wrote bundle {out} (best validation AUC at t={cfg.select_level}: {state['best_auc']:.3f}; "
                    f"{state['best_aucs']})")
    shutdown(dist)
    return out
