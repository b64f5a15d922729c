"""The demo face as ``BFM_model_front.mat`` arrays and as a :class:`~..model.MorphableModel`: the
parts assembled, cached per resolution."""
from __future__ import annotations

import functools

import numpy as np

from ...errors import TalkingFaceError
from ..model import MorphableModel
from .expression import EXPRESSION_NAMES, expression_fields
from .identity import identity_fields
from .landmarks import landmark_ids
from .mesh import BFM_SIZE_RESOLUTION, DEFAULT_RESOLUTION, MIN_RESOLUTION, MeshLayout, Neutral
from .texture import albedo_fields, albedo_regions, mean_albedo_colours

POINT_BUF_WIDTH = 8


def _point_buf(triangles: np.ndarray, vertex_count: int) -> np.ndarray:
    """``[N, 8]`` 1-based ids of each vertex's triangles, 0-padded as in BFM (whose normal code sums
    the face normals listed here). Poles have more than eight: eight evenly spread round the fan
    keep their sum pointing the right way."""
    corners = triangles.reshape(-1)
    order = np.argsort(corners, kind="stable")
    owners = corners[order]
    triangle_ids = order // 3 + 1
    counts = np.bincount(corners, minlength=vertex_count)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    buffer = np.zeros((vertex_count, POINT_BUF_WIDTH), dtype=np.int32)
    slot = np.arange(corners.size) - starts[owners]
    fits = counts[owners] <= POINT_BUF_WIDTH
    buffer[owners[fits], slot[fits]] = triangle_ids[fits]
    for vertex in np.nonzero(counts > POINT_BUF_WIDTH)[0]:
        fan = triangle_ids[starts[vertex] : starts[vertex] + counts[vertex]]
        buffer[vertex] = fan[np.linspace(0, fan.size, POINT_BUF_WIDTH, endpoint=False).astype(int)]
    return buffer


def _check_resolution(resolution: int) -> None:
    if not isinstance(resolution, (int, np.integer)) or isinstance(resolution, bool) or resolution < MIN_RESOLUTION:
        raise TalkingFaceError(
            f"the demo face model's resolution must be a whole number of at least {MIN_RESOLUTION}, got {resolution!r} "
            f"(default {DEFAULT_RESOLUTION}; {BFM_SIZE_RESOLUTION} gives the size of the Basel Face Model)"
        )


# Two builds stay cached: the default one everything uses and one more (a BFM-size build holds ~100 MB).
@functools.lru_cache(maxsize=2)
def _cached_arrays(resolution: int, seed: int) -> dict[str, np.ndarray]:
    layout = MeshLayout.for_resolution(resolution)
    face = Neutral.build(layout)
    triangles = layout.triangles()
    regions = albedo_regions(face)
    mean_albedo = mean_albedo_colours(face, regions)

    def basis(fields: np.ndarray) -> np.ndarray:  # [k, N, 3] → [3N, k], vertex-major x y z rows
        return np.ascontiguousarray(fields.reshape(fields.shape[0], -1).T, dtype=np.float32)

    def one_based(ids: np.ndarray) -> np.ndarray:
        return (np.asarray(ids) + 1).reshape(1, -1).astype(np.int32)

    left_eye, right_eye = layout.eyeball_ids
    arrays = {
        "meanshape": face.vertices.reshape(1, -1).astype(np.float32),
        "idBase": basis(identity_fields(face, seed)),
        "exBase": basis(expression_fields(face, seed)),
        "meantex": mean_albedo.reshape(1, -1).astype(np.float32),
        "texBase": basis(albedo_fields(face, regions, mean_albedo, seed)),
        "tri": (triangles + 1).astype(np.int32),
        "keypoints": one_based(landmark_ids(face)),
        "point_buf": _point_buf(triangles, face.vertices.shape[0]),
        "exNames": np.array(EXPRESSION_NAMES, dtype=object),
        "eyeballLeft": one_based(left_eye),
        "eyeballRight": one_based(right_eye),
    }
    for value in arrays.values():
        value.setflags(write=False)
    return arrays


def build_demo_face_arrays(resolution: int = DEFAULT_RESOLUTION, seed: int = 0) -> dict[str, np.ndarray]:
    """The demo face model as the arrays of a ``BFM_model_front.mat`` file (see :mod:`.model`).

    ``resolution`` sets the mesh density: about 7·resolution² vertices, 7.8k at the default and
    35.8k (the size of BFM) at :data:`BFM_SIZE_RESOLUTION`. ``seed`` picks the random parts of the
    bases (identity and albedo fields, small expression details); the same arguments always give
    the same arrays. The arrays are fresh copies, the caller's to change.
    """
    _check_resolution(resolution)
    return {key: value.copy() for key, value in _cached_arrays(int(resolution), int(seed)).items()}


def demo_face_model(resolution: int = DEFAULT_RESOLUTION) -> MorphableModel:
    """The demo face as a :class:`MorphableModel`. The arrays are built once per process and resolution;
    every call returns a new module, so moving one to a device never changes another."""
    _check_resolution(resolution)
    return MorphableModel.from_mat_arrays(_cached_arrays(int(resolution), 0), name="demo face")
