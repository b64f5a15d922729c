"""Where a fit starts when no coefficients are given: a closed-form pose from the landmarks."""
from __future__ import annotations

import torch

from .projection import LandmarkProjection


def closed_form_pose(
    projection: LandmarkProjection, landmarks: torch.Tensor, weights: torch.Tensor, params: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotation angles and translation of a scaled-orthographic pose from a weighted affine fit of
    the model's landmark vertices (shaped by ``params``) to ``landmarks``."""
    points = projection.points(params, projection.landmark_rows())
    camera = projection.camera
    center = camera.center
    # Camera-plane coordinates with y up, proportional to world x and y.
    target = torch.stack([landmarks[..., 0] - center, center - landmarks[..., 1]], -1)
    # Jaw points slide with the pose; lean on the inner face.
    trust = weights.clone()
    trust[:, projection.contour_slots] *= 0.1
    homogeneous = torch.cat([points, torch.ones_like(points[..., :1])], -1)  # [B, L, 4]
    weighted = (trust.unsqueeze(-1) * homogeneous).transpose(1, 2)
    normal = weighted @ homogeneous + 1e-6 * torch.eye(4, device=points.device)
    affine = torch.cholesky_solve(weighted @ target, torch.linalg.cholesky(normal))  # [B, 4, 2]
    u, singular, vh = torch.linalg.svd(affine[:, :3].transpose(1, 2), full_matrices=False)
    rows = u @ vh  # nearest matrix with orthonormal rows
    rotation = torch.cat([rows, torch.cross(rows[:, 0], rows[:, 1], dim=-1).unsqueeze(1)], 1)
    scale = singular.mean(-1)
    centroid = (trust.unsqueeze(-1) * points).sum(1) / trust.sum(1, keepdim=True)
    rotated_centroid = (rotation @ centroid.unsqueeze(-1)).squeeze(-1)
    # The centroid projects as s·(R·c + t)_xy with s = focal / depth.
    translation_xy = affine[:, 3] / scale.unsqueeze(-1)
    translation_z = camera.distance - camera.focal / scale - rotated_centroid[:, 2]
    translation = torch.cat([translation_xy, translation_z.unsqueeze(-1)], -1)
    return euler_angles(rotation), translation


def euler_angles(rotation: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`~..model.rotation_matrices`: ``[B, 3, 3]`` to (x, y, z) with R = Rz·Ry·Rx."""
    y = torch.asin((-rotation[:, 2, 0]).clamp(-1.0, 1.0))
    x = torch.atan2(rotation[:, 2, 1], rotation[:, 2, 2])
    z = torch.atan2(rotation[:, 1, 0], rotation[:, 0, 0])
    return torch.stack([x, y, z], -1)
