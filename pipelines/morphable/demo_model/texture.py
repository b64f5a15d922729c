"""The demo face's albedo: skin, lips, brows, hair and eye colours on the neutral mesh, and the random
and semantic albedo directions of its texture basis."""
from __future__ import annotations

import math

import numpy as np

from ..coefficients import BFM_DIMS
from .deformation import bump_values, random_centres
from .geometry import (
    CROWN_Y,
    IRIS_ANGLE,
    PUPIL_ANGLE,
    elliptic_bump,
    eye_coordinate,
    gaussian,
    monotone_cubic,
    mouth_coordinate,
    seam_height,
    smoothstep,
)
from .mesh import Neutral

SKIN = np.array([200.0, 150.0, 124.0])
LIPS = np.array([178.0, 92.0, 88.0])
BROWS = np.array([72.0, 52.0, 40.0])
HAIR = np.array([58.0, 42.0, 32.0])
LASH_LINE = np.array([60.0, 42.0, 36.0])
EYE_POCKET = np.array([190.0, 110.0, 105.0])
MOUTH_INSIDE = np.array([84.0, 28.0, 30.0])
NOSTRILS = np.array([70.0, 40.0, 36.0])
SCLERA = np.array([236.0, 232.0, 226.0])
IRIS = np.array([104.0, 74.0, 46.0])
LIMBUS = np.array([56.0, 42.0, 30.0])
PUPIL = np.array([14.0, 12.0, 12.0])


def lip_outline(mouth_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Heights of the upper lip's border (with a Cupid's bow) and of the lower lip's, above and below the seam."""
    span = np.clip(1.0 - mouth_s**2, 0.0, None)
    bow = 0.012 * np.exp(-(((np.abs(mouth_s) - 0.2) / 0.12) ** 2)) - 0.006 * np.exp(-((mouth_s / 0.08) ** 2))
    return 0.075 * span**0.6 + bow * span, 0.095 * span**0.5


def _lip_mask(face: Neutral) -> np.ndarray:
    """The red of the lips (vermilion), soft at its border."""
    mouth_s = mouth_coordinate(face.phi)
    above = face.y - seam_height(np.clip(mouth_s, -1.0, 1.0))
    upper_edge, lower_edge = lip_outline(mouth_s)
    mask = smoothstep(0.01, -0.01, above - upper_edge) * smoothstep(-0.01, 0.01, above + lower_edge)
    return mask * (np.abs(mouth_s) < 1.0) * face.front


def _brow_along(abs_x: np.ndarray) -> np.ndarray:
    """0 at the inner end of an eyebrow, 1 at the outer end."""
    return np.clip((abs_x - 0.1) / 0.43, 0.0, 1.0)


def brow_centre(abs_x: np.ndarray) -> np.ndarray:
    """Height of the middle of the eyebrow, an arch peaking two thirds of the way out."""
    return 0.19 + 0.05 * np.sin(math.pi * _brow_along(abs_x) ** 0.8)


BROW_EDGE_BLUR = 0.012  # half the width of the soft edge round the eyebrows


def brow_half_thickness(abs_x: np.ndarray) -> np.ndarray:
    """Half the eyebrow's height: full at the inner end, tapering to the outer tip."""
    return 0.036 - 0.02 * _brow_along(abs_x)


def _brow_mask(face: Neutral) -> np.ndarray:
    ax = np.abs(face.x)
    across = smoothstep(BROW_EDGE_BLUR, -BROW_EDGE_BLUR, np.abs(face.y - brow_centre(ax)) - brow_half_thickness(ax))
    return across * smoothstep(0.08, 0.11, ax) * smoothstep(0.56, 0.52, ax) * face.front


def _hair_mask(face: Neutral) -> np.ndarray:
    """Short hair above a hairline that runs from the forehead past the temples and ears to the nape."""
    hairline = monotone_cubic(
        (0.0, 0.5, 0.9, 1.25, 1.6, 1.9, 2.3, math.pi), (0.7, 0.64, 0.45, 0.15, 0.3, 0.25, -0.3, -0.55),
        np.abs(face.phi),
    )
    # The grid is coarser round the sides, so the hairline is softer there.
    softness = 0.05 + 0.05 * smoothstep(0.8, 1.4, np.abs(face.phi))
    mask = smoothstep(hairline - softness, hairline + softness, face.y)
    crown_pole = face.y == CROWN_Y
    return np.where(face.row >= 0, mask, 1.0 * crown_pole)


def _eyeball_albedo(polar: np.ndarray) -> np.ndarray:
    iris_shade = np.clip((polar - PUPIL_ANGLE) / (IRIS_ANGLE - PUPIL_ANGLE), 0.0, 1.0)[:, None]
    iris = IRIS + (LIMBUS - IRIS) * iris_shade**3
    return np.where((polar < PUPIL_ANGLE)[:, None], PUPIL, np.where((polar < IRIS_ANGLE)[:, None], iris, SCLERA))


def albedo_regions(face: Neutral) -> dict[str, np.ndarray]:
    """Soft per-vertex masks of the coloured features, in the order they are painted."""
    rows = face.layout.rows
    in_mouth = np.abs(mouth_coordinate(face.phi)) < 1.0
    eye_s = np.abs(eye_coordinate(face.phi))
    ax, y = np.abs(face.x), face.y
    return {
        "hair": _hair_mask(face),
        "brows": 0.85 * _brow_mask(face),
        "lips": _lip_mask(face),
        "nostrils": face.front * elliptic_bump(ax, y, 0.055, -0.468, 0.03, 0.016),
        "seam_edges": 0.25 * face.in_rows([rows.last_row("upper_lip"), rows.last_row("mouth_seam")]) * in_mouth,
        "mouth_inside": face.in_rows(rows.band("mouth_seam")[:-1]) * in_mouth,
        "eye_pocket": face.in_rows(rows.band("eye_opening")[:-1]) * (eye_s < 1.0),
        "upper_lash": 0.85 * face.in_rows(rows.last_row("upper_lid")) * (eye_s < 1.0),
        "lower_lash": 0.35 * face.in_rows(rows.last_row("eye_opening")) * (eye_s < 1.0),
    }


REGION_COLOURS = {
    "hair": HAIR, "brows": BROWS, "lips": LIPS, "nostrils": NOSTRILS, "seam_edges": MOUTH_INSIDE,
    "mouth_inside": MOUTH_INSIDE, "eye_pocket": EYE_POCKET, "upper_lash": LASH_LINE, "lower_lash": LASH_LINE,
}


def _blush(face: Neutral) -> np.ndarray:
    """Where skin is redder: cheeks, the nose tip and the ears."""
    x, y = face.x, face.y
    ax = np.abs(x)
    return face.front * (
        0.5 * gaussian(ax, y, 0.4, -0.3, 0.15, 0.12) + 0.4 * gaussian(x, y, 0.0, -0.38, 0.06, 0.06)
        + 0.6 * np.exp(-(((ax - 0.8) / 0.1) ** 2)) * gaussian(0.0, y, 0.0, -0.08, 1.0, 0.3)
    )


def mean_albedo_colours(face: Neutral, regions: dict[str, np.ndarray]) -> np.ndarray:
    """Per-vertex colour ``[N, 3]`` in 0..255."""
    colour = SKIN + _blush(face)[:, None] * np.array([6.0, -12.0, -10.0])
    for name, weight in regions.items():
        colour = colour + weight[:, None] * (REGION_COLOURS[name] - colour)
    eye = face.on_eyeball
    colour[eye] = _eyeball_albedo(face.eye_polar[eye])
    return colour



# ---- albedo variation --------------------------------------------------------------------------
ALBEDO_DIRECTIONS = (
    "skin_tone", "skin_redness", "skin_olive", "lip_darkness", "lip_redness", "brow_darkness", "hair_colour",
    "iris_colour", "cheek_blush", "under_eye_shadow", "beard_shadow",
)
RANDOM_ALBEDO_AMPLITUDE = (10.0, 3.0)  # 0..255 units at the centre of the first and the last random field


def albedo_fields(face: Neutral, regions: dict[str, np.ndarray], mean: np.ndarray, seed: int) -> np.ndarray:
    """``[80, N, 3]`` in 0..255 units: named colour directions, then smooth random colour fields.
    Coefficients of ±2 keep every channel inside 0..255."""
    x, y = face.x, face.y
    ax = np.abs(x)
    painted = sum(regions[name] for name in ("hair", "mouth_inside", "eye_pocket"))
    skin = np.clip(1.0 - painted, 0.0, 1.0) * ~face.on_eyeball
    lips = regions["lips"]
    iris = face.on_eyeball & (face.eye_polar < IRIS_ANGLE)
    beard = face.front * (1.0 - lips) * (
        gaussian(x, y, 0.0, -0.95, 0.35, 0.2) + 0.7 * gaussian(x, y, 0.0, -0.55, 0.2, 0.06)
    )
    # Skin hue moves along melanin (darker, relatively browner), redness and yellowness, in proportion
    # to the colour it changes, so that skin stays skin-coloured (red > green > blue).
    skin_colour = skin[:, None] * mean
    under_eyes = face.front * gaussian(ax, y, 0.3, -0.11, 0.13, 0.05)
    named = {
        "skin_tone": skin_colour * -np.array([0.11, 0.13, 0.15]),
        "skin_redness": skin_colour * np.array([0.035, -0.015, -0.01]),
        "skin_olive": skin_colour * np.array([0.0, 0.015, -0.04]),
        "lip_darkness": lips[:, None] * np.array([-16.0, -14.0, -8.0]),
        "lip_redness": lips[:, None] * np.array([14.0, -10.0, -4.0]),
        "brow_darkness": regions["brows"][:, None] * np.array([-20.0, -15.0, -11.0]),
        "hair_colour": regions["hair"][:, None] * np.array([20.0, 15.0, 11.0]),
        "iris_colour": iris[:, None] * mean * np.array([-0.22, -0.02, 0.28]),  # towards blue, or amber
        "cheek_blush": _blush(face)[:, None] * np.array([14.0, -4.0, -2.0]),
        "under_eye_shadow": under_eyes[:, None] * np.array([-12.0, -13.0, -7.0]),
        "beard_shadow": (beard * skin)[:, None] * np.array([-14.0, -9.0, -2.0]),
    }
    fields = [named[name] for name in ALBEDO_DIRECTIONS]
    count = BFM_DIMS.texture - len(fields)
    rng = np.random.default_rng([seed, 2])
    head = face.layout.head_vertices
    centres = random_centres(rng, face.vertices[:head][face.front[:head] > 0.3], 2 * count)
    radii = rng.uniform(0.08, 0.3, size=2 * count)
    bumps = bump_values(face.vertices, centres, radii) * skin[:, None]
    amplitudes = np.geomspace(*RANDOM_ALBEDO_AMPLITUDE, count)
    for k in range(count):
        # Mostly lighter or darker, with a random tint.
        colour = np.array([1.0, 0.8, 0.7]) * rng.choice([-1.0, 1.0]) + rng.normal(scale=0.12, size=3)
        pattern = bumps[:, 2 * k : 2 * k + 2].sum(1, keepdims=True)
        fields.append(amplitudes[k] * pattern / pattern.max() * colour)
    return np.stack(fields)
