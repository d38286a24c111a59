"""The lesion synthesizer eps_theta(x_t, t, m): a latent denoiser conditioned on a lesion map (semantic diffusion).

As in the semantic diffusion model (SDM) the product's synthesis seed uses, the map conditions every block of the
network through spatially-adaptive normalisation (SPADE: each GroupNorm's scale and shift are convolutions of the
map), here MONAI's ``SPADEDiffusionModelUNet`` in 3D on the bundle's latents. The map is the lesion's share of each
latent voxel and the rest (:func:`condition_maps`; ``LABEL_NC`` channels); the organ around it is not in the map but
in the latent itself, which synthesis keeps outside the lesion (inpainting). Training drops
the map to all zeros with probability ``map_dropout``, so the same network also predicts unconditionally and
sampling can use classifier-free guidance on the map:

    eps_hat = (1 + w) eps_theta(x_t, t, m) - w eps_theta(x_t, t, 0)        (:func:`guided_eps`)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from monai.networks.nets import SPADEDiffusionModelUNet

from DiffusionAnomalyLib.errors import InputError

#: Map channels: not lesion, lesion.
LABEL_NC = 2


@dataclass(frozen=True)
class SynthesizerConfig:
    """The network's shape; ``map_dropout``: the share of training samples whose map is dropped (CFG)."""

    latent_channels: int = 4
    base_channels: int = 16
    multipliers: tuple[int, ...] = (2, 4)
    num_res_blocks: int = 1
    attention_levels: tuple[bool, ...] = (False, True)
    num_head_channels: int = 16
    norm_num_groups: int = 8
    spade_channels: int = 32
    map_dropout: float = 0.2

    @property
    def channels(self) -> tuple[int, ...]:
        return tuple(self.base_channels * m for m in self.multipliers)

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.multipliers) - 1)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SynthesizerConfig:
        d = dict(d)
        for k in ("multipliers", "attention_levels"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


SYNTHESIZER_PRESETS = {
    "tiny": SynthesizerConfig(),
    "thesis-kidney": SynthesizerConfig(latent_channels=8, base_channels=32, multipliers=(2, 4, 8, 16),
                                       num_res_blocks=2, attention_levels=(False, False, True, True),
                                       num_head_channels=32, norm_num_groups=32, spade_channels=128),
}


def synthesizer_config(name_or_dict: str | dict, **overrides) -> SynthesizerConfig:
    if isinstance(name_or_dict, dict):
        cfg = SynthesizerConfig.from_dict(name_or_dict)
    else:
        if name_or_dict not in SYNTHESIZER_PRESETS:
            raise InputError(f"unknown synthesizer preset {name_or_dict!r}; choose {sorted(SYNTHESIZER_PRESETS)}")
        cfg = SYNTHESIZER_PRESETS[name_or_dict]
    return SynthesizerConfig.from_dict({**cfg.to_dict(), **overrides}) if overrides else cfg


def build_synthesizer(cfg: SynthesizerConfig) -> SPADEDiffusionModelUNet:
    return SPADEDiffusionModelUNet(
        spatial_dims=3, in_channels=cfg.latent_channels, out_channels=cfg.latent_channels, label_nc=LABEL_NC,
        num_res_blocks=cfg.num_res_blocks, channels=cfg.channels, attention_levels=cfg.attention_levels,
        norm_num_groups=cfg.norm_num_groups, num_head_channels=cfg.num_head_channels,
        spade_intermediate_channels=cfg.spade_channels,
    )


def condition_maps(lesion: torch.Tensor, latent_shape: tuple[int, ...]) -> torch.Tensor:
    """(B, 2, *latent_shape): the share of each latent voxel that is not lesion and that is lesion, from the
    patch-grid lesion masks ``lesion`` (B, z, y, x; nonzero = lesion); the two sum to 1."""
    share = F.adaptive_avg_pool3d((lesion > 0).float()[:, None], latent_shape)
    return torch.cat([1 - share, share], 1)


def guided_eps(net: SPADEDiffusionModelUNet, maps: torch.Tensor,
               scale: float) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]:
    """The samplers' ``eps(x, t, labels)`` for this map with classifier-free guidance weight ``scale`` = w."""

    def eps(x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        cond = net(x, timesteps=t, seg=maps)
        if not scale:
            return cond
        return (1 + scale) * cond - scale * net(x, timesteps=t, seg=torch.zeros_like(maps))

    return eps
