"""Fit 3DMM pose, identity and expression to 68 iBUG landmarks by batched Levenberg–Marquardt.

The residuals are the weighted pixel distances between the observed landmarks and the projected
landmark vertices, plus Gaussian priors on the coefficients (they are ~N(0, 1) in these models)
and, optionally, on the pose. Only the rows of the bases that belong to landmark vertices (and
the jaw-contour candidates) are ever used, so a step costs the same for a 1k- or a 35k-vertex model.

Image faces (:meth:`LandmarkFitter.fit`) are independent problems solved side by side: one dense
``P × P`` system per face and iteration, with a damping factor of its own. A video
(:meth:`LandmarkFitter.fit_video`) shares one identity across its frames and penalises the
acceleration (second difference) of the fitted landmark tracks, which smooths jitter without
holding back steady motion. Measured on the landmarks rather than on the parameters, it cannot be
dodged through parameters that barely move them (depth against face size). The normal equations
are block pentadiagonal in the frames with a dense identity border, solved exactly by block
elimination (Schur complement on the identity).

Contour: the jaw landmarks 0–16 (except the chin, 8) that a detector returns lie on the visible
outline of the face, which slides over the surface as the head turns. For each of them the fitter
keeps a horizontal band of candidate vertices between the landmark vertex and the face's midline
(in front of the landmark vertex), and at every round picks the candidate that projects furthest
outwards: the silhouette point at that height for the current pose. At a frontal pose this is the
landmark vertex itself (up to perspective, which brings nearer points slightly further out).
"""
from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass

import torch

from ..errors import TalkingFaceError
from .camera import PerspectiveCamera
from .coefficients import FaceCoefficients
from .model import NUM_LANDMARKS, MorphableModel, rotation_matrices

POSE_GROUPS = ("rotation", "translation")
ALL_GROUPS = frozenset({"rotation", "translation", "identity", "expression"})
# iBUG-68 jaw line from the subject's right ear (0) over the chin (8) to the left ear (16).
JAW_CONTOUR = tuple(i for i in range(17) if i != 8)
# iBUG points on the facial midline: chin, nose bridge and tip, lip centres.
MIDLINE = (8, 27, 28, 29, 30, 33, 51, 57, 62, 66)


@dataclass
class FitConfig:
    """Settings of :class:`LandmarkFitter`.

    Costs are in squared pixels of the camera's image, summed over landmarks. A coefficient prior
    of ``w`` adds ``w·c²`` per coefficient: the MAP estimate for landmark noise of ``sqrt(w)`` px
    per coordinate when the coefficients are ~N(0, 1), so the defaults assume about 1 px (raise
    them for noisier detectors). The pose prior is relative to the motion it stands for: a pose
    change that moves the 68 landmarks of the mean frontal face by Δ px RMS costs
    ``pose_prior · 68 · Δ²``. Temporal smoothing adds ``temporal_smoothing · |a|²`` for the
    acceleration a (px per frame², all landmarks) of the fitted landmark tracks: the MAP weight
    for landmark noise σ when true accelerations are about σ / sqrt(temporal_smoothing).
    """

    identity_prior: float = 1.0
    expression_prior: float = 1.0
    # Pull rotation and translation towards the initial guess (the ``init`` coefficients, or the
    # closed-form estimate); 0 leaves the pose free.
    pose_prior: float = 0.0
    # Weight of the jaw landmarks (all but the chin) relative to the others: detectors place them
    # less consistently, and their correspondence is only approximate.
    contour_weight: float = 0.5
    # Move the jaw landmarks' vertices along the silhouette with the pose. Turn off for landmarks
    # that come from fixed model vertices (synthetic data, landmarks predicted in model space).
    contour: bool = True
    # Levenberg–Marquardt steps on the pose alone before all groups are freed; this keeps the
    # shape from bending to make up for a rough initial pose.
    pose_iterations: int = 5
    # Rounds of (re-select contour vertices, then LM steps); each round stops early once converged.
    # With contour off this is one round of rounds × iterations steps.
    rounds: int = 3
    iterations: int = 10
    # A face has converged when a step lowers its cost by less than this fraction.
    tolerance: float = 1e-5
    # Faces solved at once by :meth:`LandmarkFitter.fit` (bounds memory, not the result).
    batch_size: int = 512
    # Video: weight of the landmark acceleration penalty (see above); it smooths jitter without
    # holding back steady motion. 0 fits the frames independently except for the shared identity.
    temporal_smoothing: float = 1.0
    # Video: frames solved jointly. Longer videos take the identity from at most
    # ``identity_frames`` frames spread over the video, then solve windows one after another with
    # the identity fixed; each window re-fits ``chunk_overlap`` frames of the previous one and is
    # tied to the two frames before it, so the joins stay smooth. Memory grows with the window only.
    chunk_frames: int = 256
    chunk_overlap: int = 16
    identity_frames: int = 64

    def __post_init__(self) -> None:
        problems = [
            f"{name} must be at least {least}, got {getattr(self, name)}"
            for name, least in (
                ("identity_prior", 0), ("expression_prior", 0), ("pose_prior", 0), ("contour_weight", 0),
                ("pose_iterations", 0), ("rounds", 1), ("iterations", 1), ("batch_size", 1),
                ("temporal_smoothing", 0), ("chunk_frames", 2), ("chunk_overlap", 0), ("identity_frames", 1),
            )
            if not getattr(self, name) >= least
        ]
        if not self.tolerance > 0:
            problems.append(f"tolerance must be positive, got {self.tolerance}")
        if problems:
            raise TalkingFaceError("invalid Fit 3DMM settings: " + "; ".join(problems))


@dataclass
class FitResult:
    """Fitted coefficients (texture, lighting and gaze taken from ``init``, else zero), the RMS
    distance in px between observed and fitted landmarks per face (landmarks of weight zero left
    out), and the fitted landmark positions ``[B, 68, 2]`` in px."""

    coefficients: FaceCoefficients
    landmark_error: torch.Tensor
    fitted_landmarks: torch.Tensor


@dataclass
class _Problem:
    """The fixed data of one batch: observed landmarks, weights, priors, which columns move."""

    observed: torch.Tensor  # [B, L, 2]
    sqrt_weights: torch.Tensor  # [B, L]
    prior_weight: torch.Tensor  # [P]
    prior_mean: torch.Tensor  # [B, P]
    free: torch.Tensor  # [Pf] indices into the parameter vector

    def rows(self, index: torch.Tensor) -> _Problem:
        return _Problem(self.observed[index], self.sqrt_weights[index], self.prior_weight, self.prior_mean[index], self.free)


@dataclass
class _Rows:
    """Mean ``[1 or B, L, 3]`` and basis ``[1 or B, L, 3, K]`` rows of the vertices matched to the
    landmarks; a leading 1 means every face uses the same vertices (no per-face copy)."""

    mean: torch.Tensor
    basis: torch.Tensor

    @property
    def shared(self) -> bool:
        return self.mean.shape[0] == 1

    def take(self, index: torch.Tensor) -> _Rows:
        return self if self.shared else _Rows(self.mean[index], self.basis[index])


@dataclass
class _Chain:
    """A window of consecutive video frames and its smoothness term.

    ``frame_columns`` vary per frame, ``identity_columns`` are shared by the window (empty when
    the identity is fixed). The smoothness cost is ``smoothing``·Σ_k |L[k] − 2L[k+1] + L[k+2]|²
    over the projected landmark tracks L (px) of the window's frames, preceded by
    ``anchor_landmarks`` (up to two already fitted frames, held fixed). ``band`` holds the
    window's rows and columns of D₂ᵀD₂ (D₂ the second differences): diagonal, first and second
    off-diagonal ``[3, T]``, zero padded.
    """

    frame_columns: torch.Tensor
    identity_columns: torch.Tensor
    smoothing: float
    anchor_landmarks: torch.Tensor  # [A ≤ 2, 136]
    identity_prior: torch.Tensor
    band: torch.Tensor


class LandmarkFitter:
    """Fits a :class:`MorphableModel` seen through a :class:`PerspectiveCamera` to 68 landmarks.

    Parameters per face are ``rotation (3) | translation (3) | identity | expression`` in one
    vector; landmark coordinates are pixels of the camera's image (origin top-left, y down).
    """

    def __init__(
        self,
        model: MorphableModel,
        camera: PerspectiveCamera | None = None,
        config: FitConfig | None = None,
    ) -> None:
        if model.landmark_ids.numel() != NUM_LANDMARKS:
            raise TalkingFaceError(
                f"{model.name} defines {model.landmark_ids.numel()} landmarks; fitting needs the {NUM_LANDMARKS} iBUG points"
            )
        self.model = model
        self.camera = camera or PerspectiveCamera.deep3d()
        self.config = config or FitConfig()
        self.dims = model.dims
        self.num_params = 6 + self.dims.identity + self.dims.expression
        self._column_groups = [""] * self.num_params
        for group in ALL_GROUPS:
            span = self._group_slice(group)
            self._column_groups[span] = [group] * (span.stop - span.start)
        device = model.mean_shape.device
        self._contour_slots = torch.tensor(JAW_CONTOUR, device=device)
        rows, self.landmark_slots, self.candidate_slots, self.candidate_sides = self._contour_candidates()
        # Only these vertices ever enter the fit: landmark vertices and jaw-contour candidates.
        self.mean_rows = model.mean_shape[rows]  # [U, 3]
        bases = torch.cat([model.identity_basis, model.expression_basis], 0).view(-1, model.num_vertices, 3)
        self.basis_rows = bases[:, rows].permute(1, 2, 0).contiguous()  # [U, 3, n_id + n_exp]
        # Each distinct candidate is projected once; the padded [16, K] layout indexes into them.
        distinct, self._candidate_layout = torch.unique(self.candidate_slots, return_inverse=True)
        self._candidate_rows = self._rows(distinct.unsqueeze(0))
        self.pixels_per_unit = self._pixels_per_unit()

    # public ---------------------------------------------------------------------------------
    def fit(
        self,
        landmarks: torch.Tensor,
        weights: torch.Tensor | None = None,
        optimize: Collection[str] = ALL_GROUPS,
        init: FaceCoefficients | None = None,
    ) -> FitResult:
        """Fit each face of ``landmarks [B, 68, 2]`` on its own.

        ``weights`` ``[68]`` or ``[B, 68]`` multiply each landmark's squared residual (0 ignores it;
        default: 1, jaw contour ``config.contour_weight``). Groups left out of ``optimize`` keep
        their value from ``init`` (identity and expression default to zero; a fixed pose needs
        ``init``). Optimised groups start from ``init`` when given, the pose otherwise from a
        closed-form estimate.
        """
        optimize = self._check_groups(optimize, init)
        landmarks, weights = self._check_landmarks(landmarks, weights)
        if init is not None:
            self._check_init(init, landmarks.shape[0])
            init = init.to(landmarks.device, torch.float32).repeat_to(landmarks.shape[0])
        results = []
        for start in range(0, landmarks.shape[0], self.config.batch_size):
            part = slice(start, start + self.config.batch_size)
            results.append(
                self._fit_batch(landmarks[part], weights[part], optimize, init[part] if init is not None else None)
            )
        return FitResult(
            coefficients=FaceCoefficients.concat([r.coefficients for r in results]),
            landmark_error=torch.cat([r.landmark_error for r in results]),
            fitted_landmarks=torch.cat([r.fitted_landmarks for r in results]),
        )

    def fit_video(
        self,
        landmarks: torch.Tensor,
        weights: torch.Tensor | None = None,
        optimize: Collection[str] = ALL_GROUPS,
        init: FaceCoefficients | None = None,
    ) -> FitResult:
        """Fit the frames of one face ``landmarks [T, 68, 2]`` with one shared identity and
        temporally smoothed pose and expression (``config.temporal_smoothing``).

        Arguments as in :meth:`fit`. The identity row is the same in every frame of the result;
        a fixed identity is taken per frame from ``init``.
        """
        optimize = self._check_groups(optimize, init)
        landmarks, weights = self._check_landmarks(landmarks, weights)
        frames = landmarks.shape[0]
        if init is not None:
            self._check_init(init, frames)
            init = init.to(landmarks.device, torch.float32).repeat_to(frames)
        config = self.config
        params = self._initial_params(landmarks, weights, init)
        frame_groups = optimize - {"identity"}
        share_identity = "identity" in optimize
        if frames <= config.chunk_frames:
            params = self._fit_window(params, landmarks, weights, frame_groups, share_identity, params[:0])
        else:
            if share_identity:
                count = min(config.identity_frames, frames)
                picks = torch.linspace(0, frames - 1, count, device=landmarks.device).round().long().unique()
                sampled = self._fit_window(
                    params[picks], landmarks[picks], weights[picks], frame_groups, True, params[:0], smoothing=0.0
                )
                params[:, self._group_slice("identity")] = sampled[0, self._group_slice("identity")]
            params = self._fit_chunks(params, landmarks, weights, frame_groups)
        return self._result(params, landmarks, weights, init, self._select_contour(params))

    # setup ------------------------------------------------------------------------------------
    def _contour_candidates(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rows of the model used by the fit, and per jaw landmark its candidate rows and side.

        Returns vertex ids ``[U]``, landmark slots ``[68]`` into them, candidate slots
        ``[16, K]`` (padded with the landmark's own slot) and the outward side (±1) ``[16]``.
        """
        mean = self.model.mean_shape
        ids = self.model.landmark_ids
        # A band about one mesh edge tall holds roughly one row of vertices across the face.
        tri = self.model.triangles
        edges = mean[tri[:, [1, 2, 0]]] - mean[tri]
        band = 0.75 * edges.norm(dim=-1).median()
        midline = mean[ids[list(MIDLINE)], 0].mean()
        candidate_lists, sides = [], []
        for index in JAW_CONTOUR:
            point = mean[ids[index]]
            side = 1.0 if point[0] >= midline else -1.0
            outward = side * (mean[:, 0] - midline)
            in_band = (
                ((mean[:, 1] - point[1]).abs() <= band)
                & (outward >= 0)
                & (outward <= side * (point[0] - midline) + band)
                & (mean[:, 2] >= point[2] - band)
            )
            found = torch.nonzero(in_band).flatten()
            candidate_lists.append(torch.cat([ids[index : index + 1], found[found != ids[index]]]))
            sides.append(side)
        rows, inverse = torch.unique(torch.cat([ids, *candidate_lists]), return_inverse=True)
        landmark_slots = inverse[:NUM_LANDMARKS]
        width = max(len(c) for c in candidate_lists)
        candidate_slots = landmark_slots[self._contour_slots].unsqueeze(1).repeat(1, width)
        offset = NUM_LANDMARKS
        for row, candidates in enumerate(candidate_lists):
            candidate_slots[row, : len(candidates)] = inverse[offset : offset + len(candidates)]
            offset += len(candidates)
        return rows, landmark_slots, candidate_slots, mean.new_tensor(sides)

    def _pixels_per_unit(self) -> torch.Tensor:
        """RMS landmark motion in px per unit of each parameter, for the mean face seen frontally
        at the origin: the scale of the pose prior."""
        params = self.mean_rows.new_zeros(1, self.num_params)
        _, jacobian = self._tracks(params, self._landmark_rows(), torch.arange(self.num_params, device=params.device))
        return jacobian[0].norm(dim=0) / math.sqrt(NUM_LANDMARKS)

    def _group_slice(self, group: str) -> slice:
        n_id = self.dims.identity
        return {
            "rotation": slice(0, 3),
            "translation": slice(3, 6),
            "identity": slice(6, 6 + n_id),
            "expression": slice(6 + n_id, self.num_params),
        }[group]

    def _columns(self, groups: Collection[str]) -> torch.Tensor:
        columns = [torch.arange(self.num_params)[self._group_slice(g)] for g in groups]
        if not columns:
            return torch.zeros(0, dtype=torch.long, device=self.mean_rows.device)
        return torch.cat(columns).sort().values.to(self.mean_rows.device)

    # input checks ---------------------------------------------------------------------------
    def _check_groups(self, optimize: Collection[str], init: FaceCoefficients | None) -> frozenset[str]:
        groups = frozenset([optimize] if isinstance(optimize, str) else optimize)
        unknown = groups - ALL_GROUPS
        if unknown:
            raise TalkingFaceError(f"Fit 3DMM cannot optimise {sorted(unknown)}; choose from {sorted(ALL_GROUPS)}")
        if not groups:
            raise TalkingFaceError(f"Fit 3DMM has nothing to optimise: name at least one of {sorted(ALL_GROUPS)}")
        fixed_pose = [g for g in POSE_GROUPS if g not in groups]
        if fixed_pose and init is None:
            raise TalkingFaceError(f"{' and '.join(fixed_pose)} stay fixed, so pass their values as init coefficients")
        return groups

    def _check_landmarks(
        self, landmarks: torch.Tensor, weights: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if landmarks.ndim != 3 or landmarks.shape[1:] != (NUM_LANDMARKS, 2):
            raise TalkingFaceError(f"landmarks must be [faces, 68, 2] pixel coordinates, got {tuple(landmarks.shape)}")
        if landmarks.shape[0] == 0:
            raise TalkingFaceError("no landmarks to fit")
        finite = torch.isfinite(landmarks).flatten(1).all(-1)
        if not finite.all():
            bad = torch.nonzero(~finite).flatten().tolist()
            raise TalkingFaceError(f"landmarks of faces {bad[:10]} contain NaN or infinite values")
        device = self.mean_rows.device
        landmarks = landmarks.to(device, torch.float32)
        if weights is None:
            weights = torch.ones(NUM_LANDMARKS, device=device)
            weights[self._contour_slots] = self.config.contour_weight
        weights = torch.as_tensor(weights, dtype=torch.float32, device=device)
        if weights.shape not in ((NUM_LANDMARKS,), (landmarks.shape[0], NUM_LANDMARKS)):
            raise TalkingFaceError(
                f"landmark weights must be [68] or [{landmarks.shape[0]}, 68], got {tuple(weights.shape)}"
            )
        if (weights < 0).any() or not torch.isfinite(weights).all():
            raise TalkingFaceError("landmark weights must be finite and not negative")
        weights = weights.expand(landmarks.shape[0], NUM_LANDMARKS).contiguous()
        if ((weights > 0).sum(-1) < 4).any():
            raise TalkingFaceError("every face needs at least 4 landmarks of non-zero weight")
        return landmarks, weights

    def _check_init(self, init: FaceCoefficients, faces: int) -> None:
        self.model.check_coefficients(init)
        if init.frames not in (1, faces):
            raise TalkingFaceError(f"init coefficients have {init.frames} frames but there are {faces} faces")

    # model evaluation -------------------------------------------------------------------------
    def _rows(self, slots: torch.Tensor) -> _Rows:
        """Mean and basis rows for per-face slots ``[B, L]``, shared when all faces agree."""
        if bool((slots == slots[:1]).all()):
            slots = slots[:1]
        return _Rows(self.mean_rows[slots], self.basis_rows[slots])

    def _landmark_rows(self) -> _Rows:
        """The fixed landmark vertices, shared by all faces."""
        return self._rows(self.landmark_slots.unsqueeze(0))

    def _points(self, params: torch.Tensor, rows: _Rows) -> torch.Tensor:
        """Object-space points ``[B, L, 3]``."""
        coefficients = params[:, 6:]
        if rows.shared:
            return rows.mean + torch.einsum("lik,bk->bli", rows.basis[0], coefficients)
        return rows.mean + torch.einsum("blik,bk->bli", rows.basis, coefficients)

    def _residuals(
        self,
        params: torch.Tensor,
        rows: _Rows,
        observed: torch.Tensor,
        sqrt_weights: torch.Tensor | None,
        free: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Weighted residuals ``[B, 2L]`` and, when ``free`` is given, their Jacobian ``[B, 2L, Pf]``
        with respect to those parameter columns (analytic: faster than ``torch.func.jacfwd``)."""
        points = self._points(params, rows)
        angles = params[:, :3]
        rotation = rotation_matrices(angles)
        world = points @ rotation.transpose(1, 2) + params[:, None, 3:6]
        residual = self.camera.project(world) - observed
        if sqrt_weights is not None:
            residual = residual * sqrt_weights.unsqueeze(-1)
        residual = residual.flatten(1)
        if free is None:
            return residual, None
        # d(pixel)/d(world point): u = f·x/(d - z) + c, v = c - f·y/(d - z).
        inverse_depth = 1.0 / self.camera.depth(world)
        scale = self.camera.focal * inverse_depth
        if sqrt_weights is not None:
            scale = scale * sqrt_weights
        zero = torch.zeros_like(scale)
        d_pixel = torch.stack(
            [scale, zero, scale * world[..., 0] * inverse_depth, zero, -scale, -scale * world[..., 1] * inverse_depth],
            -1,
        ).view(*scale.shape, 2, 3)
        free_groups = {self._column_groups[column] for column in free.tolist()}
        blocks = []
        if "rotation" in free_groups:
            d_world = torch.einsum("bkij,blj->blik", _rotation_derivatives(angles), points)
            blocks.append((0, d_pixel @ d_world))
        if "translation" in free_groups:
            blocks.append((3, d_pixel))
        coefficient_groups = [g for g in ("identity", "expression") if g in free_groups]
        if coefficient_groups:
            # Only the basis columns of the free groups: an expression-only fit skips the identity.
            first = self._group_slice(coefficient_groups[0]).start
            last = self._group_slice(coefficient_groups[-1]).stop
            d_object = d_pixel @ rotation.unsqueeze(1)  # [B, L, 2, 3]
            basis = rows.basis[..., first - 6 : last - 6]
            if rows.shared:
                blocks.append((first, torch.einsum("blpi,lik->blpk", d_object, basis[0])))
            else:
                # Per-face rows: three broadcast multiply-adds beat B·L tiny matrix products.
                block = d_object[..., 0, None] * basis[:, :, None, 0]
                for axis in (1, 2):
                    block = block.addcmul(d_object[..., axis, None], basis[:, :, None, axis])
                blocks.append((first, block))
        jacobian = torch.cat([block for _, block in blocks], -1).flatten(1, 2)
        present = torch.cat(
            [torch.arange(start, start + block.shape[-1], device=params.device) for start, block in blocks]
        )
        if present.numel() == free.numel() and bool((present == free).all()):
            return residual, jacobian
        # Where each requested column sits among the blocks that were built.
        position = torch.full((self.num_params,), -1, dtype=torch.long, device=params.device)
        position[present] = torch.arange(present.numel(), device=params.device)
        return residual, jacobian[..., position[free]]

    def _cost(self, params: torch.Tensor, rows: _Rows, problem: _Problem) -> torch.Tensor:
        """Per-face cost: weighted squared landmark residuals plus priors, ``[B]`` float64."""
        residual, _ = self._residuals(params, rows, problem.observed, problem.sqrt_weights, None)
        prior = (problem.prior_weight * (params - problem.prior_mean).square()).sum(-1)
        return residual.square().sum(-1).double() + prior.double()

    def _select_contour(self, params: torch.Tensor) -> torch.Tensor:
        """Landmark slots ``[B, 68]`` with each jaw landmark moved to the candidate that projects
        furthest outwards: the silhouette at that height for the current pose and shape."""
        batch = params.shape[0]
        slots = self.landmark_slots.expand(batch, -1).clone()
        if not self.config.contour:
            return slots
        points = self._points(params, self._candidate_rows)
        rotation = rotation_matrices(params[:, :3])
        world = points @ rotation.transpose(1, 2) + params[:, None, 3:6]
        projected = self.camera.project(world)[:, self._candidate_layout]  # [B, 16, K, 2]
        # The face's own x axis as seen in the image (v points down), so roll and pitch count too.
        axis = torch.stack([rotation[:, 0, 0], -rotation[:, 1, 0]], -1)
        outward = self.candidate_sides[None, :, None, None] * axis[:, None, None, :]
        best = (projected * outward).sum(-1).argmax(-1)  # [B, 16]
        slots[:, self._contour_slots] = self.candidate_slots.gather(1, best.T).T
        return slots

    # initialisation ---------------------------------------------------------------------------
    def _initial_params(
        self, landmarks: torch.Tensor, weights: torch.Tensor, init: FaceCoefficients | None
    ) -> torch.Tensor:
        batch = landmarks.shape[0]
        params = landmarks.new_zeros(batch, self.num_params)
        if init is not None:
            for group in ALL_GROUPS:
                params[:, self._group_slice(group)] = getattr(init, group)
        else:
            params[:, :3], params[:, 3:6] = self._closed_form_pose(landmarks, weights, params)
        return params

    def _closed_form_pose(
        self, landmarks: torch.Tensor, weights: torch.Tensor, params: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled-orthographic pose from a weighted affine fit to the model's landmark vertices."""
        points = self._points(params, self._landmark_rows())
        center = self.camera.center
        # Camera-plane coordinates with y up, proportional to world x and y.
        target = torch.stack([landmarks[..., 0] - center, center - landmarks[..., 1]], -1)
        # Jaw points slide with the pose; lean on the inner face.
        trust = weights.clone()
        trust[:, self._contour_slots] *= 0.1
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
        translation_z = self.camera.distance - self.camera.focal / scale - rotated_centroid[:, 2]
        translation = torch.cat([translation_xy, translation_z.unsqueeze(-1)], -1)
        return _euler_angles(rotation), translation

    def _schedule(self) -> tuple[int, int]:
        """Rounds and LM steps per round; without contour there is nothing to re-select between rounds."""
        config = self.config
        if config.contour:
            return config.rounds, config.iterations
        return 1, config.rounds * config.iterations

    def _problem(self, landmarks: torch.Tensor, weights: torch.Tensor, params: torch.Tensor) -> _Problem:
        """Observations and priors; the caller sets which columns are free for each stage."""
        config = self.config
        prior_weight = params.new_zeros(self.num_params)
        prior_weight[self._group_slice("identity")] = config.identity_prior
        prior_weight[self._group_slice("expression")] = config.expression_prior
        prior_weight[:6] = config.pose_prior * NUM_LANDMARKS * self.pixels_per_unit[:6].square()
        prior_mean = torch.zeros_like(params)
        prior_mean[:, :6] = params[:, :6]
        return _Problem(landmarks, weights.sqrt(), prior_weight, prior_mean, self._columns([]))

    # per-face solver ----------------------------------------------------------------------------
    def _fit_batch(
        self,
        landmarks: torch.Tensor,
        weights: torch.Tensor,
        optimize: frozenset[str],
        init: FaceCoefficients | None,
    ) -> FitResult:
        config = self.config
        params = self._initial_params(landmarks, weights, init)
        problem = self._problem(landmarks, weights, params)
        pose_groups = optimize & set(POSE_GROUPS)
        if pose_groups and optimize != pose_groups and config.pose_iterations > 0:
            problem.free = self._columns(pose_groups)
            rows = self._rows(self._select_contour(params))
            params = self._levenberg_marquardt(params, rows, problem, config.pose_iterations)
        problem.free = self._columns(optimize)
        rounds, iterations = self._schedule()
        slots = None
        for _ in range(rounds):
            previous, slots = slots, self._select_contour(params)
            # A face whose correspondences did not change has already converged on this problem.
            moved = torch.ones_like(slots[:, 0], dtype=torch.bool) if previous is None else (slots != previous).any(-1)
            if not moved.any():
                break
            faces = torch.nonzero(moved).flatten()
            params = self._levenberg_marquardt(params, self._rows(slots), problem, iterations, faces)
        return self._result(params, landmarks, weights, init, slots)

    def _levenberg_marquardt(
        self,
        params: torch.Tensor,
        rows: _Rows,
        problem: _Problem,
        iterations: int,
        faces: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Damped Gauss–Newton steps, each face with its own damping, accepted only if they help.

        Only ``faces`` (default all) take steps; converged faces drop out of the batch, so the work
        follows the slowest faces only.
        """
        params = params.clone()
        free = problem.free
        prior_weight = problem.prior_weight[free]
        cost = self._cost(params, rows, problem)
        damping = torch.full_like(cost, 1e-3)
        active = torch.arange(params.shape[0], device=params.device) if faces is None else faces
        tolerance = self.config.tolerance
        for _ in range(iterations):
            part, part_rows = problem.rows(active), rows.take(active)
            current, current_cost = params[active], cost[active]
            residual, jacobian = self._residuals(current, part_rows, part.observed, part.sqrt_weights, free)
            gradient = (residual.unsqueeze(1) @ jacobian).squeeze(1)
            gradient = gradient + prior_weight * (current[:, free] - part.prior_mean[:, free])
            # Columns scaled to a unit diagonal of JᵀJ + prior: Marquardt's damping becomes λ·I and
            # float32 Cholesky stays accurate although pose and coefficient columns differ by
            # orders of magnitude.
            diagonal = jacobian.square().sum(1) + prior_weight
            scale = diagonal.clamp_min(1e-12 * diagonal.amax(-1, keepdim=True)).rsqrt()
            scaled = jacobian * scale.unsqueeze(1)
            hessian = scaled.transpose(1, 2) @ scaled
            hessian.diagonal(dim1=-2, dim2=-1).add_(prior_weight * scale.square())
            step = scale * _damped_step(hessian, scale * gradient, damping[active])
            # Decrease promised by the quadratic model of cost = |r|² + prior: −2gᵀδ − δᵀHδ.
            scaled_step = step / scale
            model_curvature = (scaled_step.unsqueeze(1) @ hessian @ scaled_step.unsqueeze(-1)).flatten()
            predicted = -(2 * (gradient * step).sum(-1) + model_curvature)
            candidate = current.clone()
            candidate[:, free] += step
            new_cost = self._cost(candidate, part_rows, part)
            accepted = torch.isfinite(new_cost) & (new_cost < current_cost)
            params[active[accepted]] = candidate[accepted]
            cost[active] = torch.where(accepted, new_cost, current_cost)
            damping[active] = torch.where(accepted, (damping[active] * 0.2).clamp_min(1e-9), damping[active] * 10.0)
            converged = (
                (predicted.double() <= tolerance * current_cost)
                | (accepted & (current_cost - new_cost <= tolerance * current_cost))
                | (damping[active] >= 1e8)
            )
            active = active[~converged]
            if active.numel() == 0:
                break
        return params

    # video solver ----------------------------------------------------------------------------
    def _fit_chunks(
        self, params: torch.Tensor, landmarks: torch.Tensor, weights: torch.Tensor, frame_groups: frozenset[str]
    ) -> torch.Tensor:
        """Smooth a long video window by window with the identity fixed (memory bounded by a window).

        Each window starts ``chunk_overlap`` frames before the end of the previous one, re-fits
        those frames and is tied to the two frames before it, so the joins stay smooth.
        """
        config = self.config
        frames = landmarks.shape[0]
        overlap = min(config.chunk_overlap, config.chunk_frames // 2)
        start = 0
        while start < frames:
            first = max(start - overlap, 0)
            stop = min(first + config.chunk_frames, frames)
            window = slice(first, stop)
            params[window] = self._fit_window(
                params[window], landmarks[window], weights[window], frame_groups, False, params[max(first - 2, 0) : first]
            )
            start = stop
        return params

    def _fit_window(
        self,
        params: torch.Tensor,
        landmarks: torch.Tensor,
        weights: torch.Tensor,
        frame_groups: frozenset[str],
        share_identity: bool,
        anchor: torch.Tensor,
        smoothing: float | None = None,
    ) -> torch.Tensor:
        """Pose warm-up per frame, then the joint smoothed fit of consecutive frames."""
        config = self.config
        params = params.clone()
        identity = self._group_slice("identity")
        if share_identity:
            params[:, identity] = params[:, identity].mean(0)
        problem = self._problem(landmarks, weights, params)
        pose_groups = frame_groups & set(POSE_GROUPS)
        if pose_groups and config.pose_iterations > 0 and (share_identity or frame_groups != pose_groups):
            problem.free = self._columns(pose_groups)
            rows = self._rows(self._select_contour(params))
            params = self._levenberg_marquardt(params, rows, problem, config.pose_iterations)
        smoothing = config.temporal_smoothing if smoothing is None else smoothing
        frame_columns = self._columns(frame_groups)
        anchor_landmarks = landmarks.new_zeros(anchor.shape[0], 2 * NUM_LANDMARKS)
        if anchor.shape[0]:
            anchor_landmarks, _ = self._tracks(anchor, self._rows(self._select_contour(anchor)), None)
        chain = _Chain(
            frame_columns=frame_columns,
            identity_columns=self._columns(["identity"] if share_identity else []),
            smoothing=smoothing,
            anchor_landmarks=anchor_landmarks.double(),
            identity_prior=problem.prior_weight[identity] if share_identity else problem.prior_weight[:0],
            band=_second_difference_band(anchor.shape[0], params.shape[0], params.device),
        )
        if share_identity:
            # The shared identity's prior belongs to the window once, not to every frame.
            problem.prior_weight = problem.prior_weight.clone()
            problem.prior_weight[identity] = 0.0
        rounds, iterations = self._schedule()
        slots = None
        for _ in range(rounds):
            previous, slots = slots, self._select_contour(params)
            if previous is not None and torch.equal(slots, previous):
                break
            rows = self._rows(slots)
            params = self._joint_levenberg_marquardt(params, rows, problem, chain, iterations)
        return params

    def _tracks(
        self, params: torch.Tensor, rows: _Rows, free: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Projected landmarks ``[B, 2L]`` (x, y interleaved) and, for ``free`` columns, their
        unweighted Jacobian."""
        origin = params.new_zeros(params.shape[0], rows.mean.shape[1], 2)
        return self._residuals(params, rows, origin, None, free)

    def _joint_cost(self, params: torch.Tensor, rows: _Rows, problem: _Problem, chain: _Chain) -> torch.Tensor:
        tracks, _ = self._tracks(params, rows, None)
        residual = (tracks.view_as(problem.observed) - problem.observed) * problem.sqrt_weights.unsqueeze(-1)
        prior = (problem.prior_weight * (params - problem.prior_mean).square()).sum()
        acceleration = torch.cat([chain.anchor_landmarks, tracks.double()]).diff(n=2, dim=0)
        identity_prior = (chain.identity_prior * params[0, chain.identity_columns].square()).sum()
        data = residual.double().square().sum() + prior.double() + identity_prior.double()
        return data + chain.smoothing * acceleration.square().sum()

    def _joint_levenberg_marquardt(
        self, params: torch.Tensor, rows: _Rows, problem: _Problem, chain: _Chain, iterations: int
    ) -> torch.Tensor:
        """Gauss–Newton/LM on per-frame pose and expression plus one shared identity. The normal
        equations are block pentadiagonal in the frames (the landmark acceleration couples each
        frame with two neighbours on either side) with a dense identity border; every step solves
        them exactly (:func:`_bordered_banded_solve`)."""
        frame_columns, identity_columns = chain.frame_columns, chain.identity_columns
        free = torch.cat([frame_columns, identity_columns])
        n_frame = frame_columns.numel()
        frames = params.shape[0]
        anchors = chain.anchor_landmarks.shape[0]
        smoothing, band = chain.smoothing, chain.band
        frame_prior = problem.prior_weight[frame_columns].double()
        identity_prior = chain.identity_prior.double()
        observed = problem.observed.flatten(1).double()
        row_weights = problem.sqrt_weights.repeat_interleave(2, dim=1).double()  # per residual row
        cost = self._joint_cost(params, rows, problem, chain)
        damping = 1e-3
        for _ in range(iterations):
            tracks, jacobian = self._tracks(params, rows, free)
            tracks, jacobian = tracks.double(), jacobian.double()  # [T, 136], [T, 136, n + m]
            weighted = jacobian * row_weights.unsqueeze(-1)
            residual = (tracks - observed) * row_weights
            hessian = weighted.transpose(1, 2) @ weighted
            gradient = (weighted.transpose(1, 2) @ residual.unsqueeze(-1)).squeeze(-1)
            frame_jacobian, identity_jacobian = jacobian[..., :n_frame], jacobian[..., n_frame:]
            # Landmark acceleration a = D₂·L over anchors + window, and its derivatives.
            acceleration = torch.cat([chain.anchor_landmarks, tracks]).diff(n=2, dim=0)
            pulled_back = _second_difference_transpose(acceleration, frames)  # (D₂ᵀa) per frame, [T, 136]
            frame_hessian = hessian[:, :n_frame, :n_frame] + torch.diag(frame_prior)
            frame_hessian = frame_hessian + smoothing * band[0, :, None, None] * (
                frame_jacobian.transpose(1, 2) @ frame_jacobian
            )
            next_coupling = smoothing * band[1, :-1, None, None] * (frame_jacobian[:-1].transpose(1, 2) @ frame_jacobian[1:])
            skip_coupling = smoothing * band[2, :-2, None, None] * (frame_jacobian[:-2].transpose(1, 2) @ frame_jacobian[2:])
            frame_offset = (params - problem.prior_mean)[:, frame_columns].double()
            frame_gradient = gradient[:, :n_frame] + frame_prior * frame_offset
            frame_gradient = frame_gradient + smoothing * (frame_jacobian.transpose(1, 2) @ pulled_back.unsqueeze(-1)).squeeze(-1)
            identity_hessian = hessian[:, n_frame:, n_frame:].sum(0) + torch.diag(identity_prior)
            identity_gradient = gradient[:, n_frame:].sum(0) + identity_prior * params[0, identity_columns].double()
            coupling = hessian[:, :n_frame, n_frame:]
            if identity_columns.numel():
                # The shared identity moves every frame's landmarks, so it changes the acceleration too
                # (anchor frames are fixed and do not move with it).
                padded = torch.cat([identity_jacobian.new_zeros(anchors, *identity_jacobian.shape[1:]), identity_jacobian])
                identity_acceleration = padded.diff(n=2, dim=0)  # [K, 136, m]
                identity_hessian = identity_hessian + smoothing * torch.einsum(
                    "krm,krl->ml", identity_acceleration, identity_acceleration
                )
                identity_gradient = identity_gradient + smoothing * torch.einsum(
                    "krm,kr->m", identity_acceleration, acceleration
                )
                coupling = coupling + smoothing * frame_jacobian.transpose(1, 2) @ _second_difference_transpose(
                    identity_acceleration, frames
                )
            while True:
                frame_step, identity_step = _bordered_banded_solve(
                    frame_hessian, next_coupling, skip_coupling, frame_gradient, coupling, identity_hessian,
                    identity_gradient, damping,
                )
                candidate = params.clone()
                candidate[:, free] += torch.cat([frame_step, identity_step.expand(frames, -1)], -1).float()
                new_cost = self._joint_cost(candidate, rows, problem, chain)
                if torch.isfinite(new_cost) and new_cost < cost:
                    break
                damping *= 10.0
                if damping > 1e8:
                    return params
            gain = float((cost - new_cost) / cost.clamp_min(1e-12))
            params, cost = candidate, new_cost
            damping = max(damping * 0.2, 1e-9)
            if gain < self.config.tolerance:
                break
        return params

    # output ---------------------------------------------------------------------------------------
    def _result(
        self,
        params: torch.Tensor,
        landmarks: torch.Tensor,
        weights: torch.Tensor,
        init: FaceCoefficients | None,
        slots: torch.Tensor,
    ) -> FitResult:
        batch = params.shape[0]
        points = self._points(params, self._rows(slots))
        world = points @ rotation_matrices(params[:, :3]).transpose(1, 2) + params[:, None, 3:6]
        fitted = self.camera.project(world)
        distance = (fitted - landmarks).square().sum(-1)
        used = (weights > 0).float()
        error = ((distance * used).sum(-1) / used.sum(-1)).sqrt()
        base = init if init is not None else FaceCoefficients.neutral(batch, self.dims, device=params.device)
        coefficients = base.replace(**{group: params[:, self._group_slice(group)].contiguous() for group in ALL_GROUPS})
        return FitResult(coefficients=coefficients, landmark_error=error, fitted_landmarks=fitted)


def _rotation_derivatives(angles: torch.Tensor) -> torch.Tensor:
    """dR/d(angle) ``[B, 3, 3, 3]`` for R = Rz·Ry·Rx, indexed (angle, row, column)."""
    x, y, z = angles.unbind(-1)
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    cx, sx, cy, sy, cz, sz = x.cos(), x.sin(), y.cos(), y.sin(), z.cos(), z.sin()

    def matrix(*entries: torch.Tensor) -> torch.Tensor:
        return torch.stack(entries, -1).view(-1, 3, 3)

    rot_x = matrix(one, zero, zero, zero, cx, -sx, zero, sx, cx)
    rot_y = matrix(cy, zero, sy, zero, one, zero, -sy, zero, cy)
    rot_z = matrix(cz, -sz, zero, sz, cz, zero, zero, zero, one)
    d_x = matrix(zero, zero, zero, zero, -sx, -cx, zero, cx, -sx)
    d_y = matrix(-sy, zero, cy, zero, zero, zero, -cy, zero, -sy)
    d_z = matrix(-sz, -cz, zero, cz, -sz, zero, zero, zero, zero)
    return torch.stack([rot_z @ rot_y @ d_x, rot_z @ d_y @ rot_x, d_z @ rot_y @ rot_x], 1)


def _euler_angles(rotation: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rotation_matrices`: ``[B, 3, 3]`` to (x, y, z) with R = Rz·Ry·Rx."""
    y = torch.asin((-rotation[:, 2, 0]).clamp(-1.0, 1.0))
    x = torch.atan2(rotation[:, 2, 1], rotation[:, 2, 2])
    z = torch.atan2(rotation[:, 1, 0], rotation[:, 0, 0])
    return torch.stack([x, y, z], -1)


def _damped_step(hessian: torch.Tensor, gradient: torch.Tensor, damping: torch.Tensor) -> torch.Tensor:
    """Solve (H + λ·diag(H)) δ = −g per face for a system already scaled to a unit diagonal."""
    damped = hessian.clone()
    damped.diagonal(dim1=-2, dim2=-1).add_(damping.unsqueeze(-1))
    factor, info = torch.linalg.cholesky_ex(damped)
    step = -torch.cholesky_solve(gradient.unsqueeze(-1), factor).squeeze(-1)
    # A face whose system is not positive definite takes no step; its damping then grows.
    return torch.where((info == 0).unsqueeze(-1) & torch.isfinite(step), step, torch.zeros_like(step))


def _second_difference_band(anchors: int, frames: int, device: torch.device) -> torch.Tensor:
    """Diagonal, first and second off-diagonal of D₂ᵀD₂ for the window's frames ``[3, T]`` (the
    off-diagonals zero padded at the end), D₂ the second differences of anchors + frames."""
    nodes = anchors + frames
    second = torch.zeros(max(nodes - 2, 0), nodes, dtype=torch.float64, device=device)
    for offset, value in enumerate((1.0, -2.0, 1.0)):
        second.diagonal(offset).fill_(value)
    gram = (second.T @ second)[anchors:, anchors:]
    band = torch.zeros(3, frames, dtype=torch.float64, device=device)
    for offset in range(3):
        diagonal = gram.diagonal(offset)
        band[offset, : diagonal.numel()] = diagonal
    return band


def _second_difference_transpose(differences: torch.Tensor, frames: int) -> torch.Tensor:
    """D₂ᵀ·d for second differences ``d [K, ...]`` of a sequence whose last ``frames`` entries are
    the window's: the rows of those frames, ``[frames, ...]``."""
    padding = differences.new_zeros(2, *differences.shape[1:])
    padded = torch.cat([padding, differences, padding])
    return (padded[2:] - 2 * padded[1:-1] + padded[:-2])[-frames:]


def _bordered_banded_solve(
    frame_hessian: torch.Tensor,
    next_coupling: torch.Tensor,
    skip_coupling: torch.Tensor,
    frame_gradient: torch.Tensor,
    coupling: torch.Tensor,
    identity_hessian: torch.Tensor,
    identity_gradient: torch.Tensor,
    damping: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve the damped system [[A, C], [Cᵀ, K]]·[δf; δi] = −[g_f; g_i] exactly.

    A is block pentadiagonal: diagonal blocks ``frame_hessian [T, n, n]``, blocks
    ``next_coupling [T−1, n, n]`` between frames t and t+1 and ``skip_coupling [T−2, n, n]``
    between t and t+2 (their transposes below the diagonal). C stacks ``coupling [T, n, m]``.
    Pairs of frames make A block tridiagonal, solved by block elimination in O(T·n²·(n + m));
    the m × m Schur complement K − CᵀA⁻¹C then gives the identity step. Returns NaN steps if
    the system is not positive definite.
    """
    frames, n = frame_gradient.shape
    m = identity_gradient.numel()
    blocks = frame_hessian + torch.diag_embed(damping * frame_hessian.diagonal(dim1=-2, dim2=-1))
    right = torch.cat([frame_gradient.unsqueeze(-1), coupling], -1)  # [T, n, 1 + m]
    if not next_coupling.any() and not skip_coupling.any():
        factors, info = torch.linalg.cholesky_ex(blocks)
        solved = torch.cholesky_solve(right, factors)
        failed = bool((info != 0).any())
    else:
        solved, failed = _paired_tridiagonal_solve(blocks, next_coupling, skip_coupling, right)
    if failed:
        nan = frame_gradient.new_full((), float("nan"))
        return nan.expand(frames, n), nan.expand(m)
    gradient_solved, coupling_solved = solved[..., 0], solved[..., 1:]
    if m == 0:
        return -gradient_solved, identity_gradient
    schur = identity_hessian - torch.einsum("tnm,tnk->mk", coupling, coupling_solved)
    schur = schur + torch.diag(damping * identity_hessian.diagonal())
    schur_rhs = -identity_gradient + torch.einsum("tnm,tn->m", coupling, gradient_solved)
    factor, info = torch.linalg.cholesky_ex(schur)
    if int(info) != 0:
        nan = frame_gradient.new_full((), float("nan"))
        return nan.expand(frames, n), nan.expand(m)
    identity_step = torch.cholesky_solve(schur_rhs.unsqueeze(-1), factor).squeeze(-1)
    frame_step = -gradient_solved - coupling_solved @ identity_step
    return frame_step, identity_step


def _paired_tridiagonal_solve(
    blocks: torch.Tensor, next_coupling: torch.Tensor, skip_coupling: torch.Tensor, right: torch.Tensor
) -> tuple[torch.Tensor, bool]:
    """A⁻¹·right for the block-pentadiagonal A of :func:`_bordered_banded_solve`.

    Frames (2k, 2k+1) form super-block k; then A is block tridiagonal with diagonal blocks
    [[D₂ₖ, N₂ₖ], [N₂ₖᵀ, D₂ₖ₊₁]] and upper blocks [[S₂ₖ, 0], [N₂ₖ₊₁, S₂ₖ₊₁]] (N, S the couplings to
    the next and next-but-one frame). An odd frame count gets a decoupled dummy frame.
    """
    frames, n, _ = blocks.shape
    if frames % 2:
        blocks = torch.cat([blocks, torch.eye(n, dtype=blocks.dtype, device=blocks.device).unsqueeze(0)])
        right = torch.cat([right, right.new_zeros(1, *right.shape[1:])])
    total = blocks.shape[0]
    # Couplings past the last frame are zero.
    next_coupling = torch.cat([next_coupling, next_coupling.new_zeros(total + 2 - next_coupling.shape[0], n, n)])
    skip_coupling = torch.cat([skip_coupling, skip_coupling.new_zeros(total + 2 - skip_coupling.shape[0], n, n)])
    diagonal = torch.cat(
        [
            torch.cat([blocks[0::2], next_coupling[0:total:2]], -1),
            torch.cat([next_coupling[0:total:2].transpose(1, 2), blocks[1::2]], -1),
        ],
        -2,
    )
    upper = torch.cat(
        [
            torch.cat([skip_coupling[0:total:2], torch.zeros_like(skip_coupling[0:total:2])], -1),
            torch.cat([next_coupling[1:total:2], skip_coupling[1:total:2]], -1),
        ],
        -2,
    )
    pairs = total // 2
    right = right.reshape(pairs, 2 * n, -1)
    factors, reduced, failed = [], [], False
    for k in range(pairs):
        block, rhs = diagonal[k], right[k]
        if k > 0:
            # Eliminating super-block k−1 leaves Uᵀ·D̃⁻¹·U on block k and Uᵀ·D̃⁻¹·z on its right side.
            link = upper[k - 1]
            eliminated = torch.cholesky_solve(torch.cat([link, reduced[-1]], -1), factors[-1])
            block = block - link.T @ eliminated[:, : 2 * n]
            rhs = rhs - link.T @ eliminated[:, 2 * n :]
        factor, info = torch.linalg.cholesky_ex(block)
        failed |= bool(info != 0)
        factors.append(factor)
        reduced.append(rhs)
    solution = [torch.cholesky_solve(reduced[-1], factors[-1])]
    for k in range(pairs - 2, -1, -1):
        solution.append(torch.cholesky_solve(reduced[k] - upper[k] @ solution[-1], factors[k]))
    solved = torch.stack(solution[::-1]).reshape(2 * pairs, n, -1)
    return solved[:frames], failed
