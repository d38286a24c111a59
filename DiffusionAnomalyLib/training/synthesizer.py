"""Train the lesion synthesizer (``models/nets/synthesizer.py``) on the bundle autoencoder's latents of healthy and
unhealthy structures, each with its lesion map.

z_t = sqrt(ab_t) z + sqrt(1 - ab_t) eps with t ~ U{1..T}; loss L1(eps_theta(z_t, t, m), eps), as the denoiser;
the map m is dropped to zeros with probability ``map_dropout`` (classifier-free guidance). Adam, EMA 0.995 (the
EMA weights are saved). The latents are scaled as the bundle's denoiser's (its ``scale_factor``; else unit
variance). Validation reports the L1 over all latent voxels and over those the lesion touches (``val_l1_lesion``:
what synthesis depends on). The bundle is written again with every network it had and ``synthesizer.safetensors``.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import torch

from DiffusionAnomalyLib.errors import InputError
from DiffusionAnomalyLib.logs import stdout_unless_configured
from DiffusionAnomalyLib.models.bundle import load_bundle, save_bundle
from DiffusionAnomalyLib.models.diffusion.schedule import NoiseSchedule
from DiffusionAnomalyLib.models.nets.synthesizer import build_synthesizer, condition_maps, synthesizer_config
from DiffusionAnomalyLib.models.precision import network_autocast
from DiffusionAnomalyLib.training.common import (
    EMA,
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
from DiffusionAnomalyLib.training.configs import SynthesizerTraining
from DiffusionAnomalyLib.training.denoiser import latents_for

logger = logging.getLogger(__name__)


@stdout_unless_configured
@cleans_empty_work
def train_synthesizer(cfg: SynthesizerTraining) -> Path:
    device = select_device(cfg.device)
    precision = training_precision(cfg.precision, device, "denoiser")
    dist = init_distributed(device)
    bundle = load_bundle(cfg.bundle, device=device)
    work = Path(f"{cfg.out}.work")
    work.mkdir(parents=True, exist_ok=True)
    with main_rank_first(dist):
        data, lat = latents_for(bundle, cfg.data, work, device, ("healthy", "unhealthy"), lesions=True)
    if not data.lesions.any():
        raise InputError(f"{cfg.data}: no lesion voxel in any structure's lesions.nii.gz: the synthesizer learns "
                         "lesions from their maps")
    train_mask = ~data.val_mask(cfg.val_fraction)
    scale = float((bundle.meta.latent or {}).get("scale_factor") or 1.0 / float(lat[train_mask].std()))
    shape = tuple(int(s) for s in lat.shape[2:])
    maps = condition_maps(torch.from_numpy(data.lesions), shape)
    z_all = torch.from_numpy(lat * scale)
    z_train, m_train = z_all[train_mask], maps[train_mask]
    val = ~train_mask if (~train_mask).any() else np.arange(len(lat)) < 2
    z_val, m_val = z_all[val], maps[val]
    net_cfg = synthesizer_config(cfg.network, latent_channels=int(lat.shape[1]), map_dropout=cfg.map_dropout)
    if any(s % net_cfg.downsampling for s in shape):
        raise InputError(f"latent shape {shape} is not divisible by the synthesizer's {net_cfg.downsampling}x "
                         "downsampling; choose another network preset")
    n_lesion = int((data.lesions.reshape(len(lat), -1).any(1) & train_mask).sum())
    if dist.is_main:
        logger.info(f"synthesizer: {len(z_train)} training latents ({n_lesion} with lesions) / {len(z_val)} "
                    f"validation {tuple(lat.shape[1:])}, on {device} ({precision})")
    torch.manual_seed(cfg.seed)
    net = build_synthesizer(net_cfg).to(device)
    ema = EMA(net, cfg.ema_decay)
    best = copy.deepcopy(ema.model)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    schedule = NoiseSchedule(**bundle.meta.schedule)
    loop = TrainingLoop(work, cfg.iterations, cfg.val_every, cfg.checkpoint_every, dist, device,
                        {"net": net, "ema": ema.model, "best": best}, {"opt": opt}, {"best_val": float("inf")},
                        cfg.resume)
    net_t = wrap_ddp(net, dist, device)
    batches = infinite_batches(len(z_train), cfg.batch_size, dist, cfg.seed + loop.start)
    g_val = torch.Generator().manual_seed(1234)
    t_val = torch.randint(1, schedule.num_timesteps + 1, (len(z_val),), generator=g_val)
    n_val = torch.randn(z_val.shape, generator=g_val)
    lesion_val = (m_val[:, 1:] > 0).expand_as(z_val)

    def step(it: int) -> dict:
        idx = next(batches)
        z, m = z_train[idx].to(device), m_train[idx].to(device)
        keep = (torch.rand(len(z), device=device) >= cfg.map_dropout).to(m.dtype)
        m = m * keep.view(-1, *([1] * (m.dim() - 1)))
        t = torch.randint(1, schedule.num_timesteps + 1, (len(z),), device=device)
        noise = torch.randn_like(z)
        with network_autocast(device, precision):
            pred = net_t(schedule.q_sample(z, t, noise), timesteps=t, seg=m)
        loss = (pred.float() - noise).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update(net)
        return {"train_l1": loss.detach()}

    def validate(state: dict) -> dict:
        with torch.no_grad():
            zv, tv, nv, mv = z_val.to(device), t_val.to(device), n_val.to(device), m_val.to(device)
            err = (ema.model(schedule.q_sample(zv, tv, nv), timesteps=tv, seg=mv) - nv).abs()
        v = err.mean().item()
        lesion = lesion_val.to(device)
        v_lesion = err[lesion].mean().item() if lesion.any() else float("nan")
        if v < state["best_val"]:
            state["best_val"] = v
            best.load_state_dict(ema.model.state_dict())
        return {"val_l1": v, "val_l1_lesion": v_lesion}

    state = loop.run(step, validate, "lesion synthesizer (L1 on noise)")
    out = Path(cfg.out)
    if dist.is_main:
        last_lesion = next((r["val_l1_lesion"] for r in reversed(loop.log.rows) if "val_l1_lesion" in r), None)
        meta = bundle.meta
        meta.networks = {**meta.networks, "synthesizer": net_cfg.to_dict()}
        meta.latent = {**(meta.latent or {}), "channels": int(lat.shape[1]), "shape_zyx": list(shape)}
        meta.extra = {**meta.extra, "synthesizer_training": {
            "iterations": cfg.iterations, "best_val_l1": state["best_val"], "train_latents": len(z_train),
            "train_latents_with_lesions": n_lesion, "val_latents": len(z_val), "first_val_l1": loop.first("val_l1"),
            "last_val_l1_lesion": last_lesion, "scale_factor": scale, "map_dropout": cfg.map_dropout,
            "precision": precision, "data": str(cfg.data)}}
        save_bundle(out, meta, {**bundle.networks, "synthesizer": best},
                    bundle_extras(bundle.path, work, "synthesizer"),
                    change=f"lesion synthesizer trained: {cfg.iterations} iterations on {len(z_train)} latents "
                           f"({n_lesion} with lesions), best validation L1 {state['best_val']:.4f}")
        logger.info(f"wrote bundle {out} (synthesizer best validation L1 {state['best_val']:.4f})")
    shutdown(dist)
    return out
