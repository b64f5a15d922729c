"""Masks of the lower face for dubbing, from iBUG-68 landmarks in crop pixels (pixel centres at +0.5).

The *input mask* hides what the dubbing model regenerates: every crop row from a line under the nose
down (as MuseTalk masks the lower half of the face box), its top edge adjustable. The *paste mask*
is narrower: only the mouth and jaw region (between the jaw lines of the template and of the new
mouth, below the top edge) goes back into the frame, feathered, so the background, neck and collar
of the template frame stay untouched.
"""
from __future__ import annotations

import torch

from ..errors import TalkingFaceError
from ..images import dilate_masks
from .alignment import face_mask

NOSE_TIP = 30
JAW = slice(0, 17)
# How far the mask's top edge may move, as a fraction of the crop height.
TOP_SHIFT_RANGE = (-0.25, 0.25)


def mask_top_rows(landmarks: torch.Tensor, size: int, top_shift: float) -> torch.Tensor:
    """The top edge ``[B]`` in crop pixels: the nose tip's row moved by ``top_shift`` × crop height
    (negative: higher, more of the face regenerated; positive: lower, more kept)."""
    low, high = TOP_SHIFT_RANGE
    if not low <= top_shift <= high:
        raise TalkingFaceError(f"mask_top_shift must be in {low}..{high} (a fraction of the face crop's height), got {top_shift}")
    return landmarks[:, NOSE_TIP, 1] + top_shift * size


def lower_face_input_mask(landmarks: torch.Tensor, size: int, top_shift: float = 0.0) -> torch.Tensor:
    """``[B, size, size]``: 1 on every row below the top edge (what the model must paint), else 0."""
    rows = torch.arange(size, device=landmarks.device, dtype=landmarks.dtype) + 0.5
    top = mask_top_rows(landmarks, size, top_shift)
    return (rows.view(1, -1, 1) >= top.view(-1, 1, 1)).to(landmarks.dtype).expand(-1, -1, size).contiguous()


def _curve_rows(curve: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """Rows ``[B, S]`` of a curve ``[B, K, 2]`` (points left to right) at pixel ``columns`` ``[S]``,
    linearly interpolated; outside the curve's x range: -inf (no region)."""
    order = curve[..., 0].argsort(dim=1)
    xs = curve[..., 0].gather(1, order).contiguous()
    ys = curve[..., 1].gather(1, order)
    query = columns.expand(curve.shape[0], -1).contiguous()
    right = torch.searchsorted(xs, query).clamp(1, xs.shape[1] - 1)
    left = right - 1
    x0, x1 = xs.gather(1, left), xs.gather(1, right)
    y0, y1 = ys.gather(1, left), ys.gather(1, right)
    weight = ((query - x0) / (x1 - x0).clamp_min(1e-6)).clamp(0, 1)
    rows = y0 + weight * (y1 - y0)
    inside = (query >= xs[:, :1]) & (query <= xs[:, -1:])
    return torch.where(inside, rows, torch.full_like(rows, -float("inf")))


def mouth_paste_mask(
    template_landmarks: torch.Tensor, new_jaw: torch.Tensor, size: int, top_shift: float = 0.0, feather: int = 6
) -> torch.Tensor:
    """``[B, size, size]`` in 0..1: below the top edge and above the lower of the two jaw lines (the
    template's 68 landmarks ``[B, 68, 2]`` and the new jaw ``[B, 17, 2]``), grown and faded over about
    ``feather`` px so the seam is invisible."""
    columns = torch.arange(size, device=template_landmarks.device, dtype=template_landmarks.dtype) + 0.5
    bottom = torch.maximum(_curve_rows(template_landmarks[:, JAW], columns),
                           _curve_rows(new_jaw.to(template_landmarks), columns))  # [B, S]
    top = mask_top_rows(template_landmarks, size, top_shift)
    rows = columns.view(1, -1, 1)
    region = (rows >= top.view(-1, 1, 1)) & (rows <= bottom.unsqueeze(1) + feather / 2)
    region = region.to(template_landmarks.dtype)
    if feather > 0:
        grow = max(feather // 2, 1)
        region = dilate_masks(region.unsqueeze(1), grow).squeeze(1)
    return face_mask(region, erode=0, blur=feather)
