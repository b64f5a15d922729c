"""Textured reenactment with no trained weights (the Face2Face recipe): the source photo warped
onto each target frame's geometry, the parts of the face the photo did not show filled from the
nearest parts it did, a drawn mouth interior where the lips part, and the source crop around the face."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..images import resize_images
from ..morphable.coefficients import FaceCoefficients
from ..video import frame_chunks
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


def fill_from_valid(image: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Every pixel of ``image [B, H, W, C]`` given a colour from the ``valid [B, H, W]`` ones near it
    (push-pull: averages of valid pixels over a pyramid, the finest level that has any wins), so a
    thin ring at the silhouette takes the neighbouring skin and a large unseen area a smooth blend."""
    colour = (image * valid.unsqueeze(-1)).permute(0, 3, 1, 2)
    weight = valid.unsqueeze(1).to(image.dtype)
    levels = [(colour, weight)]
    while min(colour.shape[-2:]) > 1:
        colour, weight = F.avg_pool2d(colour, 2, ceil_mode=True), F.avg_pool2d(weight, 2, ceil_mode=True)
        levels.append((colour, weight))
    filled = levels[-1][0] / levels[-1][1].clamp_min(1e-8)
    for colour, weight in reversed(levels[:-1]):
        coarse = F.interpolate(filled, size=colour.shape[-2:], mode="bilinear", align_corners=False)
        own = colour / weight.clamp_min(1e-8)
        filled = torch.where(weight > 0, own, coarse)
    return filled.permute(0, 2, 3, 1)


@torch.no_grad()
def render_textured_target(
    transfer: TextureTransfer, source: SourceView, target: FaceCoefficients, relight: bool = True,
    mouth: MouthLook | None = DRAWN_MOUTH, driving: SourceView | None = None,
) -> TexturedTarget:
    """One batch of targets (the source has one frame, or one per target frame). ``mouth=None``
    keeps what the warp carries into the mouth (for a photo that shows its teeth). With ``driving``
    (the driving frames and their coefficients, one per target frame) the mouth interior is the
    driving frame's own, warped onto the target's lips, and drawn only where the driver did not show it."""
    return textured_from_render(transfer, source, target, *transfer.renderer.render_with_coverage(target), relight,
                                mouth, driving)


@torch.no_grad()
def textured_from_render(
    transfer: TextureTransfer, source: SourceView, target: FaceCoefficients, maps: RenderMaps, covered: CoveredPixels,
    vertices: torch.Tensor, relight: bool = True, mouth: MouthLook | None = DRAWN_MOUTH,
    driving: SourceView | None = None,
) -> TexturedTarget:
    """:func:`render_textured_target` on a render of ``target`` already made
    (``renderer.render_with_coverage``), for callers that need the render's maps too (TGDM's I_3d)."""
    normals = maps.normals.view(-1, 3).index_select(0, covered.pixels).T
    warped = transfer.warp(source, target, relight, covered, vertices, normals)
    valid = warped.valid.unsqueeze(-1)
    face = warped.image + fill_from_valid(warped.image, warped.valid) * (1 - valid)
    mask = warped.coverage
    if mouth is not None or driving is not None:
        colour, alpha = draw_mouth_interior(maps.landmarks, transfer.size, mouth or DRAWN_MOUTH)
        if driving is not None:
            # The driver's lips part as the target's do, so its photo shows the teeth and tongue there.
            driver = transfer.warp(driving, target, relight, covered, vertices, normals)
            seen = driver.valid.unsqueeze(-1)
            colour = driver.image * seen + colour * (1 - seen)
        face = face * (1 - alpha.unsqueeze(-1)) + colour * alpha.unsqueeze(-1)
        mask = torch.maximum(mask, alpha)
    surroundings = source.images.permute(0, 2, 3, 1)
    if surroundings.shape[1] != transfer.size:
        surroundings = resize_images(surroundings, transfer.size)
    image = face * mask.unsqueeze(-1) + surroundings * (1 - mask.unsqueeze(-1))
    visible = warped.valid.sum(dim=(1, 2)) / warped.coverage.sum(dim=(1, 2)).clamp_min(1.0)
    return TexturedTarget(image.clamp(0, 1), mask, warped.image, warped.valid, visible)


def render_textured_frames(
    transfer: TextureTransfer, source_coefficients: FaceCoefficients, source_images: torch.Tensor,
    coefficients: FaceCoefficients, relight: bool, mouth: MouthLook | None, batch_size: int,
    driving_images: torch.Tensor | None = None, driving_coefficients: FaceCoefficients | None = None,
    on_frames: Callable[[int], None] | None = None,
) -> TexturedTarget:
    """:func:`render_textured_target` over a video, ``batch_size`` frames at a time on the renderer's
    device, the results on the CPU. One source image serves every frame, else one per frame; the
    optional driving crops (one per frame) lend their mouth. ``on_frames(done)`` runs after every batch."""
    device = transfer.renderer.model.mean_shape.device

    def view(coeffs: FaceCoefficients, images: torch.Tensor):
        return transfer.prepare_source(coeffs.to(device), images.to(device))

    shared = view(source_coefficients, source_images) if source_images.shape[0] == 1 else None
    parts = []
    for chunk in frame_chunks(coefficients.frames, batch_size):
        source = shared if shared is not None else view(source_coefficients[chunk], source_images[chunk])
        driving = None if driving_images is None else view(driving_coefficients[chunk], driving_images[chunk])
        part = render_textured_target(transfer, source, coefficients[chunk].to(device), relight, mouth, driving)
        parts.append(TexturedTarget(*(value.cpu() for value in vars(part).values())))
        if on_frames is not None:
            on_frames(chunk.stop)
    return TexturedTarget.concat(parts)
