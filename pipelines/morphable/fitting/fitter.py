"""Fit 3DMM pose, identity and expression to 68 iBUG landmarks by batched Levenberg–Marquardt.

The residuals are the weighted pixel distances between the observed landmarks and the projected
landmark vertices (:mod:`.projection`, with the jaw contour of :mod:`.contour`), plus the priors of
:mod:`.priors`. Image faces (:meth:`LandmarkFitter.fit`) are independent problems
(:mod:`.face_solver`); a video (:meth:`LandmarkFitter.fit_video`) shares one identity and is
smoothed over time (:mod:`.video_solver`).
"""
from __future__ import annotations

from collections.abc import Collection

import torch

from ...errors import TalkingFaceError
from ..camera import PerspectiveCamera
from ..coefficients import FaceCoefficients
from ..model import NUM_LANDMARKS, MorphableModel
from .config import FitConfig, FitResult
from .face_solver import FaceSolver
from .initial_pose import closed_form_pose
from .parameters import ALL_GROUPS, POSE_GROUPS, ParameterLayout
from .priors import fit_problem
from .projection import Correspondence, LandmarkProjection
from .video_solver import VideoSolver


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
        self.layout = ParameterLayout(self.dims, model.mean_shape.device)
        self.num_params = self.layout.size
        self.projection = LandmarkProjection(model, self.camera, self.layout, self.config.contour)
        self.pixels_per_unit = self.projection.pixels_per_unit()
        self.face_solver = FaceSolver(self.projection, self.layout, self.config)
        self.video_solver = VideoSolver(self.face_solver, self.pixels_per_unit)

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
        landmarks, weights, optimize, init = self._checked(landmarks, weights, optimize, init)
        results = []
        for start in range(0, landmarks.shape[0], self.config.batch_size):
            part = slice(start, start + self.config.batch_size)
            results.append(self._fit_batch(landmarks[part], weights[part], optimize, init[part] if init is not None else None))
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
        landmarks, weights, optimize, init = self._checked(landmarks, weights, optimize, init)
        params = self._initial_params(landmarks, weights, init)
        params = self.video_solver.solve(params, landmarks, weights, optimize - {"identity"}, "identity" in optimize)
        return self._result(params, landmarks, weights, init, self.projection.select_contour(params, landmarks))

    # input checks ---------------------------------------------------------------------------
    def _checked(
        self, landmarks: torch.Tensor, weights: torch.Tensor | None, optimize: Collection[str], init: FaceCoefficients | None
    ) -> tuple[torch.Tensor, torch.Tensor, frozenset[str], FaceCoefficients | None]:
        """The arguments of :meth:`fit` and :meth:`fit_video` checked, on the model's device, ``init``
        one row per face."""
        optimize = self._check_groups(optimize, init)
        landmarks, weights = self._check_landmarks(landmarks, weights)
        if init is not None:
            self._check_init(init, landmarks.shape[0])
            init = init.to(landmarks.device, torch.float32).repeat_to(landmarks.shape[0])
        return landmarks, weights, optimize, init

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
        device = self.layout.device
        landmarks = landmarks.to(device, torch.float32)
        if weights is None:
            weights = torch.ones(NUM_LANDMARKS, device=device)
            weights[self.projection.contour_slots] = self.config.contour_weight
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

    # solving -------------------------------------------------------------------------------------
    def _initial_params(
        self, landmarks: torch.Tensor, weights: torch.Tensor, init: FaceCoefficients | None
    ) -> torch.Tensor:
        batch = landmarks.shape[0]
        params = landmarks.new_zeros(batch, self.num_params)
        if init is not None:
            self.layout.from_coefficients(init, params)
        else:
            params[:, :3], params[:, 3:6] = closed_form_pose(self.projection, landmarks, weights, params)
        return params

    def _fit_batch(
        self, landmarks: torch.Tensor, weights: torch.Tensor, optimize: frozenset[str], init: FaceCoefficients | None
    ) -> FitResult:
        params = self._initial_params(landmarks, weights, init)
        problem = fit_problem(self.config, self.layout, self.pixels_per_unit, landmarks, weights, params)
        params, correspondence = self.face_solver.solve(params, problem, optimize)
        return self._result(params, landmarks, weights, init, correspondence)

    # output ---------------------------------------------------------------------------------------
    def _result(
        self,
        params: torch.Tensor,
        landmarks: torch.Tensor,
        weights: torch.Tensor,
        init: FaceCoefficients | None,
        correspondence: Correspondence,
    ) -> FitResult:
        batch = params.shape[0]
        fitted = self.projection.project(params, self.projection.rows(correspondence))
        distance = (fitted - landmarks).square().sum(-1)
        used = (weights > 0).float()
        error = ((distance * used).sum(-1) / used.sum(-1)).sqrt()
        base = init if init is not None else FaceCoefficients.neutral(batch, self.dims, device=params.device)
        return FitResult(coefficients=self.layout.to_coefficients(params, base), landmark_error=error, fitted_landmarks=fitted)
