"""DDPM ancestral sampling (kidney thesis eq. 2.8), including respaced schedules.

Between any two grid timesteps s < t the posterior q(x_s | x_t, x_0) is Gaussian with
    beta'      = 1 - alpha_bar_t / alpha_bar_s
    mean       = sqrt(alpha_bar_s) beta' / (1 - alpha_bar_t) * x_0
                 + sqrt(alpha_bar_t / alpha_bar_s) (1 - alpha_bar_s) / (1 - alpha_bar_t) * x_t
    variance   = (1 - alpha_bar_s) / (1 - alpha_bar_t) * beta'
For s = t - 1 this is exactly eq. 2.8 with sigma_t^2 = beta-tilde_t; MONAI's DDPMScheduler.step
assumes s = t - 1 and is wrong for respaced grids.
"""

from __future__ import annotations

import torch

from DiffusionAnomalyLib.models.diffusion.schedule import NoiseSchedule


def ddpm_posterior(
    schedule: NoiseSchedule, x_t: torch.Tensor, x0: torch.Tensor, t: int, s: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of q(x_s | x_t, x_0) for grid timesteps s < t."""
    a_t = schedule.alpha_bar_t(t, x_t)
    a_s = schedule.alpha_bar_t(s, x_t)
    beta = 1 - a_t / a_s
    mean = a_s.sqrt() * beta / (1 - a_t) * x0 + (a_t / a_s).sqrt() * (1 - a_s) / (1 - a_t) * x_t
    var = (1 - a_s) / (1 - a_t) * beta
    return mean, var


def ddpm_step(
    schedule: NoiseSchedule, x_t: torch.Tensor, eps: torch.Tensor, t: int, s: int, noise: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One ancestral step x_t -> x_s (s < t) given the (possibly guided) noise estimate.

    Returns (x_s, predicted x_0). No clipping: latents are not bounded.
    """
    x0 = schedule.predict_x0(x_t, t, eps)
    mean, var = ddpm_posterior(schedule, x_t, x0, t, s)
    return mean + var.sqrt() * noise, x0
