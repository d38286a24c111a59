"""Healthy reconstruction with a model bundle: encode ROI patches, noise to level L and denoise back
toward "healthy" in latent space, decode (DESIGN.md §2 steps 4-6).

Implements the pipeline's reconstructor interface (``reconstruct(x, mask, spacing_mm)``). With
``reference="autoencoder"`` the anomaly map is taken against the autoencoder's own reconstruction
D(E(x)) instead of the input, which cancels the compression error (seed 002 §3.4.3).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from .bundle import Bundle
from .diffusion.inpaint import adaptive_liver_mask
from .diffusion.sampler import LatentSampler, SamplerSettings
from .errors import InputError
from .nets.autoencoder import LatentCodec
from .nets.denoiser import bf16_on_cuda, eps_function

REFERENCES = ("input", "autoencoder")


@dataclass
class DiffusionReconstructor:
    bundle: Bundle
    settings: SamplerSettings
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    reference: str = "input"
    progress: Callable[[int, int], None] | None = None  # sampler steps done, total
    autocast: bool = True  # bfloat16 network evaluations on CUDA; the sampler arithmetic stays float32
    name: str = "latent-diffusion"

    def __post_init__(self) -> None:
        if self.reference not in REFERENCES:
            raise InputError(f"unknown anomaly reference {self.reference!r}; choose one of {list(REFERENCES)}")
        nets = self.bundle.networks
        if "autoencoder" not in nets or "denoiser" not in nets:
            raise InputError(f"{self.bundle.path}: the bundle needs an autoencoder and a denoiser to reconstruct")
        den_cfg = self.bundle.meta.networks["denoiser"]
        self.codec = LatentCodec(nets["autoencoder"], self.bundle.meta.latent.get("scale_factor", 1.0))
        self.sampler = LatentSampler(self._maybe_autocast(eps_function(nets["denoiser"])), self.bundle.schedule(),
                                     classifier=nets.get("classifier"),
                                     class_conditional=den_cfg.get("num_class_embeds") is not None)
        self.settings.validate(self.sampler.schedule)
        self.trajectory: list[tuple[int, np.ndarray]] = []
        self.network_evaluations = 0

    def _maybe_autocast(self, fn):
        return bf16_on_cuda(fn, self.device) if self.autocast else fn

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

    def reconstruct(self, x: np.ndarray, mask: np.ndarray, spacing_mm) -> np.ndarray:
        with torch.no_grad():
            xt = torch.from_numpy(x).to(self.device)
            z0 = self.codec.encode(xt)
            lat_mask = self._latent_mask(x, mask, z0.shape) if self.settings.method == "inpaint" else None
            result = self.sampler.reconstruct(z0, self.settings, mask=lat_mask, progress=self.progress)
            self.network_evaluations = result.network_evaluations
            self.trajectory = [(t, self.codec.decode(x0).float().cpu().numpy()) for t, x0 in result.trajectory]
            return self.codec.decode(result.latent).float().cpu().numpy()

    def reference_image(self, x: np.ndarray) -> np.ndarray:
        """What the anomaly map compares against: the input, or D(E(x))."""
        if self.reference == "input":
            return x
        with torch.no_grad():
            xt = torch.from_numpy(x).to(self.device)
            return self.codec.decode(self.codec.encode(xt)).float().cpu().numpy()
