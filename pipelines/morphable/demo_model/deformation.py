"""Displacement fields shared by the identity and expression bases: rigid motions, eyes that move as
rigid bodies, and smooth random bumps."""
from __future__ import annotations

import math

import numpy as np

from .geometry import smoothstep
from .mesh import eyeball_centre


def vectors(dx: np.ndarray | float, dy: np.ndarray | float, dz: np.ndarray | float) -> np.ndarray:
    """``[N, 3]`` displacements from per-vertex (or constant) components."""
    return np.stack(np.broadcast_arrays(dx, dy, dz), axis=-1).astype(np.float64)


def rotation_about(axis: str, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    if axis == "x":  # positive turns +y towards +z
        return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])  # about y: positive turns +z towards +x


def rigid_motion(points: np.ndarray, rotation: np.ndarray, pivot: np.ndarray) -> np.ndarray:
    """Displacement of each point under a rotation about ``pivot``."""
    return (points - pivot) @ rotation.T + pivot - points


def eye_weights(points: np.ndarray, inner: float, outer: float) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearer eye and a weight, 1 within ``inner`` of its eyeball centre and 0 beyond ``outer``."""
    centres = np.stack([eyeball_centre(1.0), eyeball_centre(-1.0)])
    distance = np.linalg.norm(points[:, None, :] - centres[None], axis=-1)
    nearer = np.argmin(distance, axis=1)
    return nearer, smoothstep(outer, inner, distance[np.arange(points.shape[0]), nearer])


def with_eye_centres(points: np.ndarray) -> np.ndarray:
    """The points followed by the two eyeball centres: where fields are sampled for :func:`rigid_eyes`."""
    return np.concatenate([points, eyeball_centre(1.0)[None], eyeball_centre(-1.0)[None]])


def rigid_eyes(fields: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Displacement fields ``[K, N + 2, 3]`` sampled at :func:`with_eye_centres` → ``[K, N, 3]`` in
    which each eye (eyeball, lids and socket) moves as one piece, with the field's value at its
    centre: smooth fields would otherwise shear the lids into the eyeball or tear the eye opening."""
    nearer, weight = eye_weights(points, 0.17, 0.27)
    moved, at_centres = fields[:, :-2], fields[:, -2:]
    return moved + weight[None, :, None] * (at_centres[:, nearer] - moved)


def bump_values(points: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """``[N, count]`` smooth Gaussian bumps, in float32 (they end up in float32 bases; twice as fast)."""
    points, centres = points.astype(np.float32), centres.astype(np.float32)
    squared = (points**2).sum(1)[:, None] + (centres**2).sum(1)[None] - 2.0 * points @ centres.T
    return np.exp(-np.clip(squared, 0.0, None) / (2.0 * radii.astype(np.float32) ** 2))


def random_centres(rng: np.random.Generator, candidates: np.ndarray, count: int) -> np.ndarray:
    return candidates[rng.choice(candidates.shape[0], size=count, replace=False)]
