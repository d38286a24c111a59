"""The forward (noising) process: betas, alpha_bar and q(x_t | x_0) (kidney thesis eq. 2.6)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from DiffusionAnomalyLib.errors import InputError


@dataclass(frozen=True)
class NoiseSchedule:
    """Linear beta schedule beta_1..beta_T from ``beta_start`` to ``beta_end`` (DDPM defaults).

    ``alpha_bar[t]`` for t = 0..T, with ``alpha_bar[0] = 1`` (clean data).
    """

    num_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    kind: str = "linear"

    def __post_init__(self) -> None:
        if self.num_timesteps < 2:
            raise InputError(f"num_timesteps must be >= 2, got {self.num_timesteps}")
        if self.kind not in ("linear", "scaled_linear"):
            raise InputError(f"unknown beta schedule {self.kind!r}; use 'linear' or 'scaled_linear'")
        if not 0 < self.beta_start < self.beta_end < 1:
            raise InputError(f"need 0 < beta_start < beta_end < 1, got {self.beta_start}, {self.beta_end}")

    @property
    def betas(self) -> np.ndarray:
        """beta_t for t = 1..T at index t (index 0 is 0: no noise is added to reach x_0)."""
        if self.kind == "linear":
            b = np.linspace(self.beta_start, self.beta_end, self.num_timesteps, dtype=np.float64)
        else:
            b = np.linspace(self.beta_start**0.5, self.beta_end**0.5, self.num_timesteps, dtype=np.float64) ** 2
        return np.concatenate([[0.0], b])

    @property
    def alpha_bar(self) -> np.ndarray:
        return np.cumprod(1.0 - self.betas)

    def alpha_bar_t(self, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        """alpha_bar at integer timesteps ``t`` (scalar or (B,)), shaped to broadcast against ``like``."""
        table = torch.as_tensor(self.alpha_bar, dtype=torch.float64, device=like.device)
        t = torch.as_tensor(t, device=like.device).long()
        a = table[t].to(like.dtype)
        return a.reshape(a.shape + (1,) * (like.dim() - a.dim()))

    def check_level(self, level: int) -> None:
        """Noise levels L must lie in [1, T - 1]."""
        if not 1 <= int(level) <= self.num_timesteps - 1:
            raise InputError(f"noise level L={level} is outside [1, {self.num_timesteps - 1}]")

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor | int, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise   (eq. 2.6)."""
        a = self.alpha_bar_t(t, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor | int, eps: torch.Tensor) -> torch.Tensor:
        """x_0 estimate from the predicted noise: (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)."""
        a = self.alpha_bar_t(t, x_t)
        return (x_t - (1 - a).sqrt() * eps) / a.sqrt()

    def to_dict(self) -> dict:
        return {"num_timesteps": self.num_timesteps, "beta_start": self.beta_start, "beta_end": self.beta_end,
                "kind": self.kind}


def sampling_timesteps(level: int, steps: int) -> list[int]:
    """The strided grid [L = tau_S > ... > tau_1 > tau_0 = 0] used to go from x_L to x_0 in ``steps`` steps.

    The grid lands exactly on L and 0 and on integer timesteps in between (evenly spaced, rounded);
    with ``steps == L`` it is every timestep. Unlike MONAI's ``t - T // N`` rule it never skips
    past the listed timesteps.
    """
    level, steps = int(level), int(steps)
    if steps < 1:
        raise InputError(f"steps must be >= 1, got {steps}")
    if steps > level:
        raise InputError(f"steps ({steps}) cannot exceed the noise level L ({level})")
    grid = np.round(np.linspace(0, level, steps + 1)).astype(int)
    return sorted({int(v) for v in grid}, reverse=True)
