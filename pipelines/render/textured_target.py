"""Textured reenactment with no trained weights (the Face2Face recipe): the source photo warped
onto each target frame's geometry, the uncovered parts of the face filled with the colour-matched
3DMM render, a drawn mouth interior where the lips part, and the source crop around the face."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..images import resize_images
from ..morphable.coefficients import FaceCoefficients
from .mouth import MouthLook, draw_mouth_interior
from .rasterizer import CoveredPixels
from .renderer import RenderMaps
from .texture_transfer import SourceView, TextureTransfer

DRAWN_MOUTH = MouthLook()


@dataclass
class TexturedTarget:
    """Channel-last maps of one batch of target frames, at the renderer's size."""

    image: torch.Tensor  # [B, H, W, 3] the reenacted crop
    mask: torch.Tensor  # [B, H, W] the face and the mouth interior: what Paste Back should paste
    warped: torch.Tensor  # [B, H, W, 3] the (relit) warped source alone, 0 where it is not valid
    valid: torch.Tensor  # [B, H, W] where the source saw the target's surface
    visible_fraction: torch.Tensor  # [B] share of the target face the source saw

    @staticmethod
    def concat(parts: list[TexturedTarget]) -> TexturedTarget:
        return TexturedTarget(*(torch.cat([getattr(part, name) for part in parts]) for name in TexturedTarget.__dataclass_fields__))


@torch.no_grad()
def render_textured_target(
    transfer: TextureTransfer, source: SourceView, target: FaceCoefficients, relight: bool = True,
    mouth: MouthLook | None = DRAWN_MOUTH,
) -> TexturedTarget:
    """One batch of targets (the source has one frame, or one per target frame). ``mouth=None``
    keeps what the warp carries into the mouth (for a photo that shows its teeth)."""
    return textured_from_render(transfer, source, target, *transfer.renderer.render_with_coverage(target), relight, mouth)


@torch.no_grad()
def textured_from_render(
    transfer: TextureTransfer, source: SourceView, target: FaceCoefficients, maps: RenderMaps, covered: CoveredPixels,
    vertices: torch.Tensor, relight: bool = True, mouth: MouthLook | None = DRAWN_MOUTH,
) -> TexturedTarget:
    """:func:`render_textured_target` on a render of ``target`` already made
    (``renderer.render_with_coverage``), for callers that need the render's maps too (TGDM's I_3d)."""
    normals = maps.normals.view(-1, 3).index_select(0, covered.pixels).T
    warped = transfer.warp(source, target, relight, covered, vertices, normals)
    valid = warped.valid.unsqueeze(-1)
    # Per-frame, per-channel gain from the render's colours to the photo's, over what both show.
    seen = valid * maps.image
    gain = (warped.image.sum(dim=(1, 2)) / seen.sum(dim=(1, 2)).clamp_min(1e-6)).clamp(0.2, 5.0)
    filled = (maps.image * gain.view(-1, 1, 1, 3)).clamp(0, 1)
    face = warped.image + filled * (1 - valid)
    mask = warped.coverage
    if mouth is not None:
        colour, alpha = draw_mouth_interior(maps.landmarks, transfer.size, mouth)
        face = face * (1 - alpha.unsqueeze(-1)) + colour * alpha.unsqueeze(-1)
        mask = torch.maximum(mask, alpha)
    surroundings = source.images.permute(0, 2, 3, 1)
    if surroundings.shape[1] != transfer.size:
        surroundings = resize_images(surroundings, transfer.size)
    image = face * mask.unsqueeze(-1) + surroundings * (1 - mask.unsqueeze(-1))
    visible = warped.valid.sum(dim=(1, 2)) / warped.coverage.sum(dim=(1, 2)).clamp_min(1.0)
    return TexturedTarget(image.clamp(0, 1), mask, warped.image, warped.valid, visible)
