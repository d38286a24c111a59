"""CUDA paths. This machine (and CI) has no GPU: these tests skip there and run where one exists."""

import pytest
import torch

from DiffusionAnomalyLib.errors import InputError
from DiffusionAnomalyLib.models.device import select_device
from DiffusionAnomalyLib.models.diffusion.sampler import LatentSampler, SamplerSettings
from DiffusionAnomalyLib.models.diffusion.schedule import NoiseSchedule
from DiffusionAnomalyLib.models.nets.denoiser import build_denoiser, denoiser_config, eps_function
from DiffusionAnomalyLib.models.precision import network_autocast

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU available to PyTorch")


def test_asking_for_cuda_without_one_is_a_clear_error():
    if torch.cuda.is_available():
        assert select_device("cuda").type == "cuda"
    else:
        with pytest.raises(InputError, match="CUDA was asked for but no CUDA GPU"):
            select_device("cuda")
    assert select_device("cpu").type == "cpu"


@needs_cuda
def test_sampler_on_cuda_matches_cpu():
    torch.manual_seed(0)
    net = build_denoiser(denoiser_config("tiny")).eval()
    z = torch.randn(2, 4, 8, 8, 8)
    s = NoiseSchedule()
    cpu = LatentSampler(eps_function(net), s).reconstruct(z, SamplerSettings("ddim", 200, 10)).latent
    gpu = LatentSampler(eps_function(net.cuda()), s).reconstruct(z.cuda(), SamplerSettings("ddim", 200, 10)).latent
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-3, atol=1e-3)


@needs_cuda
def test_bf16_autocast_training_step_on_cuda():
    net = build_denoiser(denoiser_config("tiny")).cuda()
    opt = torch.optim.Adam(net.parameters(), 1e-4)
    z = torch.randn(2, 4, 8, 8, 8, device="cuda")
    t = torch.tensor([10, 500], device="cuda")
    with network_autocast(torch.device("cuda"), "bf16"):
        loss = (net(z, t).float() - z).abs().mean()
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
