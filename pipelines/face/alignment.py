"""Similarity-aligned face crops, their 2×3 transforms, and pasting generated crops back.

A transform ``M`` ``[2, 3]`` maps frame pixels to crop pixels: ``crop = M · (x, y, 1)``, with pixel
centres at +0.5 in both (the camera's and the rasterizer's convention). Warping samples the source
image at the inverse transform with ``grid_sample``, batched over frames.
"""
from __future__ import annotations

import kornia
import torch
import torch.nn.functional as F

from ..errors import TalkingFaceError
from ..images import erode_masks

# kornia 0.8.3 moved it to kornia.geometry; ComfyUI installs may have an older kornia.
create_meshgrid = getattr(kornia.geometry, "create_meshgrid", None) or kornia.utils.create_meshgrid

FIT_CROP_SIZE = 224
# Where the neutral, frontal 3DMM at the Deep3DFaceRecon camera (224 px) puts the eye centres, the nose
# tip and the mouth corners: aligning the five keypoints here frames a face as the fitter's camera sees it.
FIT_TEMPLATE_224 = torch.tensor(
    [[75.07, 76.49], [148.93, 76.49], [112.0, 116.59], [86.49, 149.21], [137.51, 149.21]]
)


def crop_template(size: int, margin: float = 0.0) -> torch.Tensor:
    """The five-point template for a ``size``-px crop that shows ``margin`` (fraction of the
    fitting crop) more around the face on every side."""
    if margin < 0:
        raise TalkingFaceError(f"crop_margin must be at least 0, got {margin}")
    centre = FIT_CROP_SIZE / 2.0
    scale = size / FIT_CROP_SIZE / (1.0 + 2.0 * margin)
    return (FIT_TEMPLATE_224 - centre) * scale + size / 2.0


def similarity_transforms(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Least-squares similarity transforms (Umeyama, no reflection) taking ``source`` ``[B, K, 2]``
    onto ``target`` ``[K, 2]`` or ``[B, K, 2]``; returns ``[B, 2, 3]``."""
    src = source.double()
    dst = target.double().expand_as(src)
    src_mean, dst_mean = src.mean(1, keepdim=True), dst.mean(1, keepdim=True)
    src_c, dst_c = src - src_mean, dst - dst_mean
    # A 2-D similarity is z ↦ a·z + b over complex numbers: a = Σ conj(s)·d / Σ |s|².
    s = torch.complex(src_c[..., 0], src_c[..., 1])
    d = torch.complex(dst_c[..., 0], dst_c[..., 1])
    a = (s.conj() * d).sum(1) / (s.abs() ** 2).sum(1).clamp_min(1e-12)
    linear = torch.stack([torch.stack([a.real, -a.imag], -1), torch.stack([a.imag, a.real], -1)], 1)  # [B, 2, 2]
    offset = dst_mean.squeeze(1) - (linear @ src_mean.transpose(1, 2)).squeeze(-1)
    return torch.cat([linear, offset.unsqueeze(-1)], dim=2).to(source.dtype)


def invert_transforms(transforms: torch.Tensor) -> torch.Tensor:
    linear = transforms[:, :, :2]
    inverse = torch.linalg.inv(linear.double()).to(transforms.dtype)
    return torch.cat([inverse, -(inverse @ transforms[:, :, 2:])], dim=2)


def apply_transforms(transforms: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Points ``[B, K, 2]`` through ``[B, 2, 3]``."""
    return points @ transforms[:, :, :2].transpose(1, 2) + transforms[:, :, 2].unsqueeze(1)


def _sampling_grid(transforms: torch.Tensor, out_height: int, out_width: int, in_height: int, in_width: int) -> torch.Tensor:
    """grid_sample coordinates of the source pixels that output pixels come from; ``transforms`` map
    output pixels to source pixels."""
    centres = create_meshgrid(out_height, out_width, normalized_coordinates=False,
                                           device=transforms.device, dtype=transforms.dtype) + 0.5
    source = apply_transforms(transforms, centres.reshape(1, -1, 2).expand(transforms.shape[0], -1, -1))
    scale = torch.tensor([2.0 / in_width, 2.0 / in_height], device=transforms.device, dtype=transforms.dtype)
    return (source * scale - 1.0).view(-1, out_height, out_width, 2)


def warp_images(images: torch.Tensor, transforms: torch.Tensor, height: int, width: int | None = None) -> torch.Tensor:
    """Channel-last images ``[B, H, W, C]`` warped by frame→output ``transforms`` ``[B, 2, 3]`` into
    ``[B, height, width, C]`` (bilinear, zero outside). Not kornia's ``warp_affine``: it normalises the
    matrix and inverts it in float32, which moves sampling points by ~1e-5 px, enough to leak a
    trace of the pasted face into pixels that must stay exactly as they were."""
    width = width or height
    grid = _sampling_grid(invert_transforms(transforms.float()), height, width, images.shape[1], images.shape[2])
    warped = F.grid_sample(images.permute(0, 3, 1, 2).float(), grid.to(images.device), mode="bilinear",
                           padding_mode="zeros", align_corners=False)
    return warped.permute(0, 2, 3, 1)


def face_mask(render_mask: torch.Tensor, erode: int, blur: int) -> torch.Tensor:
    """A feathered mask ``[B, H, W]`` from a render mask: eroded by ``erode`` px, then blurred with a
    Gaussian of about ``blur`` px radius, so seams fall inside the face and fade out."""
    mask = render_mask.float().unsqueeze(1)
    if erode > 0:
        mask = erode_masks(mask, erode)
    if blur > 0:
        mask = kornia.filters.gaussian_blur2d(mask, (2 * blur + 1, 2 * blur + 1), (blur / 2.0, blur / 2.0),
                                              border_type="replicate")
    return mask.squeeze(1).clamp(0.0, 1.0)


def lower_face_mask(mask: torch.Tensor, landmarks: torch.Tensor, feather: int) -> torch.Tensor:
    """Keep the part of ``mask`` ``[B, H, W]`` below the nose (iBUG 68 point 29, in mask pixels),
    fading in over ``feather`` px: the region that moves when a person speaks."""
    rows = torch.arange(mask.shape[1], device=mask.device, dtype=mask.dtype).view(1, -1, 1) + 0.5
    nose = landmarks[:, 29, 1].to(mask).view(-1, 1, 1)
    return mask * ((rows - nose) / max(feather, 1) + 0.5).clamp(0.0, 1.0)


def match_colours(crops: torch.Tensor, references: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Shift and scale each channel of ``crops`` so its masked mean and spread match ``references``.
    In RGB rather than Lab: on the astronaut photo pasted onto itself under four colour shifts, Lab
    statistics (kornia.color.rgb_to_lab) recovered the face no better (in-face PSNR 29.5/31.0/26.1/27.7 dB
    against 42.0/30.8/27.4/26.9) and looked paler, with darkened hair at the mask's edge."""
    weight = mask.unsqueeze(-1).clamp_min(0)
    total = weight.sum((1, 2), keepdim=True).clamp_min(1e-6)

    def stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = (images * weight).sum((1, 2), keepdim=True) / total
        spread = (((images - mean) ** 2 * weight).sum((1, 2), keepdim=True) / total).sqrt()
        return mean, spread

    crop_mean, crop_spread = stats(crops)
    ref_mean, ref_spread = stats(references)
    return ((crops - crop_mean) * (ref_spread / crop_spread.clamp_min(1e-4)) + ref_mean).clamp(0.0, 1.0)


def paste_back(
    frames: torch.Tensor, crops: torch.Tensor, transforms: torch.Tensor, crop_masks: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Blend generated ``crops`` ``[B, s, s, 3]`` into ``frames`` ``[B, H, W, 3]`` where ``crop_masks``
    ``[B, s, s]`` says, through the frame→crop ``transforms``; returns the images and the frame masks."""
    if crops.shape[0] != frames.shape[0] or transforms.shape[0] != frames.shape[0]:
        raise TalkingFaceError(
            f"paste-back needs one crop and one transform per frame: {frames.shape[0]} frames, "
            f"{crops.shape[0]} crops, {transforms.shape[0]} transforms"
        )
    height, width = frames.shape[1:3]
    # The inverse of a frame→crop transform maps crop pixels into the frame, so warping by it
    # needs the crop→frame direction: warp_images wants output (frame) ← source (crop).
    crop_to_frame = invert_transforms(transforms.float())
    stacked = torch.cat([crops.float(), crop_masks.float().unsqueeze(-1)], dim=-1)
    warped = warp_images(stacked.to(frames.device), crop_to_frame.to(frames.device), height, width)
    mask = warped[..., 3].clamp(0.0, 1.0)
    images = frames.float() * (1.0 - mask.unsqueeze(-1)) + warped[..., :3] * mask.unsqueeze(-1)
    return images.clamp(0.0, 1.0), mask
