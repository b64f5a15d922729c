"""The demo head's shape: design-space constants (decimetres, y = 0 on the eye line, the head's
vertical axis at x = z = 0), small numeric helpers, the skin surface as a radius along horizontal
rays from the vertical axis, and the eyelid margins and lip seam the grid rows follow."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CROWN_Y = 1.1
NECK_BOTTOM_Y = -1.7
CRANIUM_CENTRE_Y = 0.2
CRANIUM_RADII = (0.78, CROWN_Y - CRANIUM_CENTRE_Y, 0.97)
NECK_CENTRE_Z = -0.15
NECK_RADII = (0.42, 0.48)
EAR_CENTRE = (0.8, -0.08, -0.12)
EAR_RADII = (0.09, 0.3, 0.16)
# The face (brow to throat) as horizontal slices: front depth, half width and the depth of the
# widest point, each a smooth function of height through these knots.
FACE_KNOTS_Y = (-1.32, -1.2, -1.1, -1.0, -0.85, -0.68, -0.45, -0.15, 0.05, 0.25, 0.45)
FACE_FRONT_Z = (0.2, 0.5, 0.77, 0.88, 0.92, 0.95, 0.95, 0.92, 0.9, 0.9, 0.8)
FACE_HALF_WIDTH = (0.25, 0.22, 0.18, 0.3, 0.46, 0.56, 0.65, 0.72, 0.71, 0.66, 0.55)
FACE_WIDEST_Z = (-0.05, 0.1, 0.3, 0.2, 0.05, 0.05, 0.12, 0.18, 0.18, 0.15, 0.1)
FACE_BACK_DEPTH = 0.5
PRIMITIVE_BLEND = 0.08

EYE_X = 0.31
EYEBALL_Z = 0.735
EYEBALL_RADIUS = 0.125
# The eyelids are an ellipsoid shell around the eyeball, this thick over the cornea: thick enough
# that the linear path of a closing lid (a chord of the shell) stays in front of the eyeball.
LID_THICKNESS = 0.012
LID_SHELL_RADII = (0.17, 0.16, EYEBALL_RADIUS + LID_THICKNESS)
EYE_OPENING_PHI = math.atan2(EYE_X, EYEBALL_Z)
EYE_OPENING_HALF_WIDTH_PHI = 0.17
UPPER_LID_HEIGHT = 0.056
LOWER_LID_HEIGHT = 0.044
CANTHAL_TILT = 0.012
# Skin inside the eye opening is pulled back to this depth, behind the eyeball's visible front.
EYE_POCKET_Z = EYEBALL_Z - 0.02
PUPIL_ANGLE = 0.17
IRIS_ANGLE = 0.47

MOUTH_Y = -0.68
MOUTH_HALF_WIDTH_PHI = math.atan2(0.25, 0.9)
SEAM_HALF_GAP = 0.002
# The narrowest gap between rows that meet at the eye and mouth corners: never quite zero, so no
# triangle is degenerate.
CORNER_GAP = 0.003


# ---- small numeric helpers --------------------------------------------------------------------
def smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _smooth_max(a: np.ndarray, b: np.ndarray, width: float) -> np.ndarray:
    """max(a, b), rounded where they differ by less than ``width`` (a fillet between two surfaces)."""
    h = np.clip(width - np.abs(a - b), 0.0, None) / width
    return np.maximum(a, b) + h * h * width / 4.0


def gaussian(x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    return np.exp(-(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2))


def elliptic_bump(x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    """A smooth bump that is exactly zero outside its ellipse (no tails leaking across the face)."""
    return np.clip(1.0 - ((x - cx) / rx) ** 2 - ((y - cy) / ry) ** 2, 0.0, None) ** 2


def monotone_cubic(knots_x: tuple[float, ...], knots_y: tuple[float, ...], x: np.ndarray) -> np.ndarray:
    """Fritsch–Carlson cubic through the knots, flat at and beyond the ends: smooth profiles that
    never overshoot the values they are given."""
    kx, ky = np.asarray(knots_x, dtype=np.float64), np.asarray(knots_y, dtype=np.float64)
    widths = np.diff(kx)
    secants = np.diff(ky) / widths
    slopes = np.zeros_like(ky)
    left, right = secants[:-1], secants[1:]
    w1, w2 = 2.0 * widths[1:] + widths[:-1], widths[1:] + 2.0 * widths[:-1]
    same_sign = left * right > 0
    safe_left, safe_right = np.where(same_sign, left, 1.0), np.where(same_sign, right, 1.0)
    slopes[1:-1] = np.where(same_sign, (w1 + w2) / (w1 / safe_left + w2 / safe_right), 0.0)
    x = np.clip(x, kx[0], kx[-1])
    i = np.clip(np.searchsorted(kx, x, side="right") - 1, 0, len(kx) - 2)
    h = widths[i]
    t = (x - kx[i]) / h
    t2, t3 = t * t, t * t * t
    return (
        (2 * t3 - 3 * t2 + 1) * ky[i]
        + (t3 - 2 * t2 + t) * h * slopes[i]
        + (-2 * t3 + 3 * t2) * ky[i + 1]
        + (t3 - t2) * h * slopes[i + 1]
    )


def _ray_exit(
    sin_phi: np.ndarray, cos_phi: np.ndarray, centre_x: float, centre_z: np.ndarray | float,
    half_x: np.ndarray | float, half_z: np.ndarray | float,
) -> np.ndarray:
    """Distance from the vertical axis along the horizontal ray at azimuth phi to where it leaves
    the ellipse ((x - cx) / ax)² + ((z - cz) / az)² = 1 of its slice; 0 where it misses."""
    half_x, half_z = np.broadcast_arrays(np.asarray(half_x, dtype=np.float64), np.asarray(half_z, dtype=np.float64))
    present = (half_x > 1e-9) & (half_z > 1e-9)
    ax, az = np.where(present, half_x, 1.0), np.where(present, half_z, 1.0)
    qa = (sin_phi / ax) ** 2 + (cos_phi / az) ** 2
    qb = -2.0 * (sin_phi * centre_x / ax**2 + cos_phi * centre_z / az**2)
    qc = (centre_x / ax) ** 2 + (centre_z / az) ** 2 - 1.0
    disc = qb * qb - 4.0 * qa * qc
    exit_distance = (-qb + np.sqrt(np.clip(disc, 0.0, None))) / (2.0 * qa)
    return np.where(present & (disc >= 0.0), np.clip(exit_distance, 0.0, None), 0.0)


def _ellipsoid_exit(
    sin_phi: np.ndarray, cos_phi: np.ndarray, y: np.ndarray, centre: tuple[float, float, float],
    radii: tuple[float, float, float],
) -> np.ndarray:
    slice_scale = np.sqrt(np.clip(1.0 - ((y - centre[1]) / radii[1]) ** 2, 0.0, None))
    return _ray_exit(sin_phi, cos_phi, centre[0], centre[2], radii[0] * slice_scale, radii[2] * slice_scale)


# ---- the head surface, as a radius along horizontal rays from the vertical axis ----------------
def base_radius(sin_phi: np.ndarray, cos_phi: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Cranium, face, neck and ears without the facial relief."""
    cranium = _ellipsoid_exit(sin_phi, cos_phi, y, (0.0, CRANIUM_CENTRE_Y, 0.0), CRANIUM_RADII)
    widest_z = monotone_cubic(FACE_KNOTS_Y, FACE_WIDEST_Z, y)
    half_width = monotone_cubic(FACE_KNOTS_Y, FACE_HALF_WIDTH, y)
    front_depth = monotone_cubic(FACE_KNOTS_Y, FACE_FRONT_Z, y) - widest_z
    face_front = _ray_exit(sin_phi, cos_phi, 0.0, widest_z, half_width, front_depth)
    face_back = _ray_exit(sin_phi, cos_phi, 0.0, widest_z, half_width, FACE_BACK_DEPTH)
    face = np.where(face_front * cos_phi >= widest_z, face_front, face_back)
    face = np.where((y >= FACE_KNOTS_Y[0]) & (y <= FACE_KNOTS_Y[-1]), face, 0.0)
    neck = _ray_exit(sin_phi, cos_phi, 0.0, NECK_CENTRE_Z, *NECK_RADII)
    head = _smooth_max(_smooth_max(cranium, face, PRIMITIVE_BLEND), neck, PRIMITIVE_BLEND)
    for side in (1.0, -1.0):
        ear = _ellipsoid_exit(sin_phi, cos_phi, y, (side * EAR_CENTRE[0], EAR_CENTRE[1], EAR_CENTRE[2]), EAR_RADII)
        head = _smooth_max(head, ear, 0.03)
    return head


def mouth_coordinate(phi: np.ndarray) -> np.ndarray:
    """-1 at the subject's right mouth corner, +1 at the left one."""
    return phi / MOUTH_HALF_WIDTH_PHI


def seam_height(mouth_s: np.ndarray) -> np.ndarray:
    return MOUTH_Y + 0.006 * mouth_s**2


def front_weight(cos_phi: np.ndarray) -> np.ndarray:
    """1 over the face, 0 round the sides and the back of the head, where facial features stop."""
    return smoothstep(0.2, 0.6, cos_phi)


def front_facing(points: np.ndarray) -> np.ndarray:
    return front_weight(points[:, 2] / np.maximum(np.hypot(points[:, 0], points[:, 2]), 1e-9))


def nose_relief(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    ridge = monotone_cubic(
        (-0.49, -0.455, -0.42, -0.38, -0.3, -0.15, 0.0, 0.12), (0.0, 0.1, 0.2, 0.225, 0.17, 0.1, 0.05, 0.0), y
    )
    half_width = monotone_cubic((-0.49, -0.42, -0.3, -0.1, 0.12), (0.17, 0.15, 0.11, 0.085, 0.075), y)
    nose = ridge * np.clip(1.0 - (x / half_width) ** 2, 0.0, None) ** 2
    return nose + 0.06 * elliptic_bump(np.abs(x), y, 0.1, -0.44, 0.075, 0.05) + 0.03 * elliptic_bump(x, y, 0.0, -0.39, 0.07, 0.06)


def _relief(x: np.ndarray, y: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """Facial relief added along the rays: nose, brows, eye sockets, cheekbones, lips, chin."""
    ax = np.abs(x)
    brow_ridge = 0.045 * np.exp(-(((y - 0.2) / 0.08) ** 2)) * (1.0 - smoothstep(0.4, 0.62, ax))
    sockets = -0.1 * gaussian(ax, y, EYE_X, 0.03, 0.17, 0.1)
    cheeks = 0.05 * gaussian(ax, y, 0.44, -0.2, 0.13, 0.11) + 0.02 * gaussian(ax, y, 0.3, -0.3, 0.12, 0.12)
    mouth_s = mouth_coordinate(phi)
    lip_span = np.clip(1.0 - mouth_s**2, 0.0, None)
    above_seam = (y - seam_height(mouth_s)) / 0.085
    below_seam = (seam_height(mouth_s) - y) / 0.1
    lips = 0.055 * lip_span**0.7 * np.exp(-(((above_seam - 0.45) / 0.45) ** 2))
    lips += 0.055 * lip_span**0.6 * np.exp(-(((below_seam - 0.5) / 0.5) ** 2))
    lips -= 0.012 * lip_span**0.3 * np.exp(-(((y - seam_height(mouth_s)) / 0.006) ** 2))
    muzzle = 0.03 * gaussian(x, y, 0.0, -0.7, 0.28, 0.18)
    philtrum = smoothstep(-0.62, -0.58, y) * (1.0 - smoothstep(-0.5, -0.47, y))
    philtrum *= 0.006 * np.exp(-(((ax - 0.035) / 0.015) ** 2)) - 0.006 * np.exp(-((x / 0.02) ** 2))
    chin = 0.055 * gaussian(x, y, 0.0, -0.99, 0.14, 0.08) - 0.025 * gaussian(x, y, 0.0, -0.865, 0.16, 0.035)
    relief = nose_relief(x, y) + brow_ridge + sockets + cheeks + lips + muzzle + philtrum + chin
    return relief * front_weight(np.cos(phi))


def skin_radius(phi: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Radius of the skin along each ray: base head plus relief, with the eyelid shells blended in."""
    sin_phi, cos_phi = np.sin(phi), np.cos(phi)
    base = base_radius(sin_phi, cos_phi, y)
    skin = base + _relief(base * sin_phi, y, phi)
    for side in (1.0, -1.0):
        shell = _ellipsoid_exit(sin_phi, cos_phi, y, (side * EYE_X, 0.0, EYEBALL_Z), LID_SHELL_RADII)
        skin = _smooth_max(skin, shell, 0.07)
    return skin



# ---- eyelids and the lip seam: the grid rows that follow them -----------------------------------
@dataclass(frozen=True)
class EyeState:
    """How one eye is held: 1.0 is the full expression (closed, wide open, squinting)."""

    closure: float = 0.0
    widen: float = 0.0
    squint: float = 0.0


RESTING_EYE = EyeState()

def eye_coordinate(phi: np.ndarray) -> np.ndarray:
    """Across each eye opening: -1 at the inner corner, +1 at the outer one."""
    return (np.abs(phi) - EYE_OPENING_PHI) / EYE_OPENING_HALF_WIDTH_PHI


def eyelid_margins(eye_s: np.ndarray, state: EyeState) -> tuple[np.ndarray, np.ndarray]:
    """Heights of the upper and lower lid margins; they meet at the corners (|eye_s| = 1)."""
    opening = np.clip(1.0 - eye_s**2, 0.0, None) ** 0.8
    line = CANTHAL_TILT * eye_s
    # The upper lid peaks on the nose side of the pupil, the lower one on the ear side.
    upper = line + UPPER_LID_HEIGHT * opening * (1.0 - 0.2 * eye_s) * (1.0 + 0.35 * state.widen - 0.2 * state.squint)
    lower = line - LOWER_LID_HEIGHT * opening * (1.0 + 0.2 * eye_s) * (1.0 + 0.15 * state.widen - 0.45 * state.squint)
    # Closing, the upper lid travels three quarters of the way and the lower one the rest.
    meet = lower + 0.25 * (upper - lower)
    upper = upper + state.closure * (meet - upper)
    lower = lower + state.closure * (meet - lower)
    centre, half_gap = (upper + lower) / 2.0, np.maximum((upper - lower) / 2.0, CORNER_GAP / 2.0)
    return centre + half_gap, centre - half_gap


# Horizontal bands of grid rows, top to bottom: (name, rows per unit of resolution, at least) and
# the boundary heights between them (a name: a feature curve that varies across the face).
