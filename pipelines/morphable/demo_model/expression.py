"""The demo face's expression basis: the named semantic blendshapes (jaw, smile, blinks, gaze ...)
first, then small random details."""
from __future__ import annotations

import math

import numpy as np

from ..coefficients import BFM_DIMS
from .deformation import (
    bump_values,
    random_centres,
    rigid_eyes,
    rigid_motion,
    rotation_about,
    vectors,
    with_eye_centres,
)
from .geometry import MOUTH_Y, EyeState, front_facing, gaussian, mouth_coordinate, seam_height, smoothstep
from .mesh import Neutral

SEMANTIC_EXPRESSIONS = (
    "jaw_open", "smile", "lip_pucker", "brow_raise", "blink_left", "blink_right", "brow_furrow", "frown",
    "lip_stretch", "mouth_left", "mouth_right", "upper_lip_raise", "lower_lip_depress", "cheek_puff",
    "nose_wrinkle", "eye_wide", "squint", "jaw_left", "jaw_right", "lips_press", "brow_inner_raise", "lips_part",
)
EXPRESSION_NAMES = SEMANTIC_EXPRESSIONS + tuple(
    f"detail_{k:02d}" for k in range(BFM_DIMS.expression - len(SEMANTIC_EXPRESSIONS))
)
JAW_OPEN_ANGLE = 0.25  # radians: opens the lips by ~0.25 units
JAW_PIVOT = np.array([0.0, -0.05, -0.12])  # the jaw joints, in front of the ears
JAW_GLIDE = np.array([0.0, -0.02, 0.07])  # the condyles slide forward as the jaw opens
JAW_SIDE_ANGLE = 0.12
MOUTH_CAVITY_DEPTH = 0.12
DETAIL_AMPLITUDE = 0.012


def expression_fields(face: Neutral, seed: int) -> np.ndarray:
    """``[64, N, 3]``: each direction's displacement at coefficient 1.0 (the full expression)."""
    p, x, y = face.vertices, face.x, face.y
    ax, side = np.abs(x), np.sign(x)
    front = face.front
    lower = face.below_seam()
    upper = (1.0 - lower) * (face.row >= 0)
    jaw = lower * smoothstep(-0.3, 0.2, face.z) * smoothstep(-1.5, -1.25, y)
    seam = seam_height(np.clip(mouth_coordinate(face.phi), -1.0, 1.0))
    corners = front * gaussian(ax, y, 0.25, MOUTH_Y, 0.12, 0.1)
    cheeks = front * gaussian(ax, y, 0.38, -0.35, 0.15, 0.13)
    mouth = front * gaussian(x, y, 0.0, MOUTH_Y, 0.3, 0.14)
    lips = front * gaussian(x, y, 0.0, MOUTH_Y, 0.26, 0.1)
    brows = (
        # Ramps gentle enough that lowering the brows (negative coefficients) never folds the skin.
        front * smoothstep(0.07, 0.26, y) * smoothstep(0.9, 0.5, y) * smoothstep(0.75, 0.55, ax)
    )
    rows = face.layout.rows
    band_rows = face.in_rows(rows.band("mouth_seam")[:-1]) * (np.abs(mouth_coordinate(face.phi)) < 1.0)
    band_position = np.clip((face.row - rows.last_row("upper_lip")) / rows.band_rows["mouth_seam"], 0.0, 1.0)
    radial = np.stack([np.sin(face.phi), np.zeros_like(x), np.cos(face.phi)], axis=-1)

    def jaw_turn(side_sign: float) -> np.ndarray:
        # The chin swings towards one side about the joint on the other side.
        pivot = JAW_PIVOT + np.array([-side_sign * 0.62, 0.0, 0.0])
        return jaw[:, None] * rigid_motion(p, rotation_about("y", side_sign * JAW_SIDE_ANGLE), pivot)

    def mouth_shift(side_sign: float) -> np.ndarray:
        corner = front * gaussian(x, y, side_sign * 0.25, MOUTH_Y, 0.1, 0.08)
        return mouth[:, None] * vectors(side_sign * 0.05, 0.0, 0.0) + corner[:, None] * vectors(side_sign * 0.01, 0.01, -0.02)

    def eyes(left: EyeState, right: EyeState) -> np.ndarray:
        moved = np.zeros_like(p)
        head = face.layout.head_vertices
        moved[:head] = face.layout.skin(left, right) - p[:head]
        return moved

    jaw_open = jaw[:, None] * (
        rigid_motion(p, rotation_about("x", JAW_OPEN_ANGLE), JAW_PIVOT) + JAW_GLIDE
    ) + (band_rows * np.sin(math.pi * band_position) * -MOUTH_CAVITY_DEPTH)[:, None] * radial
    semantic = {
        "jaw_open": jaw_open,
        "smile": corners[:, None] * vectors(side * 0.05, 0.07, -0.035) + cheeks[:, None] * vectors(side * 0.015, 0.04, 0.03)
        + (0.01 * upper * lips)[:, None] * vectors(0.0, 1.0, 0.0),
        "lip_pucker": mouth[:, None] * vectors(-0.6 * x, -0.35 * (y - seam), 0.07),
        "brow_raise": brows[:, None] * vectors(0.0, 0.055, 0.005),
        "blink_left": eyes(EyeState(closure=1.0), EyeState()),
        "blink_right": eyes(EyeState(), EyeState(closure=1.0)),
        "brow_furrow": (brows * gaussian(ax, y, 0.14, 0.2, 0.1, 0.08))[:, None] * vectors(-side * 0.02, -0.025, 0.008),
        "frown": corners[:, None] * vectors(side * 0.005, -0.04, 0.0) + (lips * lower)[:, None] * vectors(0.0, 0.0, 0.015),
        "lip_stretch": corners[:, None] * vectors(side * 0.05, -0.01, -0.02) + lips[:, None] * vectors(0.0, -0.3 * (y - seam), 0.0),
        "mouth_left": mouth_shift(1.0),
        "mouth_right": mouth_shift(-1.0),
        "upper_lip_raise": (front * gaussian(x, y, 0.0, -0.6, 0.3, 0.1) * upper)[:, None] * vectors(0.0, 0.03, 0.01),
        "lower_lip_depress": (front * gaussian(x, y, 0.0, -0.77, 0.28, 0.08) * lower)[:, None] * vectors(0.0, -0.035, 0.01),
        "cheek_puff": 0.05 * (front * gaussian(ax, y, 0.4, -0.6, 0.16, 0.15))[:, None] * radial,
        "nose_wrinkle": (front * gaussian(ax, y, 0.1, -0.25, 0.08, 0.1))[:, None] * vectors(0.0, 0.02, -0.003)
        + (0.01 * upper * lips)[:, None] * vectors(0.0, 1.0, 0.0),
        "eye_wide": eyes(EyeState(widen=1.0), EyeState(widen=1.0)),
        "squint": eyes(EyeState(squint=1.0), EyeState(squint=1.0)) + cheeks[:, None] * vectors(0.0, 0.02, 0.01),
        "jaw_left": jaw_turn(1.0),
        "jaw_right": jaw_turn(-1.0),
        "lips_press": lips[:, None] * vectors(0.0, -0.3 * (y - seam), -0.012),
        "brow_inner_raise": (brows * gaussian(ax, y, 0.15, 0.22, 0.12, 0.12))[:, None] * vectors(0.0, 0.04, 0.0),
        "lips_part": (lips * upper)[:, None] * vectors(0.0, 0.012, 0.004) + (lips * lower)[:, None] * vectors(0.0, -0.02, 0.004),
    }
    fields = [semantic[name] for name in SEMANTIC_EXPRESSIONS]
    details = BFM_DIMS.expression - len(fields)
    rng = np.random.default_rng([seed, 1])
    on_face = np.nonzero((face.front > 0.8) & (y > -1.1) & (y < 0.6))[0]
    centres = random_centres(rng, p[on_face], details)
    radii = rng.uniform(0.07, 0.14, size=details)
    directions = rng.normal(size=(details, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    samples = with_eye_centres(p)
    bumps = bump_values(samples, centres, radii) * front_facing(samples)[:, None]
    fields += list(rigid_eyes(DETAIL_AMPLITUDE * bumps.T[:, :, None] * directions[:, None, :], p))
    return np.stack(fields)
