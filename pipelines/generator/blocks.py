"""Building blocks of the TGDM U-Net and its source encoder."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_features(timesteps: torch.Tensor, channels: int) -> torch.Tensor:
    """Sinusoidal features ``[B, channels]`` of (possibly fractional) diffusion timesteps."""
    half = channels // 2
    frequencies = torch.exp(-math.log(10000.0) * torch.arange(half, device=timesteps.device) / half)
    angles = timesteps.float().unsqueeze(1) * frequencies.unsqueeze(0)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


def surface_encoding(surface: torch.Tensor, frequencies: int, size: int) -> torch.Tensor:
    """Fourier features of a surface-coordinate map ``[B, 3, H, W]`` (0..1, zero off the face) at
    ``size``², plus a face-coverage channel: ``[B, 6·frequencies + 1, size, size]``.

    They tell texture attention which point of the face a pixel shows, in the target and in the source."""
    if surface.shape[-1] != size:
        surface = F.interpolate(surface, size=(size, size), mode="area")
    coverage = (surface.amax(1, keepdim=True) > 0).to(surface.dtype)
    scales = (2.0 ** torch.arange(frequencies, device=surface.device, dtype=surface.dtype)) * math.pi
    angles = surface.unsqueeze(2) * scales.view(1, 1, -1, 1, 1)  # [B, 3, F, H, W]
    features = torch.cat([torch.sin(angles), torch.cos(angles)], dim=2).flatten(1, 2) * coverage
    return torch.cat([features, coverage], dim=1)


def surface_channels(frequencies: int) -> int:
    return 6 * frequencies + 1


class ResBlock(nn.Module):
    """Pre-activation residual block; with ``embedding_dim`` its second normalisation is AdaIN:
    scale and shift come from the timestep + coefficient embedding."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, embedding_dim: int = 0) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels, affine=embedding_dim == 0)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.modulation = nn.Linear(embedding_dim, 2 * out_channels) if embedding_dim else None
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, embedding: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.norm2(h)
        if self.modulation is not None:
            scale, shift = self.modulation(embedding)[:, :, None, None].chunk(2, dim=1)
            h = h * (1 + scale) + shift
        return self.skip(x) + self.conv2(F.silu(h))


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
