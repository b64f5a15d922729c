"""Temporal smoothing of per-frame tracks (keypoints, crop boxes, coefficients): the One-Euro filter.

One-Euro (Casiez et al. 2012) is a low-pass filter whose cut-off rises with the signal's speed: slow
jitter is removed, fast motion passes with little lag.

A smoothing ``strength`` s (0..1) means one thing everywhere in the pack: a cut-off of
``0.5 Hz / s²`` (s = 1: 0.5 Hz, s = 0.5: 2 Hz, s → 0: none) in seconds of the video, whatever its frame
rate. One-Euro uses it as its cut-off at rest; the joint video fit's landmark-acceleration penalty as
its fixed cut-off (:func:`acceleration_weight`).
"""
from __future__ import annotations

import math

import torch

from ..errors import TalkingFaceError

MIN_CUTOFF_AT_FULL_STRENGTH = 0.5  # Hz
SPEED_COEFFICIENT = 2.0  # Hz per (scale units per second)
DERIVATIVE_CUTOFF = 1.0  # Hz


def cutoff_hz(strength: float) -> float:
    """The cut-off frequency a smoothing strength stands for (infinite at 0: no smoothing)."""
    if not 0.0 <= strength <= 1.0:
        raise TalkingFaceError(f"smoothing strength must be between 0 and 1, got {strength}")
    return math.inf if strength == 0.0 else MIN_CUTOFF_AT_FULL_STRENGTH / strength**2


def acceleration_weight(strength: float, fps: float) -> float:
    """Weight λ of a penalty λ·Σ|x[t-1] − 2x[t] + x[t+1]|² against unit-weight data Σ|x − y|², so that its
    cut-off is :func:`cutoff_hz` at ``fps``. Such a (Whittaker) smoother passes a sinusoid of ω rad per
    frame by 1 / (1 + λ(2 − 2cos ω)²), half its power where λ(2 − 2cos ω)² = 1."""
    if fps <= 0:
        raise TalkingFaceError(f"fps must be positive, got {fps}")
    cutoff = cutoff_hz(strength)
    if math.isinf(cutoff):
        return 0.0
    omega = min(2.0 * math.pi * cutoff / fps, math.pi)
    return 1.0 / (2.0 - 2.0 * math.cos(omega)) ** 2


def _alpha(cutoff: torch.Tensor | float, fps: float) -> torch.Tensor | float:
    # The exact step response of a first-order low-pass over one frame, 1 − e^(−2π·f/fps), rather than the
    # paper's 1 / (1 + fps / 2πf): the two agree at high frame rates, and this one keeps the cut-off where it
    # is at 12 fps too.
    return 1.0 - torch.exp(-2.0 * math.pi * torch.as_tensor(cutoff, dtype=torch.float64) / fps)


def one_euro(track: torch.Tensor, fps: float, strength: float, scale: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Filter ``track`` ``[T, ...]`` along frames. ``scale`` (broadcast to a frame) is the typical size of
    the values, so the speed that opens the filter is measured in the track's own units."""
    min_cutoff = cutoff_hz(strength)
    if fps <= 0:
        raise TalkingFaceError(f"fps must be positive, got {fps}")
    if strength == 0.0 or track.shape[0] < 2:
        return track.clone()
    values = track.double()
    scale = torch.as_tensor(scale, dtype=torch.float64, device=track.device)
    out = torch.empty_like(values)
    out[0] = values[0]
    derivative = torch.zeros_like(values[0])
    alpha_d = _alpha(DERIVATIVE_CUTOFF, fps)
    for t in range(1, values.shape[0]):
        # The speed of the raw track (as in the original 1€ filter): the gap to the filtered value would grow
        # with the frame rate.
        raw_derivative = (values[t] - values[t - 1]) * fps / scale
        derivative = derivative + alpha_d * (raw_derivative - derivative)
        cutoff = min_cutoff + SPEED_COEFFICIENT * derivative.abs()
        alpha = _alpha(cutoff, fps)
        out[t] = out[t - 1] + alpha * (values[t] - out[t - 1])
    return out.to(track.dtype)
