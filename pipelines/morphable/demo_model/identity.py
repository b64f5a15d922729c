"""The demo face's identity basis: named shape directions (face width, nose size, eye spacing ...)
first, then smooth random fields, mirrored for a near-symmetric face."""
from __future__ import annotations

import numpy as np

from ..coefficients import BFM_DIMS
from .deformation import bump_values, eye_weights, random_centres, rigid_eyes, vectors, with_eye_centres
from .geometry import (
    EAR_CENTRE,
    MOUTH_Y,
    NECK_CENTRE_Z,
    front_facing,
    gaussian,
    mouth_coordinate,
    nose_relief,
    seam_height,
    smoothstep,
)
from .mesh import Neutral, eyeball_centre

# The first identity directions have a meaning; the rest are smooth random fields, mostly symmetric.
IDENTITY_SHAPES = (
    "head_width", "head_height", "head_depth", "face_length", "forehead_slope", "nose_size", "nose_width",
    "nose_length", "nose_bridge", "chin_protrusion", "chin_height", "jaw_width", "cheekbones", "cheek_fullness",
    "brow_ridge", "eye_spacing", "eye_height", "eye_size", "eye_depth", "lip_fullness", "mouth_width",
    "mouth_height", "lip_protrusion", "ear_size", "occiput", "neck_thickness",
)
# Each eye moves as one piece in these, so they need no help keeping the lids on the eyeballs.
RIGID_EYE_SHAPES = ("eye_spacing", "eye_height", "eye_size", "eye_depth")
RANDOM_SHAPE_AMPLITUDE = (0.012, 0.004)  # largest displacement of the first and the last random field


def _identity_shapes(points: np.ndarray) -> np.ndarray:
    """``[len(IDENTITY_SHAPES), M, 3]``: each named identity direction's displacement at coefficient 1
    (about one standard deviation)."""
    x, y, z = points.T
    ax, zero = np.abs(x), np.zeros_like(x)
    facing = front_facing(points)
    seam = seam_height(np.clip(mouth_coordinate(np.arctan2(x, z)), -1.0, 1.0))
    radial = np.stack([x, zero, z], axis=-1) / np.maximum(np.hypot(x, z), 1e-9)[:, None]
    nearer_eye, eye = eye_weights(points, 0.2, 0.32)
    eye_side = np.where(nearer_eye == 0, 1.0, -1.0)
    eye_centres = np.stack([eyeball_centre(1.0), eyeball_centre(-1.0)])[nearer_eye]
    neck_out = np.stack([x, zero, z - NECK_CENTRE_Z], axis=-1)
    neck_out /= np.maximum(np.linalg.norm(neck_out, axis=1), 1e-9)[:, None]
    ears = np.zeros_like(points)
    for ear_side in (1.0, -1.0):
        ear_centre = np.array([ear_side * (EAR_CENTRE[0] - 0.05), EAR_CENTRE[1], EAR_CENTRE[2]])
        ears += np.exp(-((points - ear_centre) ** 2).sum(-1) / (2 * 0.15**2))[:, None] * (points - ear_centre)

    def near(cx: float, cy: float, rx: float, ry: float, mirrored: bool = False) -> np.ndarray:
        return facing * gaussian(ax if mirrored else x, y, cx, cy, rx, ry)

    shapes = {
        "head_width": vectors(0.045 * x, 0.0, 0.0),
        "head_height": vectors(0.0, 0.04 * (y + 0.35), 0.0),  # about the middle of the face
        "head_depth": vectors(0.0, 0.0, 0.04 * z),
        "face_length": vectors(0.0, -0.025 * (smoothstep(-0.45, -0.6, y) + smoothstep(-0.8, -1.05, y)), 0.0),
        "forehead_slope": vectors(0.0, 0.0, -0.04 * smoothstep(0.3, 0.8, y) * facing),
        "nose_size": vectors(0.0, 0.0, 0.15 * nose_relief(x, y) * facing),
        "nose_width": vectors(0.2 * x * near(0.0, -0.38, 0.18, 0.14), 0.0, 0.0),
        "nose_length": vectors(0.0, -0.02 * near(0.0, -0.42, 0.12, 0.1), 0.0),
        "nose_bridge": vectors(0.0, 0.0, 0.03 * near(0.0, -0.05, 0.06, 0.15)),
        "chin_protrusion": vectors(0.0, 0.0, 0.04 * near(0.0, -1.0, 0.22, 0.14)),
        "chin_height": vectors(0.0, -0.04 * near(0.0, -1.05, 0.25, 0.12), 0.0),
        "jaw_width": vectors(0.08 * x * gaussian(ax, y, 0.45, -0.85, 0.2, 0.2), 0.0, 0.0),
        "cheekbones": near(0.5, -0.15, 0.15, 0.12, mirrored=True)[:, None] * vectors(0.015 * np.sign(x), 0.0, 0.02),
        "cheek_fullness": 0.035 * near(0.4, -0.5, 0.15, 0.15, mirrored=True)[:, None] * radial,
        "brow_ridge": vectors(0.0, 0.0, 0.03 * near(0.22, 0.2, 0.25, 0.07, mirrored=True)),
        "eye_spacing": vectors(0.025 * eye * eye_side, 0.0, 0.0),
        "eye_height": vectors(0.0, 0.025 * eye, 0.0),
        "eye_size": 0.06 * eye[:, None] * (points - eye_centres),
        "eye_depth": vectors(0.0, 0.0, -0.02 * eye),
        "lip_fullness": near(0.0, MOUTH_Y, 0.26, 0.1)[:, None] * vectors(0.0, 0.25 * (y - seam), 0.02),
        "mouth_width": vectors(0.15 * x * near(0.0, MOUTH_Y, 0.3, 0.12), 0.0, 0.0),
        "mouth_height": vectors(0.0, 0.03 * near(0.0, MOUTH_Y, 0.32, 0.16), 0.0),
        "lip_protrusion": vectors(0.0, 0.0, 0.03 * near(0.0, MOUTH_Y, 0.3, 0.14)),
        "ear_size": 0.2 * ears,
        "occiput": vectors(0.0, 0.0, -0.05 * smoothstep(-0.2, -0.8, z) * np.exp(-(((y - 0.2) / 0.5) ** 2))),
        "neck_thickness": 0.04 * smoothstep(-0.9, -1.2, y)[:, None] * neck_out,
    }
    return np.stack([shapes[name] for name in IDENTITY_SHAPES])


def identity_fields(face: Neutral, seed: int) -> np.ndarray:
    """``[80, N, 3]``: semantic shape directions, then smooth random fields of decreasing size."""
    points = face.vertices
    samples = with_eye_centres(points)
    named = _identity_shapes(samples)
    rigid_by_design = np.array([name in RIGID_EYE_SHAPES for name in IDENTITY_SHAPES])[:, None, None]
    named = np.where(rigid_by_design, named[:, :-2], rigid_eyes(named, points))
    count, bumps_per_field = BFM_DIMS.identity - len(IDENTITY_SHAPES), 3
    rng = np.random.default_rng([seed, 0])
    # Head vertices crowd on the face, so most bumps land there.
    centres = random_centres(rng, points[: face.layout.head_vertices], count * bumps_per_field)
    radii = rng.uniform(0.15, 0.4, size=count * bumps_per_field)
    directions = rng.normal(size=(count, bumps_per_field, 3))
    flip = np.array([-1.0, 1.0, 1.0])

    def smooth_fields(at: np.ndarray) -> np.ndarray:
        bumps = bump_values(at, centres, radii).reshape(at.shape[0], count, bumps_per_field)
        return np.matmul(bumps.transpose(1, 0, 2), directions)

    # Faces are nearly symmetric: three in four random fields are mirrored (x flips, and so does x motion).
    plain = smooth_fields(samples)
    mirrored = (np.arange(count) % 4 != 0)[:, None, None]
    random = rigid_eyes(np.where(mirrored, (plain + smooth_fields(samples * flip) * flip) / 2.0, plain), points)
    size = np.linalg.norm(random, axis=2).max(axis=1)
    random *= (np.geomspace(*RANDOM_SHAPE_AMPLITUDE, count) / size)[:, None, None]
    return np.concatenate([named, random])
