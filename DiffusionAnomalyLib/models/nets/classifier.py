"""Classifier on noisy latents C(y | x_t, t) (kidney thesis §4.3.3, App. A.3).

The denoiser's downsampling path (time embedding, input convolution, down blocks, middle block)
followed by global pooling (mean and max, concatenated: a lesion is local, and averaging alone
dilutes it) and a head of two hidden linear layers [384, 192] with dropout [0.6, 0.36]; two
outputs (0 healthy, 1 unhealthy). The backbone can start from a trained denoiser, with its first
``frozen_levels`` levels frozen (default: half of them, i.e. 2 of the thesis network's 4).
"""

from __future__ import annotations

import torch
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding
from torch import nn

from DiffusionAnomalyLib.models.nets.denoiser import DenoiserConfig, build_denoiser


class LatentClassifier(nn.Module):
    def __init__(self, cfg: DenoiserConfig, head: tuple[int, ...] = (384, 192),
                 head_dropout: tuple[float, ...] = (0.6, 0.36), backbone_dropout: float = 0.2,
                 num_classes: int = 2) -> None:
        super().__init__()
        unet = build_denoiser(DenoiserConfig.from_dict({**cfg.to_dict(), "num_class_embeds": None}))
        self.base_channels = cfg.channels[0]
        self.time_embed = unet.time_embed
        self.conv_in = unet.conv_in
        self.down_blocks = unet.down_blocks
        self.middle_block = unet.middle_block
        layers: list[nn.Module] = [nn.Dropout(backbone_dropout)]
        width = 2 * cfg.channels[-1]
        for size, p in zip(head, head_dropout, strict=True):
            layers += [nn.Linear(width, size), nn.SiLU(), nn.Dropout(p)]
            width = size
        layers.append(nn.Linear(width, num_classes))
        self.head = nn.Sequential(*layers)

    def features(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The middle block's output (B, channels[-1], latent grid / downsampling), before pooling."""
        emb = self.time_embed(get_timestep_embedding(t, self.base_channels).to(x.dtype))
        h = self.conv_in(x)
        for block in self.down_blocks:
            h, _ = block(hidden_states=h, temb=emb, context=None)
        return self.middle_block(hidden_states=h, temb=emb, context=None)

    def classify(self, h: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) from :meth:`features` (mean and max pooled)."""
        dims = tuple(range(2, h.dim()))
        return self.head(torch.cat([h.mean(dim=dims), h.amax(dim=dims)], dim=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x, t))

    def load_backbone(self, denoiser_state: dict[str, torch.Tensor], frozen_levels: int | None = None) -> None:
        """Copy the matching backbone weights of a trained denoiser; freeze conv_in and the first levels."""
        if frozen_levels is None:
            frozen_levels = len(self.down_blocks) // 2
        own = self.state_dict()
        shared = {k: v for k, v in denoiser_state.items() if k in own and own[k].shape == v.shape
                  and not k.startswith("head.")}
        self.load_state_dict(shared, strict=False)
        for p in self.conv_in.parameters():
            p.requires_grad_(frozen_levels == 0)
        for i, block in enumerate(self.down_blocks):
            for p in block.parameters():
                p.requires_grad_(i >= frozen_levels)


class LesionSupervisedClassifier(nn.Module):
    """Training-time wrapper: the classifier plus a 1x1x1 convolution on its pre-pooling features that
    predicts, per feature cell, whether the cell holds lesion voxels (deep supervision from lesion masks).

    Only the classifier is kept in the bundle: inference and guidance are unchanged.
    """

    def __init__(self, classifier: LatentClassifier, channels: int) -> None:
        super().__init__()
        self.classifier = classifier
        self.lesion_head = nn.Conv3d(channels, 1, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.classifier.features(x, t)
        return self.classifier.classify(h), self.lesion_head(h)[:, 0]
