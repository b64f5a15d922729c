"""A coefficient sequence rendered as displayable frames, batch by batch."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..morphable.coefficients import FaceCoefficients
from ..video import frame_chunks
from .renderer import FaceRenderer, normals_to_image


@dataclass
class RenderedFrames:
    """Channel-last float maps on the CPU, one row per coefficient row."""

    image: torch.Tensor  # [T, H, W, 3] I_3d
    mask: torch.Tensor  # [T, H, W]
    normals: torch.Tensor  # [T, H, W, 3] normals mapped to 0..1, black background
    surface: torch.Tensor  # [T, H, W, 3] surface coordinates


def render_frames(
    renderer: FaceRenderer, coefficients: FaceCoefficients, batch_size: int,
    on_frames: Callable[[int], None] | None = None,
) -> RenderedFrames:
    """Render ``coefficients`` ``batch_size`` frames at a time on the renderer's device;
    ``on_frames(done)`` runs after every batch (it may raise to stop)."""
    device = renderer.model.mean_shape.device
    parts: dict[str, list[torch.Tensor]] = {"image": [], "mask": [], "normals": [], "surface": []}
    for chunk in frame_chunks(coefficients.frames, batch_size):
        with torch.inference_mode():
            maps = renderer.render(coefficients[chunk].to(device))
        parts["image"].append(maps.image.cpu())
        parts["mask"].append(maps.mask.cpu())
        parts["normals"].append(normals_to_image(maps.normals, maps.mask).cpu())
        parts["surface"].append(maps.surface.cpu())
        if on_frames is not None:
            on_frames(chunk.stop)
    return RenderedFrames(**{key: torch.cat(values).float() for key, values in parts.items()})
