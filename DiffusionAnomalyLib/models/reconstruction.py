"""Healthy reconstruction with a model bundle: encode ROI patches, noise to level L and denoise back
toward "healthy" in latent space, decode (docs/method.md, pipeline steps 4-7).

Implements the pipeline's reconstructor interface (``reconstruct(x, mask, spacing_mm)``). With
``reference="autoencoder"`` the anomaly map is taken against the autoencoder's own reconstruction
D(E(x)) instead of the input, which cancels the compression error (brain thesis §3.4.3). With
``samples`` = K > 1 the stochastic samplers (DDPM, inpaint) draw K reconstructions of every ROI in one
batch and average them after decoding: the healed lesion is in every sample, while the sampling
noise of a single draw, a source of false-positive blobs, shrinks about as 1/sqrt(K). DDIM is
deterministic, so it always draws one. The K decoded draws stay available (``draws``) for the uncertainty map.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from DiffusionAnomalyLib.errors import InputError
from DiffusionAnomalyLib.models.bundle import Bundle
from DiffusionAnomalyLib.models.diffusion.inpaint import adaptive_liver_mask
from DiffusionAnomalyLib.models.diffusion.sampler import LatentSampler, SamplerSettings
from DiffusionAnomalyLib.models.nets.autoencoder import LatentCodec
from DiffusionAnomalyLib.models.nets.denoiser import eps_function
from DiffusionAnomalyLib.models.precision import (
    classifier_in_precision,
    eps_in_precision,
    network_layout,
    parallel_guidance,
    resolve_precision,
)
from DiffusionAnomalyLib.settings import DETERMINISTIC_SAMPLERS, REFERENCES


def samples_drawn(method: str, samples: int) -> int:
    """Reconstructions a sampler draws per ROI for ``samples`` requested: 1 for the deterministic ones (ddim, dpmpp)."""
    return 1 if method in DETERMINISTIC_SAMPLERS else int(samples)


@dataclass
class DiffusionReconstructor:
    bundle: Bundle
    settings: SamplerSettings
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    reference: str = "input"
    progress: Callable[[int, int], None] | None = None  # sampler steps done, total
    precision: str = "auto"  # networks in fp32 or bf16 autocast (precision.py); the sampler arithmetic stays float32
    samples: int = 1  # stochastic reconstructions averaged per ROI (DDPM, inpaint)
    name: str = "latent-diffusion"

    def __post_init__(self) -> None:
        if self.reference not in REFERENCES:
            raise InputError(f"unknown anomaly reference {self.reference!r}; choose one of {list(REFERENCES)}")
        if int(self.samples) < 1:
            raise InputError(f"the number of averaged samples must be >= 1 (got {self.samples})")
        nets = self.bundle.networks
        if "autoencoder" not in nets or "denoiser" not in nets:
            raise InputError(f"{self.bundle.path}: the bundle needs an autoencoder and a denoiser to reconstruct")
        den_cfg = self.bundle.meta.networks["denoiser"]
        self.codec = LatentCodec(nets["autoencoder"], self.bundle.meta.latent.get("scale_factor", 1.0))
        #: the precision the networks run at here: "fp32" or "bf16" (``precision`` resolved for the device)
        self.resolved_precision = resolve_precision(self.precision, self.device)
        p = self.resolved_precision
        network_layout(nets["denoiser"], self.device, p)
        self.sampler = LatentSampler(eps_in_precision(eps_function(nets["denoiser"]), self.device, p),
                                     self.bundle.schedule(),
                                     classifier=classifier_in_precision(nets.get("classifier"), self.device, p),
                                     class_conditional=den_cfg.get("num_class_embeds") is not None,
                                     parallel_guidance=parallel_guidance(self.device, p))
        self.settings.validate(self.sampler.schedule)
        self.trajectory: list[tuple[int, int, np.ndarray]] = []  # (sampler step, noise level t, decoded x0_hat)
        self.draws: np.ndarray | None = None  # the K >= 2 decoded draws (K, B, C, ...) of the last reconstruct
        self.network_evaluations = 0

    def _latent_mask(self, x: np.ndarray, mask: np.ndarray, z_shape: torch.Size) -> torch.Tensor:
        """Inpainting region on the latent grid: the adaptive (darker-than-median) mask for CT, else the organ."""
        region = np.zeros(mask.shape, bool)
        for b in range(len(mask)):
            if self.bundle.meta.modality == "CT":
                region[b] = adaptive_liver_mask(x[b, 0], mask[b], offset_hu=self._offset_in_units())
            else:
                region[b] = mask[b] > 0
        t = torch.from_numpy(region.astype(np.float32))[:, None]
        return torch.nn.functional.adaptive_max_pool3d(t, tuple(z_shape[2:])).to(self.device)

    def _offset_in_units(self) -> float:
        n = self.bundle.preset.normalization
        return 20.0 * 2.0 / (n.clip_max - n.clip_min)  # 20 HU in network units

    @property
    def effective_samples(self) -> int:
        """Reconstructions actually averaged: ``samples``, or 1 for the deterministic DDIM."""
        return samples_drawn(self.settings.method, self.samples)

    def reconstruct(self, x: np.ndarray, mask: np.ndarray, spacing_mm) -> np.ndarray:
        k = self.effective_samples
        with torch.no_grad():
            xt = torch.from_numpy(x).to(self.device)
            z0 = self.codec.encode(xt)
            lat_mask = self._latent_mask(x, mask, z0.shape) if self.settings.method == "inpaint" else None
            if k > 1:  # the K draws of ROI b are rows b, B + b, 2B + b, ... of one batch
                z0 = z0.repeat(k, *([1] * (z0.dim() - 1)))
                lat_mask = lat_mask.repeat(k, *([1] * (lat_mask.dim() - 1))) if lat_mask is not None else None
            result = self.sampler.reconstruct(z0, self.settings, mask=lat_mask, progress=self.progress)
            self.network_evaluations = result.network_evaluations
            every = self.settings.trajectory_every
            self.trajectory = [(j * every, t, self._decode(x0, k).mean(axis=0)) for j, (t, x0) in
                               enumerate(result.trajectory)]
            draws = self._decode(result.latent, k)
            self.draws = draws if k > 1 else None
            return draws.mean(axis=0)

    def _decode(self, z: torch.Tensor, k: int) -> np.ndarray:
        """Decode a batch of K x B latents into the K draws of each ROI (float32, (K, B, C, ...))."""
        decoded = self.codec.decode(z).float()
        return decoded.reshape(k, decoded.shape[0] // k, *decoded.shape[1:]).cpu().numpy()

    def reference_image(self, x: np.ndarray) -> np.ndarray:
        """What the anomaly map compares against: the input, or D(E(x))."""
        return x if self.reference == "input" else self.autoencode(x)

    def autoencode(self, x: np.ndarray) -> np.ndarray:
        """The autoencoder's own reconstruction D(E(x)) of (B, C, z, y, x) patches (float32, same shape)."""
        with torch.no_grad():
            xt = torch.from_numpy(x).to(self.device)
            return self.codec.decode(self.codec.encode(xt)).float().cpu().numpy()
