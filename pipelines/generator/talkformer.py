"""TalkFormer (paper 2): the dubbing denoiser is conditioned on lip and jaw landmarks through attention,
never through rasterised sketches, so the diffusion loss's gradient reaches the landmark coordinates
(and, in joint training, the audio → landmark model that predicted them).

Coordinates are in the face crop, -1..1 in x (left → right) and y (top → bottom). Pixel positions of a
feature map are expressed in the same frame, so a pixel and a landmark can be compared.

Each :class:`TalkFormer` block does two things at one U-Net level:

* **landmark attention**: the denoiser's features (queries) attend to the target landmark tokens
  (keys/values);
* **implicit warping**: the same features attend to the K reference frames' features. Keys are the
  reference features plus a *landmark code* of each reference pixel, queries carry the landmark code
  of each target pixel. A landmark code says where a pixel lies relative to a landmark set (a
  pixel-position query attending to that set's tokens), so a target pixel "just above the lower lip"
  finds the reference pixels "just above the lower lip" of each reference's own mouth shape: the
  reference's teeth and lip texture move to the target's mouth without an explicit flow field.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def coordinate_features(points: torch.Tensor, frequencies: int) -> torch.Tensor:
    """Fourier features ``[..., 4·frequencies + 2]`` of 2-D coordinates ``[..., 2]`` in -1..1 (the raw
    coordinates included, so a token stays a smooth, differentiable function of its point)."""
    scales = (2.0 ** torch.arange(frequencies, device=points.device, dtype=points.dtype)) * math.pi
    angles = points.unsqueeze(-1) * scales  # [..., 2, F]
    return torch.cat([points, torch.sin(angles).flatten(-2), torch.cos(angles).flatten(-2)], dim=-1)


def coordinate_feature_count(frequencies: int) -> int:
    return 4 * frequencies + 2


def pixel_grid(height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Centres of a ``height × width`` feature map's cells in crop coordinates, ``[height·width, 2]`` (x, y)."""
    ys = (torch.arange(height, device=device, dtype=dtype) + 0.5) / height * 2 - 1
    xs = (torch.arange(width, device=device, dtype=dtype) + 0.5) / width * 2 - 1
    return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)


class LandmarkTokenizer(nn.Module):
    """Landmarks ``[..., P, 2]`` → tokens ``[..., P, width]``: Fourier features of each point through a
    small MLP, plus a learned embedding of which point it is (the positional embedding: point 57 is
    the lower lip's centre wherever it sits). ``keep`` (0..1 per sample) blends the tokens with a
    learned null set: training drops the landmarks that way, which gives the no-landmark ablation and
    landmark guidance."""

    def __init__(self, points: int, width: int, frequencies: int) -> None:
        super().__init__()
        self.frequencies = frequencies
        features = coordinate_feature_count(frequencies)
        self.mlp = nn.Sequential(nn.Linear(features, width), nn.SiLU(), nn.Linear(width, width))
        self.point_embedding = nn.Parameter(torch.randn(points, width) * 0.02)
        self.null_tokens = nn.Parameter(torch.zeros(points, width))

    def forward(self, points: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        tokens = self.mlp(coordinate_features(points, self.frequencies)) + self.point_embedding
        if keep is not None:
            keep = keep.to(tokens.dtype).view(-1, *([1] * (tokens.ndim - 1)))
            tokens = keep * tokens + (1 - keep) * self.null_tokens
        return tokens


def _attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head attention of ``[N, q, C]`` queries over ``[N, k, C]`` keys/values → ``[N, q, C]``."""
    def split(x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(2, (heads, -1)).transpose(1, 2)

    return F.scaled_dot_product_attention(split(query), split(key), split(value)).transpose(1, 2).flatten(2)


class TalkFormer(nn.Module):
    """Landmark attention and implicit warping at one U-Net level (see the module docstring).

    ``hidden [B, C, h, w]``; ``target_tokens [B, P, D]``; ``reference [B or 1, K, Cr, h, w]`` (reference
    features at this level) with ``reference_tokens [B or 1, K, P, D]``. Both attentions add to
    ``hidden`` through zero-initialised output projections, so a new block starts as the identity."""

    def __init__(
        self, channels: int, reference_channels: int, token_width: int, head_channels: int, groups: int,
        position_frequencies: int,
    ) -> None:
        super().__init__()
        self.heads = max(1, channels // head_channels)
        self.position_frequencies = position_frequencies
        # the landmark code of a pixel: its position queries a landmark set's tokens
        self.code_query = nn.Linear(coordinate_feature_count(position_frequencies), channels)
        self.code_key = nn.Linear(token_width, channels)
        self.code_value = nn.Linear(token_width, channels)
        # landmark attention
        self.norm = nn.GroupNorm(groups, channels)
        self.landmark_query = nn.Linear(channels, channels)
        self.landmark_key = nn.Linear(token_width, channels)
        self.landmark_value = nn.Linear(token_width, channels)
        self.landmark_out = nn.Linear(channels, channels)
        # implicit warping
        self.warp_norm = nn.GroupNorm(groups, channels)
        self.reference_norm = nn.GroupNorm(groups, reference_channels)
        self.warp_query = nn.Linear(channels, channels)
        self.warp_query_code = nn.Linear(channels, channels)
        self.warp_key = nn.Linear(reference_channels, channels)
        self.warp_key_code = nn.Linear(channels, channels)
        self.warp_value = nn.Linear(reference_channels, channels)
        self.warp_out = nn.Linear(channels, channels)
        for layer in (self.landmark_out, self.warp_out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def landmark_code(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Where each of the ``height·width`` pixels lies relative to each landmark set: tokens ``[N, P, D]``
        → ``[N, height·width, C]``."""
        grid = pixel_grid(height, width, tokens.device, tokens.dtype)
        query = self.code_query(coordinate_features(grid, self.position_frequencies)).expand(tokens.shape[0], -1, -1)
        return _attend(query, self.code_key(tokens), self.code_value(tokens), self.heads)

    def forward(
        self, hidden: torch.Tensor, target_tokens: torch.Tensor, reference: torch.Tensor, reference_tokens: torch.Tensor
    ) -> torch.Tensor:
        batch, channels, height, width = hidden.shape
        if reference.shape[0] != batch:
            reference = reference.expand(batch, *reference.shape[1:])
        if reference_tokens.shape[0] != batch:
            reference_tokens = reference_tokens.expand(batch, *reference_tokens.shape[1:])
        references = reference.shape[1]

        target_code = self.landmark_code(target_tokens, height, width)  # [B, hw, C]
        tokens = self.norm(hidden).flatten(2).transpose(1, 2)
        attended = _attend(self.landmark_query(tokens) + target_code, self.landmark_key(target_tokens),
                           self.landmark_value(target_tokens), self.heads)
        hidden = hidden + self.landmark_out(attended).transpose(1, 2).reshape(batch, channels, height, width)

        reference_code = self.landmark_code(reference_tokens.flatten(0, 1), height, width)  # [B·K, hw, C]
        reference_code = reference_code.reshape(batch, references * height * width, channels)
        reference_features = self.reference_norm(reference.flatten(0, 1))  # [B·K, Cr, h, w]
        reference_features = reference_features.flatten(2).transpose(1, 2).reshape(batch, references * height * width, -1)
        tokens = self.warp_norm(hidden).flatten(2).transpose(1, 2)
        query = self.warp_query(tokens) + self.warp_query_code(target_code)
        key = self.warp_key(reference_features) + self.warp_key_code(reference_code)
        attended = _attend(query, key, self.warp_value(reference_features), self.heads)
        return hidden + self.warp_out(attended).transpose(1, 2).reshape(batch, channels, height, width)
