"""Helpers for ComfyUI IMAGE batches shared by every stage."""
from __future__ import annotations

import kornia
import torch
import torch.nn.functional as F

from .errors import TalkingFaceError


def normalize_image_channels(images: torch.Tensor, name: str = "the image") -> tuple[torch.Tensor, str | None]:
    """IMAGE with 3 channels; grayscale is repeated and RGBA drops alpha. Returns a note when converted."""
    if images.ndim == 3:
        images = images.unsqueeze(-1)
    if images.ndim != 4:
        raise TalkingFaceError(
            f"{name} must be an IMAGE batch [frames, height, width, channels], got {tuple(images.shape)}"
        )
    channels = images.shape[-1]
    if channels == 3:
        return images, None
    if channels == 1:
        return images.expand(-1, -1, -1, 3), f"{name} is grayscale; it was repeated into 3 channels"
    if channels == 4:  # RGBA from LoadImage with transparency: the colour is what the models need
        return images[..., :3], f"{name} has an alpha channel; it was ignored"
    raise TalkingFaceError(f"{name} has {channels} channels; an IMAGE needs 1, 3 or 4 channels")


def check_image_range(images: torch.Tensor, name: str = "the image") -> None:
    """Refuse pixel values outside an IMAGE's 0..1 floats (8- or 16-bit values passed on unscaled)."""
    if not images.is_floating_point():
        raise TalkingFaceError(
            f"the pixel values of {name} are {images.dtype}; an IMAGE holds floats 0..1: divide 8-bit pixels by 255 and 16-bit "
            "ones by 65535 (ComfyUI's Load Image does this)")
    if images.numel() and float(images.amax()) > 1.0 + 1e-3:
        peak = float(images.amax())
        scale = "65535 (16-bit)" if peak > 255.5 else "255 (8-bit)"
        raise TalkingFaceError(
            f"the pixel values of {name} go up to {peak:g}; an IMAGE holds floats 0..1: divide by {scale} "
            "(ComfyUI's Load Image does this)")


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Channel-last images ``[B, H, W, C]`` in 0..1 resampled to ``size``², antialiased when shrinking."""
    moved = images.permute(0, 3, 1, 2).float()
    resized = F.interpolate(moved, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resized.clamp(0, 1).permute(0, 2, 3, 1)


def erode_masks(masks: torch.Tensor, radius: int) -> torch.Tensor:
    """Channel-first masks ``[B, C, H, W]`` shrunk by ``radius`` px (a square window); the image's
    border is not an edge (nothing erodes in from outside the image)."""
    return kornia.morphology.erosion(masks, masks.new_ones(2 * radius + 1, 2 * radius + 1))


def dilate_masks(masks: torch.Tensor, radius: int) -> torch.Tensor:
    """Channel-first maps ``[B, C, H, W]`` grown by ``radius`` px: each pixel the largest value within
    a square window (outside the image counts for nothing)."""
    return kornia.morphology.dilation(masks, masks.new_ones(2 * radius + 1, 2 * radius + 1))
