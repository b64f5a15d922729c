"""What the TGDM generator is conditioned on, and how ComfyUI-style tensors become its inputs: the
coefficient rows it reads, channel-first images in its range, the warped-source condition, and the
error for a latent-mode generator without its VAE. Shared by the sampler and the trainers."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import TalkingFaceError
from ..morphable.coefficients import CoefficientDims, FaceCoefficients
from .config import TGDMConfig
from .vae import VAE_FOLDER_HINT


@dataclass
class GeneratorInputs:
    """Everything the generator is conditioned on, ComfyUI-style channel-last images in 0..1.

    ``source`` is one image or one per frame; ``renders`` (I_3d) and ``coefficients`` (ρ̂, flat 257 +
    gaze) have one row per output frame. Surface maps are the renderer's surface coordinates of the
    target renders and of a render of the source's own coefficients. All images are at the
    generator's ``pixel_size`` (its latent size × the VAE's factor in latent mode)."""

    source: torch.Tensor  # [1 or T, H, W, C]
    renders: torch.Tensor  # [T, H, W, C]
    coefficients: torch.Tensor  # [T, D]
    target_surfaces: torch.Tensor | None = None  # [T, H, W, 3]
    source_surface: torch.Tensor | None = None  # [1 or T, H, W, 3]
    identity: torch.Tensor | None = None  # [1 or T, identity_dim]
    warped_sources: torch.Tensor | None = None  # [T, H, W, C] the source on each target's geometry, 0 where not valid
    warp_masks: torch.Tensor | None = None  # [T, H, W] 1 where the source saw the target's surface

    @property
    def frames(self) -> int:
        return self.renders.shape[0]

    def check(self, config: TGDMConfig) -> None:
        frames, size = self.frames, config.pixel_size
        expected = (size, size, config.image_channels)

        def need(name: str, value: torch.Tensor | None, shape: tuple[int, ...], per_frame_or_one: bool) -> None:
            if value is None:
                return
            rows_ok = value.shape[0] in ((1, frames) if per_frame_or_one else (frames,))
            if value.ndim != len(shape) + 1 or tuple(value.shape[1:]) != shape or not rows_ok:
                rows = "1 or " if per_frame_or_one else ""
                raise TalkingFaceError(
                    f"{name} must be [{rows}{frames}, {', '.join(map(str, shape))}] for this generator, got {tuple(value.shape)}"
                )

        if frames == 0:
            raise TalkingFaceError("there are no frames to generate (the render batch is empty)")
        need("the I_3d render", self.renders, expected, False)
        need("the source image", self.source, expected, True)
        need("the coefficients", self.coefficients, (config.coefficient_dim,), False)
        need("the target surface map", self.target_surfaces, (size, size, 3), False)
        need("the source surface map", self.source_surface, (size, size, 3), True)
        if config.identity_dim:
            need("the identity embedding", self.identity, (config.identity_dim,), True)
        if config.warp_condition:
            if self.warped_sources is None or self.warp_masks is None:
                raise TalkingFaceError(
                    "this generator is conditioned on the source warped onto each target: give the warped sources "
                    "and their masks (Render Textured Target's warped_source and warp_mask)"
                )
            need("the warped source", self.warped_sources, expected, False)
            need("the warp mask", self.warp_masks, (size, size), False)


def flat_coefficients(coeffs: FaceCoefficients) -> torch.Tensor:
    """ρ̂ as the generator reads it: the 257-d Deep3DFaceRecon vector and gaze, ``[T, 259]``."""
    return torch.cat([coeffs.to_flat(), coeffs.gaze], dim=1)


def generator_rows_to_coefficients(rows: torch.Tensor, dims: CoefficientDims) -> FaceCoefficients:
    """The inverse of :func:`flat_coefficients`."""
    return FaceCoefficients.from_flat(rows[:, : dims.flat_size], rows[:, dims.flat_size :], dims)


def to_model_images(images: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """ComfyUI IMAGE ``[B, H, W, C]`` 0..1 → model range ``[B, C, H, W]`` -1..1."""
    return (images.to(device=device, dtype=torch.float32).permute(0, 3, 1, 2) * 2 - 1).to(dtype)


def to_channels_first(maps: torch.Tensor | None, device: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
    return None if maps is None else maps.to(device=device, dtype=dtype).permute(0, 3, 1, 2)


def warp_condition(
    warped: torch.Tensor | None, valid: torch.Tensor | None, device: torch.device, dtype: torch.dtype
) -> torch.Tensor | None:
    """The denoiser's ``warped_source`` input from channel-last warped images (0..1) and masks
    ``[B, H, W]``: ``[B, C + 1, H, W]``, the colours in the model range and 0 wherever not valid."""
    if warped is None or valid is None:
        return None
    mask = valid.to(device=device, dtype=torch.float32).unsqueeze(1)
    colours = to_model_images(warped, device, torch.float32) * mask
    return torch.cat([colours, mask], dim=1).to(dtype)


def missing_vae_error(config: TGDMConfig, generator_name: str = "this generator") -> TalkingFaceError:
    return TalkingFaceError(
        f"{generator_name} works on latents of the {config.vae} VAE and needs it to encode the source and decode "
        f"the frames: put the VAE file (for SD1.5 e.g. vae-ft-mse-840000-ema-pruned.safetensors) into "
        f"{VAE_FOLDER_HINT} and pick it in Load Generator, or connect a Load VAE node"
    )
