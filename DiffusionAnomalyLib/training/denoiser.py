"""Train the latent denoiser (kidney thesis §4.3.2, App. A.2) on *healthy* ROI latents.

x_t = sqrt(ab_t) z + sqrt(1 - ab_t) eps with t ~ U{1..T}; loss L1(eps_theta(x_t, t), eps); Adam 1e-4;
EMA 0.995 (the EMA weights are saved). Latents are the bundle autoencoder's quantised encodings
scaled to unit variance (the scale factor is stored in the bundle). With ``class_conditional``
the denoiser also sees healthy and unhealthy latents with their label, dropped to "null" with
probability ``label_dropout``, for classifier-free guidance. With ``latent_crop`` each training
sample is a random window of its latent (the network is convolutional, so it still denoises whole
latents, and validation uses whole latents): on a CPU this makes finer latent grids trainable. With
``lesion_free_windows`` as well, the windows of unhealthy structures that hold no lesion voxel (nor one
within ``LESION_MARGIN`` latent voxels) are healthy training samples too (not in the thesis): on data
where most structures have a lesion, the healthy tissue beside it is most of the healthy tissue there is.
"""

from __future__ import annotations

import copy
import itertools
import logging
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from DiffusionAnomalyLib.errors import InputError
from DiffusionAnomalyLib.logs import stdout_unless_configured
from DiffusionAnomalyLib.models.bundle import load_bundle, save_bundle
from DiffusionAnomalyLib.models.diffusion.guidance import NULL_LABEL
from DiffusionAnomalyLib.models.diffusion.schedule import NoiseSchedule
from DiffusionAnomalyLib.models.nets.autoencoder import LatentCodec
from DiffusionAnomalyLib.models.nets.denoiser import build_denoiser, denoiser_config
from DiffusionAnomalyLib.models.precision import network_autocast
from DiffusionAnomalyLib.settings import SAMPLER_DEFAULTS
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
from DiffusionAnomalyLib.training.configs import DenoiserTraining
from DiffusionAnomalyLib.training.data import load_patches, save_npz

logger = logging.getLogger(__name__)

#: latent voxels kept free around a lesion's latent footprint by ``lesion_free_windows``
LESION_MARGIN = 1


def encode_all(codec: LatentCodec, x: np.ndarray, device: torch.device, batch: int = 4) -> np.ndarray:
    """Encode patches (N, C, ...) to unscaled quantised latents."""
    out = []
    for i in range(0, len(x), batch):
        out.append(codec.encode(torch.from_numpy(x[i:i + batch]).to(device)).cpu().numpy())
    return np.concatenate(out)


def random_crops(z: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """One random crop of ``size`` (spatial) per sample of ``z`` (N, C, *spatial); global RNG."""
    spans = zip(z.shape[2:], size, strict=True)
    starts = torch.stack([torch.randint(0, full - s + 1, (len(z),)) for full, s in spans], 1)
    return torch.stack([z[(i, slice(None), *(slice(int(a), int(a) + s) for a, s in zip(st, size, strict=True)))]
                        for i, st in enumerate(starts)])


def lesion_free_starts(mask: np.ndarray, latent_shape: tuple[int, ...], crop: tuple[int, ...],
                       margin: int = LESION_MARGIN) -> np.ndarray:
    """(K, ndim) start corners of the ``crop`` windows of a latent that hold no lesion.

    ``mask`` is a structure's lesion mask on its patch grid, a whole multiple of ``latent_shape``; a latent
    voxel counts as lesion when any voxel of its block does, dilated by ``margin`` latent voxels (a cube).
    """
    factors = [m // s for m, s in zip(mask.shape, latent_shape, strict=True)]
    if any(f < 1 or f * s != m for f, s, m in zip(factors, latent_shape, mask.shape, strict=True)):
        raise InputError(f"lesion mask {mask.shape} is not a whole multiple of the latent {tuple(latent_shape)}")
    blocks = mask.reshape([d for s, f in zip(latent_shape, factors, strict=True) for d in (s, f)])
    occupied = (blocks != 0).any(axis=tuple(range(1, 2 * len(factors), 2)))
    if margin > 0 and occupied.any():
        occupied = ndimage.binary_dilation(occupied, np.ones((3,) * occupied.ndim, bool), iterations=margin)
    counts = np.pad(occupied.astype(np.int64), [(1, 0)] * occupied.ndim)
    for axis in range(occupied.ndim):
        counts = counts.cumsum(axis)
    n = [s - c + 1 for s, c in zip(latent_shape, crop, strict=True)]
    inside = np.zeros(n, np.int64)  # lesion voxels per window: the summed-volume table's corners
    for corner in itertools.product((0, 1), repeat=len(n)):
        part = counts[tuple(slice(c, c + k) if b else slice(0, k) for b, c, k in zip(corner, crop, n, strict=True))]
        inside += part if (len(n) - sum(corner)) % 2 == 0 else -part
    return np.argwhere(inside == 0)


def crops_at(z: torch.Tensor, size: tuple[int, ...], starts: list[np.ndarray]) -> torch.Tensor:
    """One ``size`` window per sample of ``z`` (N, C, *spatial), its corner drawn from ``starts[i]`` (global RNG)."""
    out = []
    for zi, st in zip(z, starts, strict=True):
        corner = st[int(torch.randint(0, len(st), (1,)))]
        out.append(zi[(slice(None), *(slice(int(a), int(a) + s) for a, s in zip(corner, size, strict=True)))])
    return torch.stack(out)


def latents_for(bundle, data_dir: str, work: Path, device: torch.device, labels: tuple[str, ...],
                lesions: bool = False, lesions_in_box: bool = False):
    """The patch set (with lesion masks if ``lesions``: see :func:`load_patches`) and its unscaled latents under the
    bundle's autoencoder (cached in ``work``)."""
    preset = bundle.preset
    data = load_patches(data_dir, preset, cache_dir=work / "cache", labels=labels, lesions=lesions,
                        lesions_in_box=lesions_in_box)
    codec = LatentCodec(bundle.networks["autoencoder"])
    key = bundle.meta.files.get("autoencoder.safetensors", "none")[:16]
    cache = work / f"latents-{key}-{'-'.join(labels)}.npz"
    if cache.is_file():
        with np.load(cache) as z:
            if list(z["ids"]) == data.ids:
                return data, z["latents"]
    lat = encode_all(codec, data.x, device)  # new or changed dataset: (re-)encode and (re-)cache
    save_npz(cache, latents=lat, ids=np.array(data.ids))
    return data, lat


@stdout_unless_configured
@cleans_empty_work
def train_denoiser(cfg: DenoiserTraining) -> Path:
    device = select_device(cfg.device)
    precision = training_precision(cfg.precision, device, "denoiser")
    dist = init_distributed(device)
    bundle = load_bundle(cfg.bundle, device=device, parts=("autoencoder",))
    work = Path(f"{cfg.out}.work")
    work.mkdir(parents=True, exist_ok=True)
    windows = cfg.lesion_free_windows
    if windows and (not cfg.latent_crop or cfg.class_conditional):
        raise InputError("--lesion-free-windows needs --latent-crop (the windows) and no --class-conditional (which "
                         "already trains on whole unhealthy structures)")
    labels = ("healthy", "unhealthy") if cfg.class_conditional or windows else ("healthy",)
    with main_rank_first(dist):
        try:
            data, lat = latents_for(bundle, cfg.data, work, device, labels, lesions=windows, lesions_in_box=windows)
        except InputError as exc:
            if not windows:
                raise
            raise InputError(f"--lesion-free-windows: {exc}") from None
    if windows:  # the healthy structures split as without the option; unhealthy ones of validation cases left out
        healthy = data.labels == 0
        val_mask = np.zeros(len(healthy), bool)
        val_mask[healthy] = data.subset(healthy).val_mask(cfg.val_fraction)
        val_cases = {i.split("/")[0] for i, v in zip(data.ids, val_mask, strict=True) if v}
        in_val_case = np.array([i.split("/")[0] in val_cases for i in data.ids])
        train_mask = (healthy & ~val_mask) | (~healthy & ~in_val_case)
        if not (healthy & ~val_mask).any():
            raise InputError(f"--lesion-free-windows: {cfg.data} has no healthy structure to train on (the scale "
                             "factor and the validation come from whole healthy latents)")
    else:
        train_mask = ~data.val_mask(cfg.val_fraction)
        val_mask = ~train_mask
    whole = train_mask & (data.labels == 0) if windows else train_mask  # the training latents used whole
    scale = 1.0 / float(lat[whole].std())
    z_train = torch.from_numpy(lat[train_mask] * scale)
    val_items = val_mask if val_mask.any() else np.flatnonzero(whole)[:2]  # too few cases to hold any out
    z_val = torch.from_numpy(lat[val_items] * scale)
    y_train = torch.from_numpy(data.labels[train_mask])
    y_val = torch.from_numpy(data.labels[val_items])
    net_cfg = denoiser_config(cfg.network, latent_channels=int(lat.shape[1]),
                              num_class_embeds=3 if cfg.class_conditional else None, label_dropout=cfg.label_dropout)
    bad = [s for s in lat.shape[2:] if s % net_cfg.downsampling]
    if bad:
        raise InputError(f"latent shape {tuple(lat.shape[2:])} is not divisible by the denoiser's "
                         f"{net_cfg.downsampling}x downsampling; change the ROI size or the network preset")
    crop = tuple(cfg.latent_crop) if cfg.latent_crop else None
    if crop is not None and (len(crop) != len(lat.shape[2:]) or any(  # length checked before zip
            c < 1 or c > s or c % net_cfg.downsampling for c, s in zip(crop, lat.shape[2:], strict=True))):
        raise InputError(f"latent crop {crop} must have {len(lat.shape[2:])} sizes, each at most the latent "
                         f"shape {tuple(lat.shape[2:])} and divisible by {net_cfg.downsampling}")
    starts, window_info = None, None
    if windows:
        masks, ys = data.lesions[train_mask], data.labels[train_mask]
        empty = [y == 1 and not m.any() for m, y in zip(masks, ys, strict=True)]  # no lesion voxel on the patch
        starts = [np.zeros((0, len(crop)), np.int64) if e else lesion_free_starts(m, tuple(lat.shape[2:]), crop)
                  for m, e in zip(masks, empty, strict=True)]
        unhealthy = [len(st) for st, y in zip(starts, ys, strict=True) if y == 1]
        keep = np.array([len(st) > 0 for st in starts])
        z_train, y_train = z_train[torch.from_numpy(keep)], y_train[torch.from_numpy(keep)]
        starts = [st for st, k in zip(starts, keep, strict=True) if k]
        positions = int(np.prod([s - c + 1 for s, c in zip(lat.shape[2:], crop, strict=True)]))
        used = [n for n in unhealthy if n]
        window_info = {"unhealthy_structures": len(unhealthy), "used": len(used), "margin_latent_voxels": LESION_MARGIN,
                       "empty_lesion_masks": int(sum(empty)),
                       "median_free_share": float(np.median(used) / positions) if used else 0.0}
        if dist.is_main:
            logger.info(f"lesion-free windows: {len(used)} of {len(unhealthy)} unhealthy training structures have "
                        f"some (median {window_info['median_free_share']:.0%} of the {positions} window positions)")
            if not used:
                logger.warning("lesion-free windows: no unhealthy training structure has a window of "
                               f"{' x '.join(map(str, crop))} latent voxels without a lesion; a smaller --latent-crop "
                               "leaves more (an unhealthy structure whose lesion mask is empty counts as none)")
    if dist.is_main:
        logger.info(f"denoiser: {len(z_train)} training / {len(z_val)} validation latents {tuple(lat.shape[1:])}, "
                    f"scale factor {scale:.4f}, on {device} ({precision})")
    torch.manual_seed(cfg.seed)
    net = build_denoiser(net_cfg).to(device)
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

    def step(it: int) -> dict:
        idx = next(batches)
        z = z_train[idx]
        if starts is not None:
            z = crops_at(z, crop, [starts[int(i)] for i in idx])
        elif crop:
            z = random_crops(z, crop)
        z = z.to(device)
        t = torch.randint(1, schedule.num_timesteps + 1, (len(z),), device=device)
        noise = torch.randn_like(z)
        x_t = schedule.q_sample(z, t, noise)
        labels_b = None
        if cfg.class_conditional:
            labels_b = y_train[idx].to(device)
            labels_b = torch.where(torch.rand(len(z), device=device) < cfg.label_dropout,
                                   torch.full_like(labels_b, NULL_LABEL), labels_b)
        with network_autocast(device, precision):
            pred = net_t(x_t, timesteps=t, class_labels=labels_b)
        loss = (pred.float() - noise).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update(net)
        return {"train_l1": loss.detach()}

    def validate(state: dict) -> dict:
        with torch.no_grad():
            zv, tv, nv = z_val.to(device), t_val.to(device), n_val.to(device)
            lv = y_val.to(device) if cfg.class_conditional else None
            v = (ema.model(schedule.q_sample(zv, tv, nv), timesteps=tv, class_labels=lv) - nv).abs().mean().item()
        if v < state["best_val"]:
            state["best_val"] = v
            best.load_state_dict(ema.model.state_dict())
        return {"val_l1": v}

    state = loop.run(step, validate, "latent denoiser (L1 on noise)")
    out = Path(cfg.out)
    if dist.is_main:
        meta = bundle.meta
        meta.networks = {**meta.networks, "denoiser": net_cfg.to_dict()}
        meta.latent = {**meta.latent, "scale_factor": scale, "channels": int(lat.shape[1]),
                       "shape_zyx": list(lat.shape[2:])}
        meta.recommended = meta.recommended or dict(SAMPLER_DEFAULTS)
        meta.extra = {**meta.extra, "denoiser_training": {
            "iterations": cfg.iterations, "best_val_l1": state["best_val"], "train_latents": len(z_train),
            "val_latents": len(z_val), "first_val_l1": loop.first("val_l1"),
            "class_conditional": cfg.class_conditional, "precision": precision,
            "latent_crop": list(crop) if crop else None, "lesion_free_windows": window_info,
            "data": str(cfg.data)}}
        save_bundle(out, meta, {"autoencoder": bundle.networks["autoencoder"], "denoiser": best},
                    bundle_extras(bundle.path, work, "denoiser"),
                    change=f"denoiser trained: {cfg.iterations} iterations on {len(z_train)} latents, best validation "
                           f"L1 {state['best_val']:.4f}")
        logger.info(f"wrote bundle {out} (best validation L1 {state['best_val']:.4f})")
    shutdown(dist)
    return out
