"""Temporal smoothing of per-frame tracks (keypoints, crop boxes, coefficients): the One-Euro filter.

One-Euro (Casiez et al. 2012) is a low-pass filter whose cut-off rises with the signal's speed: slow
jitter is removed, fast motion passes with little lag. ``strength`` 0 leaves the track as it is; 1
smooths a 25 fps track with a 0.5 Hz cut-off at rest.
"""
from __future__ import annotations

import math

import torch

from ..errors import TalkingFaceError

MIN_CUTOFF_AT_FULL_STRENGTH = 0.5  # Hz
SPEED_COEFFICIENT = 2.0  # Hz per (scale units per second)
DERIVATIVE_CUTOFF = 1.0  # Hz


def _alpha(cutoff: torch.Tensor | float, fps: float) -> torch.Tensor | float:
    tau = 1.0 / (2.0 * math.pi * cutoff)
    return 1.0 / (1.0 + tau * fps)


def one_euro(track: torch.Tensor, fps: float, strength: float, scale: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Filter ``track`` ``[T, ...]`` along frames. ``scale`` (broadcast to a frame) is the typical size of
    the values, so the speed that opens the filter is measured in the track's own units."""
    if not 0.0 <= strength <= 1.0:
        raise TalkingFaceError(f"smoothing strength must be between 0 and 1, got {strength}")
    if fps <= 0:
        raise TalkingFaceError(f"fps must be positive, got {fps}")
    if strength == 0.0 or track.shape[0] < 2:
        return track.clone()
    # Strength 1 → 0.5 Hz at rest; towards 0 the cut-off goes to the Nyquist rate (no smoothing).
    min_cutoff = MIN_CUTOFF_AT_FULL_STRENGTH / strength ** 2
    values = track.double()
    scale = torch.as_tensor(scale, dtype=torch.float64, device=track.device)
    out = torch.empty_like(values)
    out[0] = values[0]
    derivative = torch.zeros_like(values[0])
    alpha_d = _alpha(DERIVATIVE_CUTOFF, fps)
    for t in range(1, values.shape[0]):
        raw_derivative = (values[t] - out[t - 1]) * fps / scale
        derivative = derivative + alpha_d * (raw_derivative - derivative)
        cutoff = min_cutoff + SPEED_COEFFICIENT * derivative.abs()
        alpha = _alpha(cutoff, fps)
        out[t] = out[t - 1] + alpha * (values[t] - out[t - 1])
    return out.to(track.dtype)
