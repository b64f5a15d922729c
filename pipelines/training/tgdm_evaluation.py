"""Held-out evaluation of a TGDM generator against trivial baselines, in PSNR and SSIM."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..generator.sampler import GeneratorInputs, SamplerSettings, TGDMSampler
from ..generator.tgdm import TGDMDenoiser
from ..generator.vae import LatentCodec
from .synthetic_faces import FaceViews


def psnr(images: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of ``[B, H, W, C]`` images in 0..1."""
    mse = (images - references).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return -10 * torch.log10(mse)


def ssim(images: torch.Tensor, references: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004, Gaussian window, averaged over channels) of ``[B, H, W, C]`` in 0..1."""
    return ssim_map(images, references, window, sigma).flatten(1).mean(1).float()


def ssim_map(images: torch.Tensor, references: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """The SSIM index of every full window position, averaged over channels: ``[B, H - window + 1, W - window + 1]``
    (float64); an average over part of it scores a region."""
    x, y = images.permute(0, 3, 1, 2).double(), references.permute(0, 3, 1, 2).double()
    channels = x.shape[1]
    offsets = torch.arange(window, dtype=torch.float64) - window // 2
    kernel_1d = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel_1d = kernel_1d / kernel_1d.sum()
    kernel = (kernel_1d[:, None] * kernel_1d[None, :]).expand(channels, 1, window, window)

    def blur(z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(z, kernel, groups=channels)

    mean_x, mean_y = blur(x), blur(y)
    var_x = blur(x * x) - mean_x**2
    var_y = blur(y * y) - mean_y**2
    cov = blur(x * y) - mean_x * mean_y
    c1, c2 = 0.01**2, 0.03**2
    index = ((2 * mean_x * mean_y + c1) * (2 * cov + c2)) / ((mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2))
    return index.mean(1)


def held_out_pairs(views: FaceViews) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed pairs: every view is a target once, its source the next view of the same identity."""
    per_identity = int((views.identities == views.identities[0]).sum())
    targets = torch.arange(len(views))
    sources = views.identities * per_identity + (targets + 1) % per_identity
    return sources, targets


def evaluate_generator(
    model: TGDMDenoiser, views: FaceViews, settings: SamplerSettings, vae: LatentCodec | None = None,
    pairs: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, float]:
    """Generate every held-out target from its source and compare, together with the two trivial
    answers: the render I_3d itself and the source photo unchanged. ``pairs`` (source, target
    indices) default to :func:`held_out_pairs`. A latent-mode model needs ``vae``."""
    sources, targets = held_out_pairs(views) if pairs is None else pairs
    sampler = TGDMSampler(model, settings, vae)
    generated = sampler.sample(GeneratorInputs(
        source=views.photos[sources], renders=views.renders[targets], coefficients=views.coefficients[targets],
        target_surfaces=views.surfaces[targets], source_surface=views.surfaces[sources],
    ))
    truth = views.photos[targets]
    results = {}
    for name, images in (("tgdm", generated), ("render", views.renders[targets]), ("source", views.photos[sources])):
        results[f"psnr_{name}"] = round(psnr(images, truth).mean().item(), 3)
        results[f"ssim_{name}"] = round(ssim(images, truth).mean().item(), 4)
    return results
