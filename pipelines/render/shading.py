"""Second-order spherical-harmonics lighting exactly as Deep3DFaceRecon computes it.

Lighting is 27 coefficients per frame, channel-major (red's 9, then green's, then blue's), offset
from an ambient light of :data:`AMBIENT_LIGHT` on each channel's constant term. The colour of a
surface point is ``albedo * (Y(n) · gamma)`` per channel, ``Y`` the 9 SH basis values of its unit
normal ``n`` (world axes: x right, y up, z towards the camera).
"""
from __future__ import annotations

import itertools
import math

import torch

from ..concurrent import run_in_parts
from ..morphable.model import AMBIENT_LIGHT

NUM_SH_BANDS = 9
# Lambertian attenuation per band (a) times the SH normalisation constants (c).
_A = (math.pi, 2.0 * math.pi / math.sqrt(3.0), 2.0 * math.pi / math.sqrt(8.0))
_C = (1.0 / math.sqrt(4.0 * math.pi), math.sqrt(3.0) / math.sqrt(4.0 * math.pi), 3.0 * math.sqrt(5.0) / math.sqrt(12.0 * math.pi))
_BAND0 = _A[0] * _C[0]
_BAND1 = _A[1] * _C[1]
_BAND2 = _A[2] * _C[2]


def sh_terms(nx: torch.Tensor, ny: torch.Tensor, nz: torch.Tensor) -> list[torch.Tensor]:
    """The 9 Deep3DFaceRecon SH basis values of unit normals (nx, ny, nz)."""
    return [
        torch.full_like(nx, _BAND0),
        -_BAND1 * ny,
        _BAND1 * nz,
        -_BAND1 * nx,
        _BAND2 * nx * ny,
        -_BAND2 * ny * nz,
        0.5 * _BAND2 / math.sqrt(3.0) * (3.0 * nz * nz - 1.0),
        -_BAND2 * nx * nz,
        0.5 * _BAND2 * (nx * nx - ny * ny),
    ]


def lighting_matrix(lighting: torch.Tensor) -> torch.Tensor:
    """Lighting coefficients ``[B, 27]`` to per-frame SH weights ``[B, 3, 9]`` (channel × band),
    ambient light included."""
    if lighting.ndim != 2 or lighting.shape[1] != 3 * NUM_SH_BANDS:
        raise ValueError(f"lighting must be [frames, {3 * NUM_SH_BANDS}], got {tuple(lighting.shape)}")
    gamma = lighting.reshape(-1, 3, NUM_SH_BANDS).clone()
    gamma[:, :, 0] += AMBIENT_LIGHT
    return gamma


def shade(albedo: torch.Tensor, normals: torch.Tensor, lighting: torch.Tensor) -> torch.Tensor:
    """Lit colour ``albedo * irradiance(normals)`` for ``albedo`` and unit ``normals`` of shape
    ``[B, ..., 3]`` (per vertex or per pixel) under ``lighting [B, 27]``. Not clamped."""
    if albedo.shape != normals.shape or albedo.shape[-1] != 3 or albedo.shape[0] != lighting.shape[0]:
        raise ValueError(
            f"albedo {tuple(albedo.shape)} and normals {tuple(normals.shape)} must both be [B, ..., 3] "
            f"with B = {lighting.shape[0]} frames of lighting"
        )
    frames = albedo.shape[0]
    # Basis planes [B, 9, M] make the product a wide matrix multiply, far faster than [M, 9] @ [9, 3].
    basis = torch.stack(sh_terms(*normals.reshape(frames, -1, 3).unbind(-1)), dim=1)
    irradiance = torch.bmm(lighting_matrix(lighting).to(basis.dtype), basis)
    return albedo * irradiance.transpose(1, 2).reshape(albedo.shape)


def shade_planar(
    albedo: torch.Tensor, normals: torch.Tensor, lighting: torch.Tensor, frame_sizes: list[int]
) -> torch.Tensor:
    """:func:`shade` for planar ``[3, P]`` albedo and unit normals of points that lie in
    consecutive runs, ``frame_sizes[b]`` of them lit by frame ``b``'s ``lighting``."""
    if albedo.shape != normals.shape or albedo.shape[0] != 3 or sum(frame_sizes) != albedo.shape[1]:
        raise ValueError(
            f"albedo {tuple(albedo.shape)} and normals {tuple(normals.shape)} must both be [3, "
            f"{sum(frame_sizes)}] (the sum of frame_sizes)"
        )
    if len(frame_sizes) != lighting.shape[0]:
        raise ValueError(f"{len(frame_sizes)} frame sizes for {lighting.shape[0]} frames of lighting")
    gammas = lighting_matrix(lighting).to(albedo.dtype)
    colour = torch.empty_like(albedo)
    starts = [0, *itertools.accumulate(frame_sizes)]

    def shade_frames(frames: slice) -> None:
        for frame in range(frames.start, frames.stop):
            run = slice(starts[frame], starts[frame + 1])
            colour[:, run] = gammas[frame] @ torch.stack(sh_terms(*normals[:, run]))

    # Each frame's operations are too small for torch to split across threads: on a CPU, groups of
    # frames are shaded concurrently instead.
    run_in_parts(shade_frames, len(frame_sizes), albedo.device, items=albedo.shape[1])
    return colour.mul_(albedo)
