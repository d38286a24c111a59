"""The VQ-GAN autoencoder (MONAI ``VQVAE``): patch (B, C, z, y, x) <-> latent (B, D, z/4, y/4, x/4).

Latents handed to the diffusion model are the *quantised* encodings divided by ``scale_factor``
(1 / std of training latents, so they have unit variance). Decoding does **not** quantise again
by default: the denoised latent is decoded as it is (MONAI's ``decode_stage_2_outputs`` would snap
it back onto the codebook).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from monai.networks.nets import VQVAE

from DiffusionAnomalyLib.errors import InputError


@dataclass(frozen=True)
class AutoencoderConfig:
    """VQVAE settings. Two stride-2 levels give the 4x downsampling of kidney thesis App. A.1."""

    in_channels: int = 1
    channels: tuple[int, ...] = (64, 128)
    num_res_layers: int = 2
    num_res_channels: tuple[int, ...] = (64, 128)
    embedding_dim: int = 8
    num_embeddings: int = 16384
    commitment_cost: float = 0.25
    decay: float = 0.99

    @property
    def downsampling(self) -> int:
        return 2 ** len(self.channels)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> AutoencoderConfig:
        d = dict(d)
        for k in ("channels", "num_res_channels"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


AUTOENCODER_PRESETS = {
    # kidney thesis App. A.1: 8-channel latent, codebook 16,384, downsampling 4
    "thesis-kidney": AutoencoderConfig(),
    # small enough to train in minutes on a 2-core CPU
    "tiny": AutoencoderConfig(channels=(16, 32), num_res_layers=1, num_res_channels=(16, 32), embedding_dim=4,
                              num_embeddings=256),
    # one stride-2 level: a 2x grid (4 mm latent cells at 2 mm spacing) for lesions of one or two 8 mm cells;
    # 8x the latent voxels: the tiny denoiser is ~40x slower per iteration on it (use tiny-3level, --latent-crop)
    "tiny-2x": AutoencoderConfig(channels=(32,), num_res_layers=1, num_res_channels=(32,), embedding_dim=4,
                                 num_embeddings=256),
    # the tiny widths with the thesis's 8 latent channels and a 1,024-code book: finer codes at the same grid
    # (the thesis's 16,384 codes cost ~2 s per iteration in MONAI's EMA quantizer on a 2-core CPU)
    "tiny-8ch": AutoencoderConfig(channels=(16, 32), num_res_layers=1, num_res_channels=(16, 32), embedding_dim=8,
                                  num_embeddings=1024),
}


def autoencoder_config(name_or_dict: str | dict, in_channels: int | None = None) -> AutoencoderConfig:
    if isinstance(name_or_dict, dict):
        cfg = AutoencoderConfig.from_dict(name_or_dict)
    else:
        if name_or_dict not in AUTOENCODER_PRESETS:
            raise InputError(f"unknown autoencoder preset {name_or_dict!r}; choose {sorted(AUTOENCODER_PRESETS)}")
        cfg = AUTOENCODER_PRESETS[name_or_dict]
    if in_channels is not None and in_channels != cfg.in_channels:
        cfg = AutoencoderConfig.from_dict({**cfg.to_dict(), "in_channels": in_channels})
    return cfg


def build_autoencoder(cfg: AutoencoderConfig) -> VQVAE:
    levels = len(cfg.channels)
    return VQVAE(
        spatial_dims=3, in_channels=cfg.in_channels, out_channels=cfg.in_channels, channels=cfg.channels,
        num_res_layers=cfg.num_res_layers, num_res_channels=cfg.num_res_channels,
        downsample_parameters=((2, 4, 1, 1),) * levels, upsample_parameters=((2, 4, 1, 1, 0),) * levels,
        num_embeddings=cfg.num_embeddings, embedding_dim=cfg.embedding_dim,
        commitment_cost=cfg.commitment_cost, decay=cfg.decay,
    )


class LatentCodec:
    """Encode patches to scaled latents and decode them back."""

    def __init__(self, autoencoder: VQVAE, scale_factor: float = 1.0) -> None:
        self.autoencoder = autoencoder
        self.scale_factor = float(scale_factor)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        quantized, _ = self.autoencoder.quantize(self.autoencoder.encode(x))
        return quantized * self.scale_factor

    @torch.no_grad()
    def decode(self, z: torch.Tensor, requantize: bool = False) -> torch.Tensor:
        e = z / self.scale_factor
        if requantize:
            e, _ = self.autoencoder.quantize(e)
        return self.autoencoder.decode(e)
