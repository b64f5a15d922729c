"""The TGDM denoiser (paper 1's figure): a U-Net on the noisy image ⊕ the render I_3d, AdaIN
ResBlocks driven by Linear(t) + Linear(ρ̂), and Texture Attention on a separate source encoder Φ_E."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TalkingFaceError
from .attention import TextureAttention
from .blocks import Downsample, ResBlock, Upsample, surface_channels, surface_encoding, timestep_features
from .config import TGDMConfig
from .distilled import Distillation


@dataclass
class SourceFeatures:
    """Φ_E's features of the source image(s), one ``[S, C, h, w]`` tensor per U-Net level, and the
    surface encodings of the source render at the same sizes (``None`` without surface maps).
    Computed once per source and reused at every denoising step."""

    levels: list[torch.Tensor]
    surfaces: list[torch.Tensor] | None

    @property
    def batch(self) -> int:
        return self.levels[0].shape[0]

    def select(self, index: slice) -> SourceFeatures:
        """The features of some samples; a single shared source is kept as it is."""
        if self.batch == 1:
            return self
        pick = [level[index] for level in self.levels]
        return SourceFeatures(pick, None if self.surfaces is None else [s[index] for s in self.surfaces])

    def repeat(self, times: int) -> SourceFeatures:
        if self.batch == 1 or times == 1:
            return self
        levels = [level.repeat(times, 1, 1, 1) for level in self.levels]
        return SourceFeatures(levels, None if self.surfaces is None else [s.repeat(times, 1, 1, 1) for s in self.surfaces])


class SourceEncoder(nn.Module):
    """Φ_E: plain ResBlocks giving the source's features at every U-Net resolution."""

    def __init__(self, config: TGDMConfig) -> None:
        super().__init__()
        channels = config.source_level_channels
        self.input = nn.Conv2d(config.denoised_channels, channels[0], 3, padding=1)
        self.levels = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        previous = channels[0]
        for level, width in enumerate(channels):
            blocks = [ResBlock(previous if i == 0 else width, width, config.norm_groups) for i in range(config.blocks_per_level)]
            self.levels.append(nn.ModuleList(blocks))
            previous = width
            if level < len(channels) - 1:
                self.downsamples.append(Downsample(width))

    def forward(self, source: torch.Tensor) -> list[torch.Tensor]:
        h = self.input(source)
        features = []
        for level, blocks in enumerate(self.levels):
            for block in blocks:
                h = block(h)
            features.append(h)
            if level < len(self.downsamples):
                h = self.downsamples[level](h)
        return features


class RenderStem(nn.Module):
    """Latent mode: the full-resolution render I_3d brought onto the latent grid by a learned stem
    (space-to-depth by the VAE's factor, then convolutions), to be concatenated with the noisy latents.

    Why not VAE-encode the render: a learned stem keeps the sub-latent-pixel geometry (edges, eye and
    mouth contours) that the VAE, tuned to natural photos, would spend its few channels on
    differently; it trains with the denoiser; and it costs a fraction of a VAE encoder pass per frame
    at 512² (the denoiser sees a new render every frame, the source only once)."""

    def __init__(self, config: TGDMConfig) -> None:
        super().__init__()
        factor = config.vae_scale_factor
        width = config.render_stem_channels
        self.layers = nn.Sequential(
            nn.PixelUnshuffle(factor),
            nn.Conv2d(config.condition_channels * factor * factor, width, 1),
            nn.SiLU(),
            nn.Conv2d(width, width, 3, padding=1),
        )

    def forward(self, render: torch.Tensor) -> torch.Tensor:
        return self.layers(render)


class TGDMDenoiser(nn.Module):
    """Predicts ε, v, or the clean image (as a correction of the warped source) for ``noisy`` images
    given the render I_3d, coefficients ρ̂ and source features.

    All images are in the model range -1..1, channel-first. In latent mode ``noisy`` and the source
    are (scaled) VAE latents at ``image_size``², while the render and surface maps stay pixels at
    ``pixel_size``². Classifier-free guidance drops the
    geometry (render, coefficients, target surface) with ``geometry_keep`` and the texture (source
    attention, identity token) with ``texture_keep``, per sample.
    """

    def __init__(self, config: TGDMConfig) -> None:
        super().__init__()
        self.config = config
        # Set for a few-step student (its checkpoint's record): the sampler runs it differently.
        self.distillation: Distillation | None = None
        embedding = config.embedding_dim
        groups = config.norm_groups
        channels = config.level_channels
        source_channels = config.source_level_channels
        surface = surface_channels(config.surface_frequencies) if config.surface_frequencies else 0

        self.time_embedding = nn.Sequential(
            nn.Linear(config.base_channels, embedding), nn.SiLU(), nn.Linear(embedding, embedding)
        )
        self.coefficient_embedding = nn.Linear(config.coefficient_dim, embedding)
        # Statistics from the config, not weights: they travel in the checkpoint's metadata.
        mean = torch.tensor(config.coefficient_mean or [0.0] * config.coefficient_dim)
        std = torch.tensor(config.coefficient_std or [1.0] * config.coefficient_dim)
        self.register_buffer("coefficient_mean", mean, persistent=False)
        self.register_buffer("coefficient_std", std, persistent=False)
        # What the coefficient embedding becomes when guidance drops the geometry.
        self.null_coefficients = nn.Parameter(torch.zeros(embedding))
        self.source_encoder = SourceEncoder(config)

        def attention(level: int) -> TextureAttention:
            return TextureAttention(
                channels[level], source_channels[level], config.attention_head_channels, groups, surface, config.identity_dim
            )

        self.render_stem = RenderStem(config) if config.latent else None
        condition_channels = config.render_stem_channels if config.latent else config.condition_channels
        self.input = nn.Conv2d(config.denoised_channels + condition_channels, channels[0], 3, padding=1)
        self.encoder = nn.ModuleList()
        self.encoder_attention = nn.ModuleDict()
        self.downsamples = nn.ModuleList()
        previous = channels[0]
        for level, width in enumerate(channels):
            blocks = []
            for index in range(config.blocks_per_level):
                blocks.append(ResBlock(previous, width, groups, embedding))
                previous = width
                if config.attends_at(level):
                    self.encoder_attention[f"{level}_{index}"] = attention(level)
            self.encoder.append(nn.ModuleList(blocks))
            if level < len(channels) - 1:
                self.downsamples.append(Downsample(width))

        deepest = len(channels) - 1
        self.middle_in = ResBlock(previous, previous, groups, embedding)
        self.middle_attention = attention(deepest)
        self.middle_out = ResBlock(previous, previous, groups, embedding)

        self.decoder = nn.ModuleList()
        self.decoder_attention = nn.ModuleDict()
        self.upsamples = nn.ModuleList()
        for level in reversed(range(len(channels))):
            width = channels[level]
            blocks = []
            for index in range(config.blocks_per_level):
                blocks.append(ResBlock(previous + width, width, groups, embedding))
                previous = width
                if config.attends_at(level):
                    self.decoder_attention[f"{level}_{index}"] = attention(level)
            self.decoder.append(nn.ModuleList(blocks))
            if level > 0:
                self.upsamples.append(Upsample(width))
        self.output_norm = nn.GroupNorm(groups, channels[0])
        self.output = nn.Conv2d(channels[0], config.denoised_channels, 3, padding=1)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    # source ------------------------------------------------------------------------------------
    def encode_source(self, source: torch.Tensor, source_surface: torch.Tensor | None = None) -> SourceFeatures:
        """Φ_E features of ``source`` ``[S, C, H, W]`` (-1..1; its scaled VAE latents in latent mode)
        and, with surface encodings switched on, of its surface-coordinate map ``[S, 3, H, W]``
        (0..1, zero off the face, at pixel resolution)."""
        self._check_denoised("source", source)
        levels = self.source_encoder(source)
        surfaces = None
        if self.config.surface_frequencies and source_surface is not None:
            self._check_pixels("source surface", source_surface, channels=3)
            surfaces = [surface_encoding(source_surface, self.config.surface_frequencies, r) for r in self.config.level_resolutions]
        return SourceFeatures(levels, surfaces)

    # denoising --------------------------------------------------------------------------------
    def forward(
        self,
        noisy: torch.Tensor,
        timesteps: torch.Tensor,
        render: torch.Tensor,
        coefficients: torch.Tensor,
        source: SourceFeatures,
        target_surface: torch.Tensor | None = None,
        identity: torch.Tensor | None = None,
        geometry_keep: torch.Tensor | None = None,
        texture_keep: torch.Tensor | None = None,
        warped_source: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``warped_source`` ``[B, 4, H, W]``: the source warped onto the target geometry (-1..1, 0 where
        not valid) and its validity mask (0..1), at pixel resolution; required with ``warp_condition``."""
        config = self.config
        batch = noisy.shape[0]
        self._check_denoised("noisy", noisy)
        self._check_pixels("render", render)
        if config.warp_condition:
            if warped_source is None:
                raise TalkingFaceError(
                    "this generator is conditioned on the source warped onto the target geometry: connect "
                    "Render Textured Target's warped_source and warp_mask to TGDM Sampler"
                )
            self._check_pixels("warped source", warped_source, channels=config.image_channels + 1)
        if coefficients.shape != (batch, config.coefficient_dim):
            raise TalkingFaceError(
                f"the generator expects coefficients [{batch}, {config.coefficient_dim}], got {tuple(coefficients.shape)}"
            )
        if source.batch not in (1, batch):
            raise TalkingFaceError(f"{source.batch} source images for {batch} frames: give one source or one per frame")
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(batch)
        if config.identity_dim and identity is not None and identity.shape != (batch, config.identity_dim):
            raise TalkingFaceError(f"the identity embedding must be [{batch}, {config.identity_dim}], got {tuple(identity.shape)}")

        standardised = (coefficients - self.coefficient_mean.to(coefficients.dtype)) / self.coefficient_std.to(coefficients.dtype)
        coefficient_embedding = self.coefficient_embedding(standardised)
        if geometry_keep is not None:
            keep = geometry_keep.to(noisy.dtype).view(-1, 1)
            coefficient_embedding = keep * coefficient_embedding + (1 - keep) * self.null_coefficients
            render = render * keep.view(-1, 1, 1, 1)
            if target_surface is not None:
                target_surface = target_surface * keep.view(-1, 1, 1, 1)
        time = self.time_embedding(timestep_features(timesteps, config.base_channels).to(noisy.dtype))
        embedding = F.silu(time + coefficient_embedding)

        target_surfaces = None
        if config.surface_frequencies and target_surface is not None:
            self._check_pixels("target surface", target_surface, channels=3)
            target_surfaces = [surface_encoding(target_surface, config.surface_frequencies, r) for r in config.level_resolutions]

        def attend(block: TextureAttention, h: torch.Tensor, level: int) -> torch.Tensor:
            return block(
                h,
                source.levels[level],
                texture_keep,
                None if target_surfaces is None else target_surfaces[level],
                None if source.surfaces is None else source.surfaces[level],
                identity if config.identity_dim else None,
            )

        condition = render
        if config.warp_condition:
            # The warp is the source's texture: texture guidance drops it with texture attention.
            if texture_keep is not None:
                warped_source = warped_source * texture_keep.to(noisy.dtype).view(-1, 1, 1, 1)
            condition = torch.cat([render, warped_source], dim=1)
        if self.render_stem is not None:
            condition = self.render_stem(condition)
        h = self.input(torch.cat([noisy, condition], dim=1))
        skips = []
        for level, blocks in enumerate(self.encoder):
            for index, block in enumerate(blocks):
                h = block(h, embedding)
                if f"{level}_{index}" in self.encoder_attention:
                    h = attend(self.encoder_attention[f"{level}_{index}"], h, level)
                skips.append(h)
            if level < len(self.downsamples):
                h = self.downsamples[level](h)
        deepest = len(self.encoder) - 1
        h = self.middle_out(attend(self.middle_attention, self.middle_in(h, embedding), deepest), embedding)
        for step, blocks in enumerate(self.decoder):
            level = deepest - step
            for index, block in enumerate(blocks):
                h = block(torch.cat([h, skips.pop()], dim=1), embedding)
                if f"{level}_{index}" in self.decoder_attention:
                    h = attend(self.decoder_attention[f"{level}_{index}"], h, level)
            if step < len(self.upsamples):
                h = self.upsamples[step](h)
        output = self.output(F.silu(self.output_norm(h)))
        if config.prediction_type == "sample":
            # The warped colours where the source saw the surface (zero elsewhere and when dropped).
            output = output + warped_source[:, : config.image_channels]
        return output

    def _check_pixels(self, name: str, images: torch.Tensor, channels: int | None = None) -> None:
        channels = channels or self.config.image_channels
        _check_shape(name, images, channels, self.config.pixel_size, f"images with {channels} channels")

    def _check_denoised(self, name: str, images: torch.Tensor) -> None:
        config = self.config
        what = f"VAE latents with {config.latent_channels} channels" if config.latent else f"images with {config.image_channels} channels"
        _check_shape(name, images, config.denoised_channels, config.image_size, what)


def _check_shape(name: str, images: torch.Tensor, channels: int, size: int, what: str) -> None:
    if images.ndim != 4 or images.shape[1] != channels or images.shape[2:] != (size, size):
        raise TalkingFaceError(
            f"the generator works on {size}x{size} {what}; "
            f"the {name} input is {tuple(images.shape)} (resize the inputs to {size}x{size})"
        )
