"""The VQ-GAN's adversaries (kidney thesis App. A.1): a volume-level 3D and a slice-level 2D patch
discriminator (MONAI ``PatchDiscriminator``), with a least-squares GAN loss (MONAI ``PatchAdversarialLoss``)."""

from __future__ import annotations

import torch
from monai.losses import PatchAdversarialLoss
from monai.networks.nets import PatchDiscriminator

#: LSGAN on the raw logits: mean((D - 1)^2) toward real, mean(D^2) toward fake. MONAI's default puts a
#: LeakyReLU(0.05) on the logits first; ``no_activation_leastsq`` keeps the plain least squares of the thesis.
LSGAN = PatchAdversarialLoss(criterion="least_squares", no_activation_leastsq=True)


def build_discriminators(in_channels: int, channels: int = 32, num_layers: int = 3):
    """(volume discriminator on 3D patches, slice discriminator on 2D axial slices)."""
    volume = PatchDiscriminator(spatial_dims=3, channels=channels, in_channels=in_channels, num_layers_d=num_layers)
    slices = PatchDiscriminator(spatial_dims=2, channels=channels, in_channels=in_channels, num_layers_d=num_layers)
    return volume, slices


def random_axial_slices(x: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` random axial slices per volume: (B, C, z, y, x) -> (B * n, C, y, x)."""
    b, c, z = x.shape[:3]
    idx = torch.randint(0, z, (b, n), generator=generator, device="cpu").to(x.device)
    picked = torch.stack([x[i, :, idx[i]] for i in range(b)])  # (B, C, n, y, x)
    return picked.permute(0, 2, 1, 3, 4).reshape(b * n, c, *x.shape[3:])


def _logits(outputs) -> list[torch.Tensor]:
    """The logits of a ``PatchDiscriminator``'s outputs (its last feature map), or of each scale's."""
    return [o[-1] for o in outputs] if isinstance(outputs[0], list) else [outputs[-1]]


def generator_loss(disc_outputs) -> torch.Tensor:
    """LSGAN generator term: push the discriminator's output on fakes toward 1 (summed over scales)."""
    return sum(LSGAN(o, target_is_real=True, for_discriminator=False) for o in _logits(disc_outputs))


def discriminator_loss(real_outputs, fake_outputs) -> torch.Tensor:
    """LSGAN discriminator term: reals -> 1, fakes -> 0 (each summed over scales, the two halved)."""
    real = sum(LSGAN(o, target_is_real=True, for_discriminator=True) for o in _logits(real_outputs))
    fake = sum(LSGAN(o, target_is_real=False, for_discriminator=True) for o in _logits(fake_outputs))
    return 0.5 * (real + fake)
