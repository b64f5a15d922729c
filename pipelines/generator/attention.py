"""Texture Attention: the denoiser's features query the source encoder's features at the same level."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TextureAttention(nn.Module):
    """Multi-head cross-attention F̂_d = F_d + Attn(Q(F_d), K(F_s), V(F_s)) (the paper's TexAtt).

    Optional additions to the queries and keys: surface-coordinate encodings of the target and the
    source, so a query finds the source pixels showing the same point of the face; and one extra
    key/value token from an ArcFace identity embedding. ``texture_keep`` (``[B]``, 0 or 1) switches
    the source off per sample, which is how classifier-free guidance drops the texture condition.
    """

    def __init__(
        self,
        channels: int,
        source_channels: int,
        head_channels: int,
        groups: int,
        surface_channels: int = 0,
        identity_dim: int = 0,
    ) -> None:
        super().__init__()
        self.heads = max(1, channels // head_channels)
        self.norm_query = nn.GroupNorm(groups, channels)
        self.norm_source = nn.GroupNorm(groups, source_channels)
        self.to_query = nn.Linear(channels, channels)
        self.to_key = nn.Linear(source_channels, channels)
        self.to_value = nn.Linear(source_channels, channels)
        self.to_out = nn.Linear(channels, channels)
        self.surface_query = nn.Linear(surface_channels, channels) if surface_channels else None
        self.surface_key = nn.Linear(surface_channels, channels) if surface_channels else None
        self.identity_token = nn.Linear(identity_dim, source_channels) if identity_dim else None

    def forward(
        self,
        hidden: torch.Tensor,
        source: torch.Tensor,
        texture_keep: torch.Tensor | None = None,
        target_surface: torch.Tensor | None = None,
        source_surface: torch.Tensor | None = None,
        identity: torch.Tensor | None = None,
    ) -> torch.Tensor:
        batch, channels, height, width = hidden.shape
        if source.shape[0] == 1 and batch > 1:
            source = source.expand(batch, -1, -1, -1)
            source_surface = None if source_surface is None else source_surface.expand(batch, -1, -1, -1)
        tokens = self.norm_query(hidden).flatten(2).transpose(1, 2)  # [B, HW, C]
        source_tokens = self.norm_source(source).flatten(2).transpose(1, 2)  # [B, hw, Cs]
        query = self.to_query(tokens)
        key = self.to_key(source_tokens)
        value = self.to_value(source_tokens)
        if self.surface_query is not None:
            if target_surface is not None:
                query = query + self.surface_query(target_surface.flatten(2).transpose(1, 2))
            if source_surface is not None:
                key = key + self.surface_key(source_surface.flatten(2).transpose(1, 2))
        if self.identity_token is not None and identity is not None:
            token = self.identity_token(identity).unsqueeze(1)  # [B, 1, Cs]
            key = torch.cat([key, self.to_key(token)], dim=1)
            value = torch.cat([value, self.to_value(token)], dim=1)

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.unflatten(2, (self.heads, -1)).transpose(1, 2)

        attended = F.scaled_dot_product_attention(heads(query), heads(key), heads(value))
        attended = self.to_out(attended.transpose(1, 2).flatten(2))
        if texture_keep is not None:
            attended = attended * texture_keep.to(attended.dtype).view(-1, 1, 1)
        return hidden + attended.transpose(1, 2).reshape(batch, channels, height, width)
