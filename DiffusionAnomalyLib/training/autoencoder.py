"""Train the VQ-GAN autoencoder (kidney thesis §4.3.1, App. A.1) on all non-excluded ROI patches.

Loss: 4 * L1 + quantisation (commitment) loss [+ 4 * perceptual, if a local feature-network file
is given] [+ 1 * volume-GAN + 1 * slice-GAN after ``adversarial_start`` iterations]; Adam 3e-4,
betas (0.5, 0.9). The best weights by validation L1 become a bundle holding the autoencoder.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch

from DiffusionAnomalyLib.detection.presets import get_preset
from DiffusionAnomalyLib.logs import stdout_unless_configured
from DiffusionAnomalyLib.models.bundle import BundleMeta, save_bundle
from DiffusionAnomalyLib.models.nets.autoencoder import autoencoder_config, build_autoencoder
from DiffusionAnomalyLib.models.nets.discriminators import (
    build_discriminators,
    discriminator_loss,
    generator_loss,
    random_axial_slices,
)
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
from DiffusionAnomalyLib.training.configs import AutoencoderTraining
from DiffusionAnomalyLib.training.data import load_patches

logger = logging.getLogger(__name__)


def _val_l1(ae, x: torch.Tensor, device, batch: int) -> float:
    ae.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = x[i:i + batch].to(device)
            total += (ae(xb)[0].float() - xb).abs().mean().item() * len(xb)
    ae.train()
    return total / max(len(x), 1)


def gan_schedule(adversarial_start: int, iterations: int) -> str:
    """Whether the volume- and slice-GAN losses switch on in this run, in words (logged, and kept in the bundle)."""
    if adversarial_start >= iterations:
        return (f"off: they start after iteration {adversarial_start} (--adversarial-start) and the run has "
                f"{iterations} (--iterations); L1 and quantisation losses only")
    return f"on from iteration {adversarial_start + 1} of {iterations}"


@stdout_unless_configured
@cleans_empty_work
def train_autoencoder(cfg: AutoencoderTraining) -> Path:
    device = select_device(cfg.device)
    precision = training_precision(cfg.precision, device, "autoencoder")
    dist = init_distributed(device)
    preset = get_preset(cfg.organ).with_overrides(cfg.preset_overrides)
    work = Path(f"{cfg.out}.work")
    work.mkdir(parents=True, exist_ok=True)
    with main_rank_first(dist):
        data = load_patches(cfg.data, preset, cache_dir=work / "cache")
    train, val = data.split(cfg.val_fraction)
    if dist.is_main:
        logger.info(f"autoencoder: {len(train.ids)} training and {len(val.ids)} validation patches of shape "
                    f"{train.x.shape[1:]} on {device} ({precision})"
                    + (f", {dist.world_size} processes" if dist.enabled else ""))
        for w in data.warnings:
            logger.warning(w)
    torch.manual_seed(cfg.seed)
    ae_cfg = autoencoder_config(cfg.network, in_channels=len(preset.channels))
    ae = build_autoencoder(ae_cfg).to(device)
    d_vol, d_slice = (d.to(device) for d in build_discriminators(ae_cfg.in_channels))
    opt_g = torch.optim.Adam(ae.parameters(), lr=cfg.lr, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(list(d_vol.parameters()) + list(d_slice.parameters()), lr=cfg.lr, betas=(0.5, 0.9))
    perceptual = None
    if cfg.perceptual_weights:
        from DiffusionAnomalyLib.models.nets.perceptual import LocalPerceptualLoss

        perceptual = LocalPerceptualLoss(cfg.perceptual_weights, ae_cfg.in_channels).to(device)
    elif dist.is_main:
        logger.info("perceptual loss: off (no local feature-network weights given with --perceptual-weights)")
    gan = gan_schedule(cfg.adversarial_start, cfg.iterations)
    if dist.is_main:
        (logger.warning if gan.startswith("off") else logger.info)(f"GAN losses: {gan}")
    best_ae = copy.deepcopy(ae)
    loop = TrainingLoop(work, cfg.iterations, cfg.val_every, cfg.checkpoint_every, dist, device,
                        {"ae": ae, "best": best_ae, "d_vol": d_vol, "d_slice": d_slice}, {"g": opt_g, "d": opt_d},
                        {"best_val_l1": float("inf")}, cfg.resume)
    ae_t, dv_t, ds_t = wrap_ddp(ae, dist, device), wrap_ddp(d_vol, dist, device), wrap_ddp(d_slice, dist, device)
    x_train = torch.from_numpy(train.x)
    x_val = torch.from_numpy(val.x if len(val.ids) else train.x[:2])
    batches = infinite_batches(len(x_train), cfg.batch_size, dist, cfg.seed + loop.start)
    gen = torch.Generator().manual_seed(cfg.seed)

    def step(it: int) -> dict:
        x = x_train[next(batches)].to(device)
        adversarial = it > cfg.adversarial_start
        with network_autocast(device, precision):
            recon, q_loss = ae_t(x)
        recon = recon.float()
        l1 = (recon - x).abs().mean()
        loss = cfg.l1_weight * l1 + q_loss.float()
        if perceptual is not None:
            loss = loss + cfg.perceptual_weight * perceptual(recon, x)
        g_adv = torch.zeros((), device=device)
        if adversarial:
            g_adv = generator_loss(dv_t(recon)) + generator_loss(ds_t(random_axial_slices(recon, 4, gen)))
            loss = loss + cfg.adversarial_weight * g_adv
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()
        d_loss = torch.zeros((), device=device)
        if adversarial:
            fake = recon.detach()
            d_loss = discriminator_loss(dv_t(x), dv_t(fake)) + discriminator_loss(
                ds_t(random_axial_slices(x, 4, gen)), ds_t(random_axial_slices(fake, 4, gen)))
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
        return {"train_l1": l1.detach(), "quant": q_loss.detach(), "gan_g": g_adv.detach(), "gan_d": d_loss.detach()}

    def validate(state: dict) -> dict:
        v = _val_l1(ae, x_val, device, cfg.batch_size)
        if v < state["best_val_l1"]:
            state["best_val_l1"] = v
            best_ae.load_state_dict(ae.state_dict())
        return {"val_l1": v}

    state = loop.run(step, validate, f"VQ-GAN {preset.name}")
    out = Path(cfg.out)
    if dist.is_main:
        shape = [int(s) // ae_cfg.downsampling for s in train.x.shape[2:]]
        meta = BundleMeta(
            name=cfg.name or f"{preset.name}-{'demo' if cfg.demo else 'model'}", version=cfg.version, organ=preset.name,
            modality=preset.modality, channels=list(preset.channels),
            networks={"autoencoder": ae_cfg.to_dict(), "denoiser": None, "classifier": None},
            preset_overrides=dict(cfg.preset_overrides),
            latent={"channels": ae_cfg.embedding_dim, "shape_zyx": shape, "scale_factor": 1.0},
            training_data=f"{len(data.ids)} ROI patches of dataset {Path(cfg.data).name!r} (autoencoder)",
            demo=cfg.demo,
            extra={"autoencoder_training": {"iterations": cfg.iterations, "best_val_l1": state["best_val_l1"],
                                            "gan": gan, "precision": precision,
                                            "val_patches": len(val.ids), "train_patches": len(train.ids),
                                            "first_val_l1": loop.first("val_l1")}},
        )
        save_bundle(out, meta, {"autoencoder": best_ae}, bundle_extras(None, work, "autoencoder"),
                    change=f"autoencoder trained: {cfg.iterations} iterations, best validation L1 "
                           f"{state['best_val_l1']:.4f}")
        logger.info(f"wrote bundle {out} (best validation L1 {state['best_val_l1']:.4f})")
    shutdown(dist)
    return out
