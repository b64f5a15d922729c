"""The demo head's mesh: grid rows that follow the eyelids and the lip seam, columns denser over the
face, the closed head grid and the two eyeballs, and the neutral face built on them."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .geometry import (
    CORNER_GAP,
    CROWN_Y,
    EYE_POCKET_Z,
    EYE_X,
    EYEBALL_RADIUS,
    EYEBALL_Z,
    LOWER_LID_HEIGHT,
    NECK_BOTTOM_Y,
    RESTING_EYE,
    SEAM_HALF_GAP,
    UPPER_LID_HEIGHT,
    EyeState,
    base_radius,
    eye_coordinate,
    eyelid_margins,
    front_weight,
    mouth_coordinate,
    seam_height,
    skin_radius,
    smoothstep,
)

DEFAULT_RESOLUTION = 32
# Resolution 70 gives 35,784 vertices and 71,556 triangles, the size of BFM_model_front.mat
# (35,709 and 70,789): the render benchmarks use it.
BFM_SIZE_RESOLUTION = 70
MIN_RESOLUTION = 8


ROW_BANDS = (
    ("crown", 0.36, 1), ("forehead", 0.26, 1), ("upper_lid", 0.1, 2), ("eye_opening", 0.1, 2),
    ("lower_lid", 0.08, 2), ("midface", 0.3, 2), ("upper_lip", 0.16, 2), ("mouth_seam", 0.1, 2),
    ("lower_lip", 0.14, 2), ("chin", 0.3, 2), ("neck", 0.25, 1),
)
ROW_BOUNDARIES = (
    CROWN_Y, 0.5, 0.15, "upper_margin", "lower_margin", -0.13, -0.53, "seam_top", "seam_bottom", -0.86, -1.35,
    NECK_BOTTOM_Y,
)
# Away from the eyes and the mouth the feature rows run round the head at these heights.
BOUNDARIES_AWAY = {"upper_margin": 0.055, "lower_margin": -0.045, "seam_top": -0.655, "seam_bottom": -0.705}
CAP_RINGS_PER_RESOLUTION = 0.08


def _feature_boundaries(phi: np.ndarray, left: EyeState, right: EyeState) -> dict[str, np.ndarray]:
    """Per-column heights of the lid margins and the two edges of the lip seam band."""
    eye_s = eye_coordinate(phi)
    near_eye = 1.0 - smoothstep(1.0, 1.6, np.abs(eye_s))
    upper_l, lower_l = eyelid_margins(eye_s, left)
    upper_r, lower_r = eyelid_margins(eye_s, right)
    upper, lower = np.where(phi >= 0, upper_l, upper_r), np.where(phi >= 0, lower_l, lower_r)
    mouth_s = mouth_coordinate(phi)
    near_mouth = 1.0 - smoothstep(1.0, 1.5, np.abs(mouth_s))
    half_gap = np.maximum(SEAM_HALF_GAP * np.sqrt(np.clip(1.0 - mouth_s**2, 0.0, None)), CORNER_GAP / 2.0)
    seam = seam_height(mouth_s)
    blend = {"upper_margin": (upper, near_eye), "lower_margin": (lower, near_eye),
             "seam_top": (seam + half_gap, near_mouth), "seam_bottom": (seam - half_gap, near_mouth)}
    return {name: BOUNDARIES_AWAY[name] + (curve - BOUNDARIES_AWAY[name]) * weight
            for name, (curve, weight) in blend.items()}


def _row_density(y: np.ndarray) -> np.ndarray:
    """Extra rows for the eyebrows and round the tip and the underside of the nose."""
    return 1.0 + 2.5 * np.exp(-(((y + 0.42) / 0.07) ** 2)) + 1.5 * np.exp(-(((y - 0.22) / 0.08) ** 2))


def _band_fractions(top: float, bottom: float, rows: int) -> np.ndarray:
    """Where a band's rows sit between its ends: equal steps of arc length down the face's profile."""
    y = np.linspace(top, bottom, 257)
    profile = base_radius(np.zeros_like(y), np.ones_like(y), y)
    steps = np.hypot(np.diff(y), np.diff(profile)) * _row_density((y[1:] + y[:-1]) / 2.0)
    arc = np.concatenate([[0.0], np.cumsum(steps)])
    return np.interp(np.arange(1, rows + 1) / rows * arc[-1], arc, np.linspace(0.0, 1.0, 257))


@dataclass(frozen=True)
class _RowLayout:
    """The grid's rows: how many per band and where they sit inside it."""

    band_rows: dict[str, int]
    band_start: dict[str, int]
    fractions: dict[str, np.ndarray]
    cap_rings: int

    @classmethod
    def for_resolution(cls, resolution: int) -> _RowLayout:
        band_rows, band_start, fractions, start = {}, {}, {}, 0
        for index, (name, per_resolution, minimum) in enumerate(ROW_BANDS):
            rows = max(minimum, round(per_resolution * resolution))
            top, bottom = (BOUNDARIES_AWAY.get(b, b) for b in ROW_BOUNDARIES[index : index + 2])
            band_rows[name], band_start[name], fractions[name] = rows, start, _band_fractions(top, bottom, rows)
            start += rows
        return cls(band_rows, band_start, fractions, max(1, round(CAP_RINGS_PER_RESOLUTION * resolution)))

    @property
    def surface_rows(self) -> int:
        return sum(self.band_rows.values())

    @property
    def rows(self) -> int:
        return self.surface_rows + self.cap_rings

    def band(self, name: str) -> np.ndarray:
        return np.arange(self.band_start[name], self.band_start[name] + self.band_rows[name])

    def last_row(self, name: str) -> int:
        return self.band_start[name] + self.band_rows[name] - 1

    def heights(self, phi: np.ndarray, left: EyeState, right: EyeState) -> np.ndarray:
        """Row heights ``[surface_rows, columns]`` (the cap rings lie at the neck's bottom)."""
        features = _feature_boundaries(phi, left, right)
        ends = [np.broadcast_to(features[b] if isinstance(b, str) else np.float64(b), phi.shape)
                for b in ROW_BOUNDARIES]
        return np.concatenate([
            top + (bottom - top) * self.fractions[name][:, None]
            for (name, _, _), top, bottom in zip(ROW_BANDS, ends[:-1], ends[1:], strict=True)
        ])


def _column_azimuths(columns: int) -> np.ndarray:
    """Azimuths of the grid columns, 0 straight ahead, increasing towards +x; denser over the face."""
    fine = np.linspace(0.0, math.pi, 2049)
    density = 0.4 + smoothstep(1.15, 0.75, fine)
    cdf = np.concatenate([[0.0], np.cumsum((density[1:] + density[:-1]) / 2.0)])
    half = np.interp(np.arange(columns // 2 + 1) / (columns // 2) * cdf[-1], cdf, fine)
    return np.concatenate([half[:-1], -half[:0:-1]])


def _closed_grid_triangles(rows: int, columns: int) -> np.ndarray:
    """Triangles of a grid closed by a pole before its first row and after its last, counter-clockwise
    seen from outside. Vertex 0 is the first pole, 1 + r·columns + c the grid, the last the other pole."""
    c = np.arange(columns)
    c_next = (c + 1) % columns
    last_pole = 1 + rows * columns
    first_fan = np.stack([np.zeros_like(c), 1 + c, 1 + c_next], axis=1)
    r = np.arange(rows - 1)[:, None]
    here, below = 1 + r * columns + c, 1 + (r + 1) * columns + c
    here_next, below_next = 1 + r * columns + c_next, 1 + (r + 1) * columns + c_next
    quads = np.stack([here, below, here_next, here_next, below, below_next], axis=-1).reshape(-1, 3)
    last_row = 1 + (rows - 1) * columns
    last_fan = np.stack([last_row + c, np.full_like(c, last_pole), last_row + c_next], axis=1)
    return np.concatenate([first_fan, quads, last_fan])


def _eyeball_polar_angles(resolution: int) -> np.ndarray:
    """Ring angles from the front pole. Fixed rings just inside and outside the pupil and iris edges
    keep those edges crisp at every resolution; the back mirrors the front, so that the mean of the
    vertices (what gaze turns about) is the eyeball's centre."""
    around_iris = np.array([0.09, 0.15, 0.19, 0.3, 0.41, 0.45, 0.5])
    middle = np.linspace(0.5, math.pi - 0.5, max(4, round(0.2 * resolution)) + 1)[1:-1]
    return np.concatenate([around_iris, middle, math.pi - around_iris[::-1]])


def eyeball_centre(side: float) -> np.ndarray:
    return np.array([side * EYE_X, 0.0, EYEBALL_Z])


@dataclass(frozen=True)
class MeshLayout:
    """The mesh at one resolution: grid rows and column azimuths of the head, rings and segments of
    the eyeballs. Vertices: the crown pole, the grid row by row, the neck pole, then each eyeball."""

    rows: _RowLayout
    phi: np.ndarray
    eye_polar: np.ndarray
    eye_segments: int

    @classmethod
    def for_resolution(cls, resolution: int) -> MeshLayout:
        return cls(
            rows=_RowLayout.for_resolution(resolution),
            phi=_column_azimuths(2 * round(1.5 * resolution)),
            eye_polar=_eyeball_polar_angles(resolution),
            eye_segments=max(12, 2 * round(0.375 * resolution)),
        )

    @property
    def columns(self) -> int:
        return self.phi.size

    @property
    def head_vertices(self) -> int:
        return 2 + self.rows.rows * self.columns

    @property
    def eyeball_vertices(self) -> int:
        return 2 + self.eye_polar.size * self.eye_segments

    @property
    def eyeball_ids(self) -> tuple[np.ndarray, np.ndarray]:
        left = self.head_vertices + np.arange(self.eyeball_vertices)
        return left, left + self.eyeball_vertices

    def grid_index(self, row: int | np.ndarray, column: int | np.ndarray) -> np.ndarray:
        return 1 + np.asarray(row) * self.columns + np.asarray(column)

    def triangles(self) -> np.ndarray:
        head = _closed_grid_triangles(self.rows.rows, self.columns)
        eye = _closed_grid_triangles(self.eye_polar.size, self.eye_segments)
        left, right = self.eyeball_ids
        return np.concatenate([head, eye + left[0], eye + right[0]])

    def skin(self, left: EyeState = RESTING_EYE, right: EyeState = RESTING_EYE) -> np.ndarray:
        """Head vertices ``[head_vertices, 3]`` with the eyes held as given."""
        heights = self.rows.heights(self.phi, left, right)
        phi = np.broadcast_to(self.phi, heights.shape)
        radius = skin_radius(phi, heights)
        features = _feature_boundaries(self.phi, left, right)
        gap = features["upper_margin"] - features["lower_margin"]
        recess = smoothstep(0.1, 0.45, gap / (UPPER_LID_HEIGHT + LOWER_LID_HEIGHT))
        recess = np.where(np.abs(eye_coordinate(self.phi)) < 1.0, recess, 0.0)
        inside_opening = self.rows.band("eye_opening")[:-1]  # its last row is the lower margin
        pocket = EYE_POCKET_Z / np.maximum(np.cos(self.phi), 0.1)  # only used in front, where cos ≈ 0.9
        radius[inside_opening] += (pocket - radius[inside_opening]) * recess
        cap_scale = 1.0 - np.arange(1, self.rows.cap_rings + 1) / (self.rows.cap_rings + 1)
        bottom = skin_radius(self.phi, np.full_like(self.phi, NECK_BOTTOM_Y))
        radius = np.concatenate([radius, cap_scale[:, None] * bottom])
        heights = np.concatenate([heights, np.full((self.rows.cap_rings, self.columns), NECK_BOTTOM_Y)])
        grid = np.stack([radius * np.sin(self.phi), heights, radius * np.cos(self.phi)], axis=-1).reshape(-1, 3)
        return np.concatenate([[[0.0, CROWN_Y, 0.0]], grid, [[0.0, NECK_BOTTOM_Y, 0.0]]])

    def eyeballs(self) -> np.ndarray:
        """Both eyeballs ``[2 · eyeball_vertices, 3]``, left first, front poles looking down +z."""
        psi = 2.0 * math.pi * np.arange(self.eye_segments) / self.eye_segments
        theta = self.eye_polar[:, None]
        rings = np.stack(np.broadcast_arrays(np.sin(theta) * np.cos(psi), np.sin(theta) * np.sin(psi), np.cos(theta)), -1)
        unit = np.concatenate([[[0.0, 0.0, 1.0]], rings.reshape(-1, 3), [[0.0, 0.0, -1.0]]])
        return np.concatenate([eyeball_centre(side) + EYEBALL_RADIUS * unit for side in (1.0, -1.0)])


@dataclass(frozen=True)
class Neutral:
    """The neutral mesh in design space, with where each vertex sits on the grid."""

    layout: MeshLayout
    vertices: np.ndarray  # [N, 3]
    row: np.ndarray  # [N] grid row of head vertices, -1 for the poles and the eyeballs
    phi: np.ndarray  # [N] azimuth of head vertices (0 at the poles and the eyeballs)
    eye_polar: np.ndarray  # [N] angle from the front pole of eyeball vertices, NaN elsewhere

    @classmethod
    def build(cls, layout: MeshLayout) -> Neutral:
        grid_rows, grid_columns = np.divmod(np.arange(layout.rows.rows * layout.columns), layout.columns)
        eyes = 2 * layout.eyeball_vertices
        polar = np.concatenate([[0.0], np.repeat(layout.eye_polar, layout.eye_segments), [math.pi]])
        return cls(
            layout=layout,
            vertices=np.concatenate([layout.skin(), layout.eyeballs()]),
            row=np.concatenate([[-1], grid_rows, [-1], np.full(eyes, -1)]),
            phi=np.concatenate([[0.0], layout.phi[grid_columns], [0.0], np.zeros(eyes)]),
            eye_polar=np.concatenate([np.full(layout.head_vertices, np.nan), polar, polar]),
        )

    @property
    def x(self) -> np.ndarray:
        return self.vertices[:, 0]

    @property
    def y(self) -> np.ndarray:
        return self.vertices[:, 1]

    @property
    def z(self) -> np.ndarray:
        return self.vertices[:, 2]

    @property
    def on_eyeball(self) -> np.ndarray:
        return ~np.isnan(self.eye_polar)

    @property
    def front(self) -> np.ndarray:
        return np.where(self.on_eyeball, 0.0, front_weight(np.cos(self.phi)))

    def in_rows(self, rows: np.ndarray | int) -> np.ndarray:
        return np.isin(self.row, np.atleast_1d(rows))

    def below_seam(self) -> np.ndarray:
        """How much each vertex belongs to the lower lip and jaw rather than the upper lip: a step
        across the seam band's rows inside the mouth, a smooth ramp beside it."""
        rows = self.layout.rows
        band_position = self.row - rows.last_row("upper_lip")
        across_band = np.clip(band_position / rows.band_rows["mouth_seam"], 0.0, 1.0)
        mouth_s = np.abs(mouth_coordinate(self.phi))
        ramp_width = 0.02 + 0.25 * smoothstep(0.9, 1.6, mouth_s)
        ramp = smoothstep(ramp_width / 2.0, -ramp_width / 2.0, self.y - seam_height(np.clip(mouth_s, 0.0, 1.0)))
        inside = 1.0 - smoothstep(0.85, 1.0, mouth_s)
        weight = inside * across_band + (1.0 - inside) * ramp
        return np.where(self.row >= 0, weight, 0.0)
