"""The demo face's 68 iBUG-300W landmarks: the mesh vertices that carry them."""
from __future__ import annotations

import numpy as np

from .geometry import EYE_OPENING_HALF_WIDTH_PHI, EYE_OPENING_PHI, MOUTH_HALF_WIDTH_PHI, seam_height
from .mesh import Neutral
from .texture import BROW_EDGE_BLUR, brow_centre, brow_half_thickness, lip_outline

# The jaw contour (iBUG 0-16), subject's right ear to the left one, as points on the skin that
# the nearest vertex takes: on the frontal outline of the cheeks and jaw, in front of the ears.
CONTOUR_RIGHT_HALF = (
    (-0.7, 0.0, 0.15), (-0.7, -0.17, 0.15), (-0.68, -0.34, 0.15), (-0.64, -0.51, 0.18), (-0.57, -0.67, 0.25),
    (-0.47, -0.82, 0.35), (-0.35, -0.95, 0.5), (-0.2, -1.04, 0.68), (0.0, -1.09, 0.78),
)
# iBUG-300W puts the five eyebrow points along the brow's upper edge, from its outer tip (17, 26)
# to its inner end (21, 22), both ends included: |x| from the outer end of the painted brow (where
# it fades out, see ``texture``) to its inner one, just inside the edge's blur.
BROW_LANDMARK_X = tuple(np.linspace(0.53, 0.1, 5).tolist())

# Across the mouth (0 centre, ±1 corners): the peaks of the upper lip's bow (50, 52) and the lower
# lip's points below them (56, 58). iBUG's inner-lip points 61/63 and 65/67 sit at these columns
# too: the mean of the iBUG-300W training shapes (the initial shape in dlib's 68-point predictor)
# has 50/52 at ±0.26, 61/63 at ±0.26, 56/58 at ±0.28 and 65/67 at ±0.27 of the half width.
UPPER_LIP_PEAK_S = 0.22
LOWER_LIP_INNER_S = 0.25


def _brow_top(abs_x: float) -> float:
    return float(brow_centre(abs_x) + brow_half_thickness(abs_x) - BROW_EDGE_BLUR)


def landmark_ids(face: Neutral) -> np.ndarray:
    """68 vertex ids in the iBUG-300W order. The eyelid and inner-lip points sit on the grid rows of
    the lid margins and of the two edges of the lip seam, so they follow blinks and the jaw exactly."""
    layout, rows = face.layout, face.layout.rows
    head = face.vertices[: layout.head_vertices]
    front_skin = np.nonzero(face.front[: layout.head_vertices] > 0.9)[0]

    def nearest(point: tuple[float, ...]) -> int:
        return int(np.argmin(np.linalg.norm(head - np.asarray(point), axis=1)))

    def nearest_front(x: float, y: float) -> int:
        """The frontmost skin at (x, y) as seen from the camera."""
        candidates = head[front_skin]
        return int(front_skin[np.argmin(np.hypot(candidates[:, 0] - x, candidates[:, 1] - y))])

    def on_row(row: int, phi: float) -> int:
        return int(layout.grid_index(row, np.argmin(np.abs(layout.phi - phi))))

    def eye(side: float, eye_s: float) -> float:
        return side * (EYE_OPENING_PHI + eye_s * EYE_OPENING_HALF_WIDTH_PHI)

    def outer_lip(row_band: str, mouth_s: float, upper_lip: bool) -> int:
        """The vertex of the column at ``mouth_s`` nearest the lip's border."""
        column = np.argmin(np.abs(layout.phi - mouth_s * MOUTH_HALF_WIDTH_PHI))
        upper_edge, lower_edge = lip_outline(np.array(mouth_s))
        border = seam_height(np.array(mouth_s)) + (upper_edge if upper_lip else -lower_edge)
        band = rows.band(row_band)
        return int(layout.grid_index(band[np.argmin(np.abs(head[layout.grid_index(band, column), 1] - border))], column))

    contour = [nearest(p) for p in CONTOUR_RIGHT_HALF] + [nearest((-x, y, z)) for x, y, z in CONTOUR_RIGHT_HALF[-2::-1]]
    brows = [nearest_front(-x, _brow_top(x)) for x in BROW_LANDMARK_X]
    brows += [nearest_front(x, _brow_top(x)) for x in BROW_LANDMARK_X[::-1]]
    midline = head[layout.grid_index(np.arange(rows.surface_rows), 0)]
    tip_row = np.argmax(np.where(np.abs(midline[:, 1] + 0.4) < 0.1, midline[:, 2], -np.inf))
    bridge_rows = [np.argmin(np.abs(midline[:, 1] - y)) for y in (0.06, -0.08, -0.22)]
    nose = [int(layout.grid_index(row, 0)) for row in (*bridge_rows, tip_row)]
    nostrils = [nearest_front(x, y) for x, y in ((-0.11, -0.455), (-0.055, -0.475), (0.0, -0.482),
                                                (0.055, -0.475), (0.11, -0.455))]
    upper, lower = rows.last_row("upper_lid"), rows.last_row("eye_opening")
    # Each eye clockwise in the image from its left corner: right eye outer corner first, left eye inner.
    right_eye = [on_row(upper, eye(-1, 1)), on_row(upper, eye(-1, 0.33)), on_row(upper, eye(-1, -0.33)),
                 on_row(upper, eye(-1, -1)), on_row(lower, eye(-1, -0.33)), on_row(lower, eye(-1, 0.33))]
    left_eye = [on_row(upper, eye(1, -1)), on_row(upper, eye(1, -0.33)), on_row(upper, eye(1, 0.33)),
                on_row(upper, eye(1, 1)), on_row(lower, eye(1, 0.33)), on_row(lower, eye(1, -0.33))]
    seam_top, seam_bottom = rows.last_row("upper_lip"), rows.last_row("mouth_seam")
    corners = [int(np.argmin(np.abs(layout.phi - side * MOUTH_HALF_WIDTH_PHI))) for side in (-1.0, 1.0)]
    # iBUG's inner mouth corners sit just inside the outer ones: one column further in.
    inner_corners = [(corners[0] + 1) % layout.columns, corners[1] - 1]
    outer_mouth = [
        int(layout.grid_index(seam_top, corners[0])),
        *(outer_lip("upper_lip", s, upper_lip=True) for s in (-0.6, -UPPER_LIP_PEAK_S, 0.0, UPPER_LIP_PEAK_S, 0.6)),
        int(layout.grid_index(seam_top, corners[1])),
        *(outer_lip("lower_lip", s, upper_lip=False) for s in (0.6, LOWER_LIP_INNER_S, 0.0, -LOWER_LIP_INNER_S, -0.6)),
    ]
    # The inner-lip points 61/63 under the upper lip's peaks, 65/67 over 56/58 (see above), not
    # halfway to the inner corners.
    inner_mouth = [
        int(layout.grid_index(seam_top, inner_corners[0])),
        *(on_row(seam_top, s * MOUTH_HALF_WIDTH_PHI) for s in (-UPPER_LIP_PEAK_S, 0.0, UPPER_LIP_PEAK_S)),
        int(layout.grid_index(seam_top, inner_corners[1])),
        *(on_row(seam_bottom, s * MOUTH_HALF_WIDTH_PHI) for s in (LOWER_LIP_INNER_S, 0.0, -LOWER_LIP_INNER_S)),
    ]
    return np.array(contour + brows + nose + nostrils + right_eye + left_eye + outer_mouth + inner_mouth)
