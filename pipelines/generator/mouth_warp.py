"""The dubbing denoiser's base image: the reference frame whose mouth is nearest the target's, warped by a
thin-plate spline from its lip and jaw landmarks onto the target's, inside the template's masked lower face.

With ``reference_base`` the denoiser predicts the clean frame as this base plus a learned correction (as
TGDM predicts a correction of the warped source): an untrained model already paints a real mouth of the
same person in the target's shape, and training only has to fix what a warp cannot (teeth a closed
reference never showed, lips stretched across an opening). The warp is differentiable in the target
landmarks, so in joint training the image loss reaches the landmark model through it as well as
through the TalkFormer tokens.

Coordinates are crop coordinates in -1..1 (x right, y down), as :func:`.dubbing.crop_coordinates` gives
and ``grid_sample(align_corners=False)`` reads.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .talkformer import pixel_grid

# Smoothing of the spline (in units of the kernel r² log r² over -1..1 coordinates): the inner lips of a
# closed mouth coincide, and a reference's open lips must both land there; an interpolating spline would
# fold around such a pair, a slightly smoothing one squeezes the opening shut.
SPLINE_SMOOTHING = 0.01


def nearest_reference(target: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """``[B]`` index of the reference whose mouth shape is nearest each target's: landmarks ``[B, P, 2]`` and
    ``[B, K, P, 2]``, compared after removing each set's centroid (the warp takes care of where it sits)."""
    target = target - target.mean(-2, keepdim=True)
    references = references - references.mean(-2, keepdim=True)
    return (references - target.unsqueeze(1)).pow(2).sum((-1, -2)).argmin(1)


def _kernel(squared_distance: torch.Tensor) -> torch.Tensor:
    return squared_distance * torch.log(squared_distance.clamp_min(1e-12))


def spline_grid(target: torch.Tensor, source: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``grid_sample`` grid ``[B, height, width, 2]``: for every pixel of the target frame, where to read the
    source frame, from the thin-plate spline taking target points ``[B, P, 2]`` to source points."""
    dtype = target.dtype
    target, source = target.double(), source.double()
    batch, points = target.shape[:2]
    kernel = _kernel(torch.cdist(target, target).pow(2))
    kernel = kernel + SPLINE_SMOOTHING * torch.eye(points, dtype=kernel.dtype, device=kernel.device)
    affine = torch.cat([torch.ones_like(target[..., :1]), target], dim=-1)  # [B, P, 3]
    system = torch.zeros(batch, points + 3, points + 3, dtype=kernel.dtype, device=kernel.device)
    system[:, :points, :points] = kernel
    system[:, :points, points:] = affine
    system[:, points:, :points] = affine.transpose(1, 2)
    right = torch.cat([source, torch.zeros(batch, 3, 2, dtype=source.dtype, device=source.device)], dim=1)
    solution = torch.linalg.solve(system, right)  # [B, P + 3, 2]
    pixels = pixel_grid(height, width, target.device, target.dtype).unsqueeze(0).expand(batch, -1, -1)
    bend = _kernel(torch.cdist(pixels, target).pow(2)) @ solution[:, :points]
    linear = torch.cat([torch.ones_like(pixels[..., :1]), pixels], dim=-1) @ solution[:, points:]
    return (bend + linear).reshape(batch, height, width, 2).to(dtype)


def warp_to_landmarks(images: torch.Tensor, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``images [B, C, H, W]`` with landmarks ``source [B, P, 2]`` moved so those points sit at ``target``."""
    grid = spline_grid(target, source, images.shape[-2], images.shape[-1])
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def reference_base(
    masked: torch.Tensor,
    mask: torch.Tensor,
    landmarks: torch.Tensor,
    reference_images: torch.Tensor,
    reference_landmarks: torch.Tensor,
    landmark_keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """The base ``[B, C, S, S]``: ``masked`` (the template outside ``mask`` ``[B, 1, S, S]``) and, inside it,
    the reference nearest in mouth shape warped onto the target ``landmarks``. References ``[B, K, C, S, S]``
    with landmarks ``[B, K, P, 2]``. Where ``landmark_keep`` is 0 the target landmarks are not used at
    all: the first reference as it is (the ablation and the landmark-free half of guidance)."""
    batch = masked.shape[0]
    rows = torch.arange(batch, device=masked.device)
    chosen = nearest_reference(landmarks.detach(), reference_landmarks.detach())
    warped = warp_to_landmarks(reference_images[rows, chosen], reference_landmarks[rows, chosen], landmarks)
    if landmark_keep is not None:
        keep = (landmark_keep > 0.5).view(-1, 1, 1, 1)
        warped = torch.where(keep, warped, reference_images[:, 0])
    return masked * (1 - mask) + warped * mask
