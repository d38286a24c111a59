"""Optional perceptual loss whose feature network loads from a local safetensors file.

The seed's VQ-GAN uses a perceptual loss with pretrained features (App. A.1, weight 4). Pretrained
weights are never fetched at run time: give a file with the state dict of MONAI's 3D ``resnet10``
(``feed_forward=False``, ``n_input_channels`` = patch channels), e.g. MedicalNet weights you
converted yourself. Without a file the loss is off and the training log says so.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from DiffusionAnomalyLib.errors import InputError


class LocalPerceptualLoss(nn.Module):
    """Mean L1 distance between unit-normalised features of a frozen 3D ResNet at each stage."""

    def __init__(self, weights: str | Path, in_channels: int = 1) -> None:
        super().__init__()
        from monai.networks.nets import resnet10
        from safetensors.torch import load_file

        path = Path(weights)
        if path.suffix != ".safetensors" or not path.is_file():
            raise InputError(f"{path}: perceptual-loss weights must be an existing .safetensors file")
        net = resnet10(spatial_dims=3, n_input_channels=in_channels, feed_forward=False, shortcut_type="A")
        missing, unexpected = net.load_state_dict(load_file(str(path)), strict=False)
        if missing:
            raise InputError(f"{path}: not a resnet10 state dict; missing {missing[:5]}...")
        self.net = net.eval().requires_grad_(False)

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        n = self.net
        x = n.maxpool(n.act(n.bn1(n.conv1(x))))
        feats = []
        for layer in (n.layer1, n.layer2, n.layer3, n.layer4):
            x = layer(x)
            feats.append(x / (x.norm(dim=1, keepdim=True) + 1e-6))
        return feats

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return sum((a - b).abs().mean() for a, b in zip(self._features(x), self._features(y), strict=True))
