"""Linear parametric face models (3DMMs) in Deep3DFaceRecon's ``BFM_model_front.mat`` layout.

One loader serves the Basel Face Model 2009 front model that users bring and the procedural demo
model that the pack generates, because both are written in the same ``.mat`` layout:

=============  ============  ==========================================================
key            shape         meaning
=============  ============  ==========================================================
meanshape      1 × 3N        mean vertex positions, x0 y0 z0 x1 … (model units, ~decimetres)
idBase         3N × n_id     identity basis, columns scaled so coefficients are ~N(0, 1)
exBase         3N × n_exp    expression basis
meantex        1 × 3N        mean per-vertex albedo, r g b in 0..255
texBase        3N × n_tex    albedo basis (0..255 units)
tri            F × 3         triangles, 1-based vertex indices, counter-clockwise seen from outside
keypoints      1 × 68        1-based vertex ids of the 68 iBUG landmarks
point_buf      N × 8         (optional, unused) 1-based ids of the triangles around each vertex
exNames        n_exp strings (optional, ours) names of semantic expression directions
eyeballLeft    1 × k         (optional, ours) 1-based vertex ids that gaze rotates, subject's left eye
eyeballRight   1 × k         (optional, ours) the same for the right eye
surface        N × 3         (optional, ours) surface coordinates in 0..1; default: the mean shape
                             normalised per axis (a projected-normalised-coordinate code)
=============  ============  ==========================================================
"""
from __future__ import annotations

import warnings
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..concurrent import parts_for, run_concurrently
from ..errors import ModelFileError
from ..mesh_cache import LastDerived, frame_offset_ids
from .coefficients import CoefficientDims, FaceCoefficients

BFM_FILE_NAME = "BFM_model_front.mat"
MODEL_FOLDER_HINT = "ComfyUI/models/3dmm/"
NUM_LANDMARKS = 68
# Deep3DFaceRecon adds 0.8 to the ambient (DC) SH term of each colour channel.
AMBIENT_LIGHT = 0.8


def rotation_matrices(angles: torch.Tensor) -> torch.Tensor:
    """Euler angles ``[B, 3]`` (x, y, z, radians) to matrices ``[B, 3, 3]`` with R = Rz·Ry·Rx."""
    x, y, z = angles.unbind(-1)
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    cx, sx, cy, sy, cz, sz = x.cos(), x.sin(), y.cos(), y.sin(), z.cos(), z.sin()
    rot_x = torch.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], -1).view(-1, 3, 3)
    rot_y = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).view(-1, 3, 3)
    rot_z = torch.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one], -1).view(-1, 3, 3)
    return rot_z @ rot_y @ rot_x


def gaze_matrices(gaze: torch.Tensor) -> torch.Tensor:
    """Gaze ``[B, 2]`` (pitch up, yaw towards +x) to eye rotations ``[B, 3, 3]``."""
    pitch, yaw = gaze.unbind(-1)
    return rotation_matrices(torch.stack([-pitch, yaw, torch.zeros_like(yaw)], dim=-1))


def _per_frame_product(coefficients: torch.Tensor, basis: torch.Tensor, last_row: LastDerived[torch.Tensor]) -> torch.Tensor:
    """``coefficients [B, k] @ basis [k, 3N]``, computed once when every frame has the same
    coefficients (one person's identity and albedo through a video), and that row's product kept
    in ``last_row`` for the video's next batch. The product reads the whole basis from memory
    (tens of megabytes for BFM), which is most of its time."""
    if not (coefficients.shape[0] == 1 or bool((coefficients == coefficients[:1]).all())):
        return coefficients @ basis
    row = coefficients[:1]
    if torch.is_grad_enabled() and (row.requires_grad or basis.requires_grad):
        product = row @ basis
    else:
        product = last_row.get(basis, (row.dtype, tuple(row.flatten().tolist())), lambda: row @ basis)
    return product.expand(coefficients.shape[0], -1)


def _flat_basis(basis: torch.Tensor) -> torch.Tensor:
    """``[k, N, 3]`` as contiguous float32 ``[k, 3N]``, subnormal values set to zero. Bases built from
    Gaussian falloffs (the demo model's) hold hundreds of thousands of them, and x86 CPUs handle
    every product with a subnormal in slow microcode: the expression product ran 7× slower. Below
    1.2e-38 they cannot change a float32 vertex or albedo."""
    flat = basis.float().reshape(basis.shape[0], -1).contiguous()
    return flat.masked_fill(flat.abs() < torch.finfo(torch.float32).tiny, 0.0)


_incidences: LastDerived[torch.Tensor] = LastDerived()
_identity_rows: LastDerived[torch.Tensor] = LastDerived()
_albedo_rows: LastDerived[torch.Tensor] = LastDerived()
_flat_corners: LastDerived[list[torch.Tensor]] = LastDerived()


def _incidence(triangles: torch.Tensor, num_vertices: int, dtype: torch.dtype) -> torch.Tensor:
    """The sparse ``[N, F]`` matrix with a 1 where vertex n is a corner of triangle f (CSR), built once per mesh."""

    def build() -> torch.Tensor:
        vertex_ids = triangles.detach().reshape(-1)
        order = torch.argsort(vertex_ids, stable=True)
        row_starts = torch.zeros(num_vertices + 1, dtype=torch.long, device=triangles.device)
        row_starts[1:] = torch.cumsum(torch.bincount(vertex_ids, minlength=num_vertices), 0)
        with warnings.catch_warnings():  # "sparse CSR support is in beta": the product used here is long stable
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(
                row_starts, order.div(3, rounding_mode="floor"),
                torch.ones(order.numel(), dtype=dtype, device=triangles.device), (num_vertices, triangles.shape[0]),
                check_invariants=False,
            )  # fmt: skip

    return _incidences.get(triangles, (num_vertices, triangles.device, dtype), build)


def _flat_corner_ids(triangles: torch.Tensor, frames: int, num_vertices: int) -> list[torch.Tensor]:
    """:func:`~..mesh_cache.frame_offset_ids` of the triangles' corners, triangle-major (the same for
    every batch of one size)."""
    return _flat_corners.get(triangles, (frames, num_vertices),
                             lambda: frame_offset_ids(tuple(triangles.t()), frames, num_vertices, frames_inner=True))


class MorphableModel(nn.Module):
    """A linear 3DMM: vertices, albedo and normals from coefficients, batched over frames."""

    def __init__(
        self,
        mean_shape: torch.Tensor,
        identity_basis: torch.Tensor,
        expression_basis: torch.Tensor,
        mean_albedo: torch.Tensor,
        albedo_basis: torch.Tensor,
        triangles: torch.Tensor,
        landmark_ids: torch.Tensor,
        surface_coords: torch.Tensor | None = None,
        expression_names: list[str] | None = None,
        eyeball_ids: tuple[torch.Tensor, torch.Tensor] | None = None,
        name: str = "face model",
    ) -> None:
        """Shapes: mean_shape ``[N, 3]``; bases ``[k, N, 3]``; mean_albedo ``[N, 3]`` in 0..1;
        triangles ``[F, 3]`` 0-based; landmark_ids ``[68]`` 0-based."""
        super().__init__()
        self.name = name
        self.register_buffer("mean_shape", mean_shape.float().contiguous())
        self.register_buffer("identity_basis", _flat_basis(identity_basis))
        self.register_buffer("expression_basis", _flat_basis(expression_basis))
        self.register_buffer("mean_albedo", mean_albedo.float().contiguous())
        self.register_buffer("albedo_basis", _flat_basis(albedo_basis))
        self.register_buffer("triangles", triangles.long().contiguous())
        self.register_buffer("landmark_ids", landmark_ids.long().contiguous())
        if surface_coords is None:
            low, high = mean_shape.amin(0), mean_shape.amax(0)
            surface_coords = (mean_shape - low) / (high - low).clamp_min(1e-8)
        self.register_buffer("surface_coords", surface_coords.float().contiguous())
        self.expression_names = list(expression_names or [])
        if eyeball_ids is None:
            eyeball_ids = (torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
        self.register_buffer("eyeball_left", eyeball_ids[0].long())
        self.register_buffer("eyeball_right", eyeball_ids[1].long())

    # sizes ----------------------------------------------------------------------------------
    @property
    def num_vertices(self) -> int:
        return self.mean_shape.shape[0]

    @property
    def num_triangles(self) -> int:
        return self.triangles.shape[0]

    @property
    def dims(self) -> CoefficientDims:
        return CoefficientDims(
            self.identity_basis.shape[0], self.expression_basis.shape[0], self.albedo_basis.shape[0]
        )

    @property
    def has_eyeballs(self) -> bool:
        return self.eyeball_left.numel() > 0 and self.eyeball_right.numel() > 0

    def expression_index(self, name: str) -> int:
        if name not in self.expression_names:
            raise KeyError(f"{self.name} has no expression direction named '{name}'")
        return self.expression_names.index(name)

    # geometry -------------------------------------------------------------------------------
    def shape(
        self,
        identity: torch.Tensor,
        expression: torch.Tensor,
        gaze: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Object-space vertices ``[B, N, 3]`` (before pose)."""
        offsets = _per_frame_product(identity, self.identity_basis, _identity_rows) + expression @ self.expression_basis
        # In place on the new sum (autograd keeps nothing of it): a BFM batch is megabytes, and every
        # new one is memory the CPU must fault in.
        vertices = offsets.view(offsets.shape[0], self.num_vertices, 3).add_(self.mean_shape)
        if gaze is not None and self.has_eyeballs:
            self._apply_gaze_(vertices, gaze)
        return vertices

    def _apply_gaze_(self, vertices: torch.Tensor, gaze: torch.Tensor) -> None:
        rotation = gaze_matrices(gaze)
        for ids in (self.eyeball_left, self.eyeball_right):
            eye = vertices[:, ids]
            center = eye.mean(dim=1, keepdim=True)
            vertices[:, ids] = (eye - center) @ rotation.transpose(1, 2) + center

    def albedo(self, texture: torch.Tensor) -> torch.Tensor:
        """Per-vertex albedo ``[B, N, 3]`` in 0..1 (not clamped: lighting may push it further)."""
        return self.mean_albedo.unsqueeze(0) + _per_frame_product(texture, self.albedo_basis, _albedo_rows).view(
            texture.shape[0], self.num_vertices, 3
        )

    def vertex_normals(self, vertices: torch.Tensor) -> torch.Tensor:
        """Area-weighted unit vertex normals ``[B, N, 3]`` pointing out of the surface."""
        # Face normals on coordinate planes from flat 1-D gathers, then summed onto the vertices
        # as one sparse (vertex × triangle incidence) product for all frames and axes: a tenth of
        # the scattered adds index_add_ would do, and multi-threaded.
        frames, count, _ = vertices.shape
        planes = vertices.permute(2, 0, 1).reshape(3, -1)
        corners = _flat_corner_ids(self.triangles, frames, count)
        # 1-D gathers run on one thread: on a CPU they run concurrently.
        gathered = run_concurrently(
            [partial(plane.index_select, 0, ids) for plane in planes for ids in corners],
            parts_for(vertices.device, corners[0].numel()),
        )
        (ax, bx, cx), (ay, by, cy), (az, bz, cz) = gathered[:3], gathered[3:6], gathered[6:]
        # Gathered triangle-major, [F, B], so the stack below writes the product's row layout
        # [F, 3, B] in runs of B instead of transposing.
        ux, uy, uz, wx, wy, wz = (
            value.view(-1, frames) for value in (bx.sub_(ax), by.sub_(ay), bz.sub_(az), cx.sub_(ax), cy.sub_(ay), cz.sub_(az))
        )
        face_normals = torch.stack([(uy * wz).sub_(uz * wy), (uz * wx).sub_(ux * wz), (ux * wy).sub_(uy * wx)], 1)
        incidence = _incidence(self.triangles, count, vertices.dtype)
        sums = incidence @ face_normals.view(self.num_triangles, 3 * frames)
        normals = sums.t().reshape(3, frames * count)
        # Normalised on the planes: a norm over the last axis of the [B, N, 3] view is strided and
        # costs more than everything above. A planar view is returned; interpolation reads planes.
        normals.mul_((normals * normals).sum(0).clamp_min_(1e-24).rsqrt_())
        return normals.view(3, frames, count).permute(1, 2, 0)

    def pose(self, vertices: torch.Tensor, rotation: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
        """Object space to world space: R·v + t."""
        return vertices @ rotation_matrices(rotation).transpose(1, 2) + translation.unsqueeze(1)

    def posed_vertices(self, coeffs: FaceCoefficients) -> torch.Tensor:
        """World-space vertices ``[B, N, 3]`` for a coefficient sequence."""
        vertices = self.shape(coeffs.identity, coeffs.expression, coeffs.gaze)
        return self.pose(vertices, coeffs.rotation, coeffs.translation)

    def check_coefficients(self, coeffs: FaceCoefficients) -> None:
        if coeffs.dims != self.dims:
            raise ModelFileError(
                f"the coefficients were made for a face model with {coeffs.dims} but {self.name} has {self.dims}; "
                "use the same 3DMM for fitting and rendering"
            )

    # files ----------------------------------------------------------------------------------
    @classmethod
    def from_mat_arrays(cls, arrays: dict[str, np.ndarray], name: str) -> MorphableModel:
        """Build from the arrays of a ``.mat`` file after :func:`validate_mat_arrays`."""
        n = np.asarray(arrays["meanshape"]).size // 3

        def basis(key: str) -> torch.Tensor:
            values = np.asarray(arrays[key], dtype=np.float32)  # [3N, k]
            return torch.from_numpy(values.T.reshape(values.shape[1], n, 3).copy())

        def one_based(key: str) -> torch.Tensor:
            return torch.from_numpy(np.asarray(arrays[key]).astype(np.int64).reshape(-1) - 1)

        mean_shape = torch.from_numpy(np.asarray(arrays["meanshape"], dtype=np.float32).reshape(n, 3).copy())
        # Deep3DFaceRecon recentres the mean shape; so do we, so BFM poses mean the same thing.
        mean_shape = mean_shape - mean_shape.mean(0, keepdim=True)
        eyes = None
        if "eyeballLeft" in arrays and "eyeballRight" in arrays:
            eyes = (one_based("eyeballLeft"), one_based("eyeballRight"))
        surface = None
        if "surface" in arrays:
            surface = torch.from_numpy(np.asarray(arrays["surface"], dtype=np.float32).reshape(n, 3).copy())
        return cls(
            mean_shape=mean_shape,
            identity_basis=basis("idBase"),
            expression_basis=basis("exBase"),
            mean_albedo=torch.from_numpy(np.asarray(arrays["meantex"], dtype=np.float32).reshape(n, 3) / 255.0),
            albedo_basis=basis("texBase") / 255.0,
            triangles=torch.from_numpy(np.asarray(arrays["tri"]).astype(np.int64) - 1),
            landmark_ids=one_based("keypoints"),
            surface_coords=surface,
            expression_names=_strings(arrays.get("exNames")),
            eyeball_ids=eyes,
            name=name,
        )


def _strings(value) -> list[str]:
    if value is None:
        return []
    flat = np.asarray(value, dtype=object).reshape(-1)
    return [str(np.asarray(item).reshape(-1)[0]).strip() if np.asarray(item).size else "" for item in flat]


REQUIRED_KEYS = ("meanshape", "idBase", "exBase", "meantex", "texBase", "tri", "keypoints")


def resolve_face_model_path(path: str | Path) -> Path:
    """The ``.mat`` file for ``path``, which may also be a folder holding one (SadTalker's ``BFM_Fitting/``)."""
    path = Path(path)
    if path.is_dir():
        for candidate in (path / BFM_FILE_NAME, path / "BFM_Fitting" / BFM_FILE_NAME):
            if candidate.is_file():
                return candidate
        raise ModelFileError(
            f"no {BFM_FILE_NAME} in the folder {path.name}. Put Deep3DFaceRecon's {BFM_FILE_NAME} (or SadTalker's "
            f"whole BFM_Fitting/ folder) into {MODEL_FOLDER_HINT}"
        )
    if not path.is_file():
        raise ModelFileError(
            f"3DMM file '{path.name}' not found. Put {BFM_FILE_NAME} into {MODEL_FOLDER_HINT} (the Basel Face Model is "
            "non-commercial: register at the University of Basel and convert it with Deep3DFaceRecon), "
            "or choose the built-in demo face model"
        )
    return path


def read_mat_arrays(path: Path) -> dict[str, np.ndarray]:
    from scipy.io import loadmat

    try:
        raw = loadmat(str(path))
    except Exception as error:  # scipy raises ValueError, TypeError, OSError … for foreign files
        raise ModelFileError(f"{path.name} is not a readable MATLAB .mat file ({error})") from error
    return {key: value for key, value in raw.items() if not key.startswith("__")}


def validate_mat_arrays(arrays: dict[str, np.ndarray], file_name: str) -> None:
    """Raise :class:`ModelFileError` naming every missing key or wrong shape."""
    missing = [key for key in REQUIRED_KEYS if key not in arrays]
    if missing:
        hint = ""
        if "shapeMU" in arrays or "shapePC" in arrays:
            hint = (
                " This is the original BFM09 file (01_MorphableModel.mat); Deep3DFaceRecon's util/load_mats.py "
                f"converts it, together with Exp_Pca.bin, into {BFM_FILE_NAME}."
            )
        raise ModelFileError(
            f"{file_name} is not a 3DMM in the {BFM_FILE_NAME} layout: missing keys {missing} "
            f"(expected {list(REQUIRED_KEYS)}).{hint}"
        )
    mean = np.asarray(arrays["meanshape"])
    if mean.size == 0 or mean.size % 3 or min(mean.shape) != 1:
        raise ModelFileError(f"{file_name}: 'meanshape' must be 1 × 3N, got {mean.shape}")
    n3 = mean.size
    n = n3 // 3
    problems = []
    if np.asarray(arrays["meantex"]).size != n3:
        problems.append(f"'meantex' must be 1 × {n3}, got {np.asarray(arrays['meantex']).shape}")
    for key in ("idBase", "exBase", "texBase"):
        shape = np.asarray(arrays[key]).shape
        if len(shape) != 2 or shape[0] != n3 or shape[1] == 0:
            problems.append(f"'{key}' must be {n3} × k, got {shape}")
    tri = np.asarray(arrays["tri"])
    if tri.ndim != 2 or tri.shape[1] != 3 or tri.shape[0] == 0:
        problems.append(f"'tri' must be F × 3, got {tri.shape}")
    elif tri.min() < 1 or tri.max() > n:
        problems.append(f"'tri' must hold 1-based vertex ids in 1..{n}, found {tri.min()}..{tri.max()}")
    keypoints = np.asarray(arrays["keypoints"]).reshape(-1)
    if keypoints.size != NUM_LANDMARKS:
        problems.append(f"'keypoints' must hold {NUM_LANDMARKS} vertex ids, got {keypoints.size}")
    elif keypoints.min() < 1 or keypoints.max() > n:
        problems.append(f"'keypoints' must hold 1-based vertex ids in 1..{n}")
    for key in ("eyeballLeft", "eyeballRight"):
        if key in arrays:
            ids = np.asarray(arrays[key]).reshape(-1)
            if ids.size and (ids.min() < 1 or ids.max() > n):
                problems.append(f"'{key}' must hold 1-based vertex ids in 1..{n}")
    if "surface" in arrays and np.asarray(arrays["surface"]).size != n3:
        problems.append(f"'surface' must be {n} × 3, got {np.asarray(arrays['surface']).shape}")
    if problems:
        raise ModelFileError(f"{file_name} is not a valid 3DMM: " + "; ".join(problems))


def load_face_model(path: str | Path) -> MorphableModel:
    """Load a ``BFM_model_front.mat``-layout file (or a folder holding one)."""
    path = resolve_face_model_path(path)
    arrays = read_mat_arrays(path)
    validate_mat_arrays(arrays, path.name)
    return MorphableModel.from_mat_arrays(arrays, name=path.stem)


def save_face_model_mat(arrays: dict[str, np.ndarray], path: str | Path) -> None:
    """Write arrays in the ``BFM_model_front.mat`` layout (validated first, so bad files are never written)."""
    from scipy.io import savemat

    validate_mat_arrays(arrays, Path(path).name)
    savemat(str(path), arrays, do_compression=True)
