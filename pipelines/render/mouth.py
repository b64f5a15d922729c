"""A mouth interior drawn where the target's inner lips part: what a warp of a closed-mouth photo
cannot show. The cavity and the two rows of teeth follow the 68-point inner-lip landmarks (60-67),
so they open, stretch and roll with the lips."""
from __future__ import annotations

from dataclasses import dataclass

import torch

# iBUG-68 inner lip: left corner, upper lip left to right, right corner, lower lip right to left.
INNER_LIP_UPPER = (60, 61, 62, 63, 64)
INNER_LIP_LOWER = (60, 67, 66, 65, 64)
# Inner lips closer than this fraction of the mouth's width count as closed: nothing is drawn.
MIN_OPENING = 0.03


@dataclass(frozen=True)
class MouthLook:
    """Colours in 0..1 and teeth heights as fractions of the mouth's corner-to-corner width."""

    cavity: tuple[float, float, float] = (0.16, 0.05, 0.05)
    throat: tuple[float, float, float] = (0.05, 0.01, 0.01)
    teeth: tuple[float, float, float] = (0.86, 0.83, 0.77)
    upper_teeth: float = 0.11
    lower_teeth: float = 0.07


def mouth_opening(landmarks: torch.Tensor) -> torch.Tensor:
    """Mean gap between the upper and lower inner lip, ``[B]`` in the landmarks' units."""
    upper = landmarks[:, list(INNER_LIP_UPPER[1:4])]
    lower = landmarks[:, list(INNER_LIP_LOWER[1:4])]
    return (lower - upper).norm(dim=-1).mean(dim=1)


def lips_apart(landmarks: torch.Tensor) -> torch.Tensor:
    """``[B]`` True where the inner lips of ``landmarks [B, 68, 2]`` part: where a mouth interior is drawn."""
    width = (landmarks[:, 64] - landmarks[:, 60]).norm(dim=-1)
    opening = mouth_opening(landmarks)
    # Inner lips collapsed onto one point (width and opening 0) are closed too.
    return (opening >= MIN_OPENING * width) & (opening > 0)


def _curve_height(knots_s: torch.Tensor, knots_t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear ``t(s)`` through per-frame knots ``[B, K]`` (s ascending), at ``s [B, P]``."""
    height = torch.zeros_like(s)
    for k in range(knots_s.shape[1] - 1):
        s0, s1 = knots_s[:, k : k + 1], knots_s[:, k + 1 : k + 2]
        t0, t1 = knots_t[:, k : k + 1], knots_t[:, k + 1 : k + 2]
        weight = ((s - s0) / (s1 - s0).clamp_min(1e-6)).clamp(0, 1)
        inside = (s >= s0) & (s < s1) if k < knots_s.shape[1] - 2 else s >= s0
        height = torch.where(inside, t0 + weight * (t1 - t0), height)
    return height


def draw_mouth_interior(landmarks: torch.Tensor, size: int, look: MouthLook = MouthLook()) -> tuple[torch.Tensor, torch.Tensor]:
    """Colour ``[B, size, size, 3]`` (where the coverage is above 0; 0 elsewhere) and coverage
    ``[B, size, size]`` (anti-aliased, 0 where the lips are closed) of the mouth interior for
    68-point ``landmarks [B, 68, 2]`` in output pixels."""
    frames = landmarks.shape[0]
    device, dtype = landmarks.device, landmarks.dtype
    left, right = landmarks[:, 60], landmarks[:, 64]
    axis = right - left
    width = axis.norm(dim=-1).clamp_min(1e-6)
    along = axis / width.unsqueeze(-1)
    down = torch.stack([-along[:, 1], along[:, 0]], dim=-1)  # image v grows downwards

    def mouth_frame(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        relative = points - left.unsqueeze(1)
        return (relative * along.unsqueeze(1)).sum(-1), (relative * down.unsqueeze(1)).sum(-1)

    upper_s, upper_t = mouth_frame(landmarks[:, list(INNER_LIP_UPPER)])
    lower_s, lower_t = mouth_frame(landmarks[:, list(INNER_LIP_LOWER)])
    upper_s, order = upper_s.sort(dim=1)
    upper_t = upper_t.gather(1, order)
    lower_s, order = lower_s.sort(dim=1)
    lower_t = lower_t.gather(1, order)
    apart = lips_apart(landmarks)

    colour = torch.zeros(frames, size, size, 3, device=device, dtype=dtype)
    coverage = torch.zeros(frames, size, size, device=device, dtype=dtype)
    # Only pixels near the mouth can be covered: the work is done in the box around every open mouth
    # of the batch, a few hundred pixels of a frame's tens of thousands.
    box = _mouth_box(left, along, down, width, upper_t, lower_t, apart, size)
    if box is None:
        return colour, coverage
    rows, columns = box
    v, u = torch.meshgrid(torch.arange(rows.start, rows.stop, device=device, dtype=dtype) + 0.5,
                          torch.arange(columns.start, columns.stop, device=device, dtype=dtype) + 0.5, indexing="ij")  # fmt: skip
    pixels = torch.stack([u, v], dim=-1).view(1, -1, 2).expand(frames, -1, -1)
    s, t = mouth_frame(pixels)
    top = _curve_height(upper_s, upper_t, s)
    bottom = _curve_height(lower_s, lower_t, s)
    span = width.unsqueeze(1)
    box_coverage = (torch.minimum(t - top, bottom - t) + 0.5).clamp(0, 1)
    box_coverage = box_coverage * (torch.minimum(s, span - s) + 0.5).clamp(0, 1)
    box_coverage = box_coverage * apart.to(dtype).unsqueeze(1)

    depth = ((t - top) / (bottom - top).clamp_min(1e-3)).clamp(0, 1)
    centre_weight = 1 - (2 * s / span - 1).abs().clamp(0, 1) ** 2  # the throat is darkest mid-mouth
    palette = torch.tensor([look.cavity, look.throat, look.teeth], device=device, dtype=dtype)
    cavity = palette[0] + (palette[1] - palette[0]) * (centre_weight * (1 - (2 * depth - 1).abs())).unsqueeze(-1)
    # Teeth show less towards the corners, where the cheeks hide them.
    teeth_reach = span * (centre_weight ** 0.5)
    upper_teeth = ((look.upper_teeth * teeth_reach - (t - top)) + 0.5).clamp(0, 1)
    lower_teeth = ((look.lower_teeth * teeth_reach - (bottom - t)) + 0.5).clamp(0, 1)
    teeth = torch.maximum(upper_teeth, lower_teeth).unsqueeze(-1)
    box_shape = (frames, rows.stop - rows.start, columns.stop - columns.start)
    box_colour = torch.where((box_coverage > 0).unsqueeze(-1), cavity * (1 - teeth) + palette[2] * teeth, 0.0)
    colour[:, rows, columns] = box_colour.view(*box_shape, 3)
    coverage[:, rows, columns] = box_coverage.view(box_shape)
    return colour, coverage


def _mouth_box(left: torch.Tensor, along: torch.Tensor, down: torch.Tensor, width: torch.Tensor,
               upper_t: torch.Tensor, lower_t: torch.Tensor, apart: torch.Tensor, size: int) -> tuple[slice, slice] | None:
    """The rows and columns of the pixels any open mouth of the batch may cover, or None when none is open.

    Coverage is above 0 only for mouth coordinates ``-0.5 < s < width + 0.5`` and ``top - 0.5 < t <
    bottom + 0.5``, and the lip curves lie between their knots' heights and 0 (outside the knots a
    curve is 0): a rectangle in the mouth's frame, whose corners bound the box."""
    if not bool(apart.any()):
        return None
    s_range = torch.stack([torch.full_like(width, -0.5), width + 0.5], dim=1)
    t_range = torch.stack([upper_t.amin(1).clamp(max=0) - 0.5, lower_t.amax(1).clamp(min=0) + 0.5], dim=1)
    corners = (left.unsqueeze(1).unsqueeze(1) + s_range.view(-1, 2, 1, 1) * along.view(-1, 1, 1, 2)
               + t_range.view(-1, 1, 2, 1) * down.view(-1, 1, 1, 2))[apart].view(-1, 2)  # fmt: skip
    if not bool(torch.isfinite(corners).all()):
        return slice(0, size), slice(0, size)
    # Pixel centres are at index + 0.5; a pixel's margin more on each side covers rounding.
    low = (corners.amin(0) - 1.5).floor().clamp(0, size).int().tolist()
    high = (corners.amax(0) + 1.5).ceil().clamp(0, size).int().tolist()
    if high[0] <= low[0] or high[1] <= low[1]:
        return None
    return slice(low[1], high[1]), slice(low[0], high[0])
