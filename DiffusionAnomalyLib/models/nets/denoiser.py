"""The latent denoiser eps_theta(x_t, t[, label]): MONAI ``DiffusionModelUNet`` in 3D.

The thesis kidney network (kidney thesis App. A.2) works on 8 x 32 x 24 x 24 latents with channel
multipliers [2, 4, 8, 16] of a base width; ``tiny`` is a two-level network for CPU training, and
``tiny-3level`` adds a third level so that attention stays on a coarse grid when the latent is finer
(the ``tiny-2x`` autoencoder): attention over 16 x 12 x 12 tokens costs 64x that over 8 x 6 x 6.
``num_class_embeds=3`` makes it class-conditional (healthy, unhealthy, null) for classifier-free
guidance; training then drops labels to null with probability ``label_dropout``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from monai.networks.nets import DiffusionModelUNet

from DiffusionAnomalyLib.errors import InputError


@dataclass(frozen=True)
class DenoiserConfig:
    latent_channels: int = 8
    base_channels: int = 32
    multipliers: tuple[int, ...] = (2, 4, 8, 16)
    num_res_blocks: int = 2
    attention_levels: tuple[bool, ...] = (False, False, True, True)
    num_head_channels: int = 32
    norm_num_groups: int = 32
    num_class_embeds: int | None = None
    label_dropout: float = 0.15

    @property
    def channels(self) -> tuple[int, ...]:
        return tuple(self.base_channels * m for m in self.multipliers)

    @property
    def downsampling(self) -> int:
        """The latent's spatial size must be divisible by this."""
        return 2 ** (len(self.multipliers) - 1)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DenoiserConfig:
        d = dict(d)
        for k in ("multipliers", "attention_levels"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


DENOISER_PRESETS = {
    "thesis-kidney": DenoiserConfig(),
    "tiny": DenoiserConfig(latent_channels=4, base_channels=16, multipliers=(2, 4), num_res_blocks=1,
                           attention_levels=(False, True), num_head_channels=16, norm_num_groups=8),
    "tiny-3level": DenoiserConfig(latent_channels=4, base_channels=16, multipliers=(2, 4, 4), num_res_blocks=1,
                                  attention_levels=(False, False, True), num_head_channels=16, norm_num_groups=8),
}


def denoiser_config(name_or_dict: str | dict, **overrides) -> DenoiserConfig:
    if isinstance(name_or_dict, dict):
        cfg = DenoiserConfig.from_dict(name_or_dict)
    else:
        if name_or_dict not in DENOISER_PRESETS:
            raise InputError(f"unknown denoiser preset {name_or_dict!r}; choose {sorted(DENOISER_PRESETS)}")
        cfg = DENOISER_PRESETS[name_or_dict]
    return DenoiserConfig.from_dict({**cfg.to_dict(), **overrides}) if overrides else cfg


def build_denoiser(cfg: DenoiserConfig) -> DiffusionModelUNet:
    return DiffusionModelUNet(
        spatial_dims=3, in_channels=cfg.latent_channels, out_channels=cfg.latent_channels,
        num_res_blocks=cfg.num_res_blocks, channels=cfg.channels, attention_levels=cfg.attention_levels,
        norm_num_groups=cfg.norm_num_groups, num_head_channels=cfg.num_head_channels,
        num_class_embeds=cfg.num_class_embeds,
    )


def bf16_on_cuda(eps, device: torch.device):
    """``eps`` evaluated in bfloat16 autocast on CUDA (returned as float32, so sampler arithmetic stays
    float32); unchanged on other devices."""
    if device.type != "cuda":
        return eps

    def wrapped(x, t, labels=None):
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            return eps(x, t, labels).float()

    return wrapped


def eps_function(net: DiffusionModelUNet):
    """Adapt the network to the samplers' ``eps(x, t, labels)`` signature."""

    def eps(x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return net(x, timesteps=t, class_labels=labels)

    return eps
