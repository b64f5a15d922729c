"""Gaze from the eye landmarks: where the dark iris sits between the eyelid landmarks.

The 68 iBUG points outline each eye (36–41, 42–47) but have no pupil. Inside the ellipse those six
points span, the iris and pupil are the darkest pixels; their darkness-weighted centroid, relative
to the eye's centre and measured in how far the iris travels per unit rotation (a fraction of the
eye's half width), gives the eyeball's rotation: sin(yaw) = sideways offset, sin(pitch) = upward.
"""
from __future__ import annotations

import torch

EYES = ((36, 37, 38, 39, 40, 41), (42, 43, 44, 45, 46, 47))
# How far the iris centre moves, in eye half-widths, per unit sine of eyeball rotation: sideways it
# travels about half the opening; up and down the lids hide part of the motion. Calibrated on the
# demo face's eyeballs (rendered with known gaze), whose proportions follow human eyes.
HORIZONTAL_TRAVEL = 0.55
VERTICAL_TRAVEL = 0.4
DARKNESS_POWER = 4.0


def estimate_gaze(crops: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
    """Gaze ``[T, 2]`` (pitch up, yaw towards image right; radians, both eyes averaged) from crops
    ``[T, S, S, 3]`` and their 68 landmarks ``[T, 68, 2]`` in crop pixels."""
    frames, size = crops.shape[0], crops.shape[1]
    luminance = crops.float() @ torch.tensor([0.299, 0.587, 0.114], device=crops.device)  # [T, S, S]
    coords = torch.arange(size, device=crops.device, dtype=torch.float32) + 0.5
    grid_y, grid_x = torch.meshgrid(coords, coords, indexing="ij")
    angles = []
    for eye in EYES:
        points = landmarks[:, list(eye)].float()
        inner_outer = points[:, 3] - points[:, 0]
        half_width = inner_outer.norm(dim=-1).clamp_min(1.0) / 2.0  # [T]
        centre = points.mean(1)  # [T, 2]
        lids = (points[:, [1, 2]].mean(1) - points[:, [5, 4]].mean(1)).norm(dim=-1)
        half_height = (lids / 2.0).clamp_min(0.5)
        dx = grid_x.unsqueeze(0) - centre[:, 0].view(-1, 1, 1)
        dy = grid_y.unsqueeze(0) - centre[:, 1].view(-1, 1, 1)
        inside = ((dx / half_width.view(-1, 1, 1)) ** 2 + (dy / half_height.view(-1, 1, 1)) ** 2) <= 1.0
        # Darkness relative to the brightest pixel of the opening (the sclera), so lighting does not matter.
        masked = torch.where(inside, luminance, torch.zeros_like(luminance))
        brightest = masked.flatten(1).amax(1).clamp_min(1e-3).view(-1, 1, 1)
        weight = torch.where(inside, (1.0 - luminance / brightest).clamp_min(0.0) ** DARKNESS_POWER,
                             torch.zeros_like(luminance))
        total = weight.flatten(1).sum(1).clamp_min(1e-6)
        offset_x = (weight * dx).flatten(1).sum(1) / total
        offset_y = (weight * dy).flatten(1).sum(1) / total
        yaw = torch.asin((offset_x / (HORIZONTAL_TRAVEL * half_width)).clamp(-1.0, 1.0))
        pitch = torch.asin((-offset_y / (VERTICAL_TRAVEL * half_width)).clamp(-1.0, 1.0))
        angles.append(torch.stack([pitch, yaw], dim=-1))
    gaze = torch.stack(angles).mean(0)
    return torch.where(torch.isfinite(gaze), gaze, torch.zeros_like(gaze)).view(frames, 2)
