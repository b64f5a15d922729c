"""Video: one shared identity across the frames, and the acceleration (second difference) of the
fitted landmark tracks penalised, which smooths jitter without holding back steady motion. Measured
on the landmarks rather than on the parameters, it cannot be dodged through parameters that barely
move them (depth against face size). Long videos are solved window by window with the identity
fixed; the normal equations of a window are solved exactly by :mod:`.banded_solve`."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..model import NUM_LANDMARKS
from .banded_solve import bordered_banded_solve, second_difference_band, second_difference_transpose
from .config import FitConfig
from .face_solver import FaceSolver
from .parameters import POSE_GROUPS, ParameterLayout
from .priors import FitProblem, fit_problem
from .projection import LandmarkProjection, Rows


@dataclass
class SmoothnessChain:
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


class VideoSolver:
    """Fits the frames of one face with :class:`FaceSolver`'s pose warm-up, then jointly smoothed."""

    def __init__(self, face_solver: FaceSolver, pixels_per_unit: torch.Tensor) -> None:
        self.face_solver = face_solver
        self.projection: LandmarkProjection = face_solver.projection
        self.layout: ParameterLayout = face_solver.layout
        self.config: FitConfig = face_solver.config
        self.pixels_per_unit = pixels_per_unit

    def solve(
        self, params: torch.Tensor, landmarks: torch.Tensor, weights: torch.Tensor, frame_groups: frozenset[str],
        share_identity: bool,
    ) -> torch.Tensor:
        """All frames from their initial ``params``; a video longer than ``config.chunk_frames`` takes
        its identity from at most ``config.identity_frames`` frames spread over it, then goes window
        by window."""
        config = self.config
        frames = landmarks.shape[0]
        if frames <= config.chunk_frames:
            return self.fit_window(params, landmarks, weights, frame_groups, share_identity, params[:0])
        if share_identity:
            count = min(config.identity_frames, frames)
            picks = torch.linspace(0, frames - 1, count, device=landmarks.device).round().long().unique()
            sampled = self.fit_window(
                params[picks], landmarks[picks], weights[picks], frame_groups, True, params[:0], smoothing=0.0
            )
            params[:, self.layout.slice("identity")] = sampled[0, self.layout.slice("identity")]
        return self.fit_chunks(params, landmarks, weights, frame_groups)

    def fit_chunks(
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
            params[window] = self.fit_window(
                params[window], landmarks[window], weights[window], frame_groups, False, params[max(first - 2, 0) : first]
            )
            start = stop
        return params

    def fit_window(
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
        identity = self.layout.slice("identity")
        if share_identity:
            params[:, identity] = params[:, identity].mean(0)
        problem = fit_problem(config, self.layout, self.pixels_per_unit, landmarks, weights, params)
        pose_groups = frame_groups & set(POSE_GROUPS)
        if pose_groups and config.pose_iterations > 0 and (share_identity or frame_groups != pose_groups):
            params = self.face_solver.fit_pose(params, problem, pose_groups)
        smoothing = config.temporal_smoothing if smoothing is None else smoothing
        frame_columns = self.layout.columns(frame_groups)
        anchor_landmarks = landmarks.new_zeros(anchor.shape[0], 2 * NUM_LANDMARKS)
        if anchor.shape[0]:
            anchor_landmarks, _ = self.projection.tracks(anchor, self.projection.rows(self.projection.select_contour(anchor)),
                                                         None)
        chain = SmoothnessChain(
            frame_columns=frame_columns,
            identity_columns=self.layout.columns(["identity"] if share_identity else []),
            smoothing=smoothing,
            anchor_landmarks=anchor_landmarks.double(),
            identity_prior=problem.prior_weight[identity] if share_identity else problem.prior_weight[:0],
            band=second_difference_band(anchor.shape[0], params.shape[0], params.device),
        )
        if share_identity:
            # The shared identity's prior belongs to the window once, not to every frame.
            problem.prior_weight = problem.prior_weight.clone()
            problem.prior_weight[identity] = 0.0
        rounds, iterations = config.schedule()
        correspondence = None
        for _ in range(rounds):
            previous, correspondence = correspondence, self.projection.select_contour(params, problem.observed)
            if not correspondence.changed(previous).any():
                break
            rows = self.projection.rows(correspondence)
            params = self.joint_levenberg_marquardt(params, rows, problem, chain, iterations)
        return params

    def joint_cost(self, params: torch.Tensor, rows: Rows, problem: FitProblem, chain: SmoothnessChain) -> torch.Tensor:
        tracks, _ = self.projection.tracks(params, rows, None)
        residual = (tracks.view_as(problem.observed) - problem.observed) * problem.sqrt_weights.unsqueeze(-1)
        prior = (problem.prior_weight * (params - problem.prior_mean).square()).sum()
        acceleration = torch.cat([chain.anchor_landmarks, tracks.double()]).diff(n=2, dim=0)
        identity_prior = (chain.identity_prior * params[0, chain.identity_columns].square()).sum()
        data = residual.double().square().sum() + prior.double() + identity_prior.double()
        return data + chain.smoothing * acceleration.square().sum()

    def joint_levenberg_marquardt(
        self, params: torch.Tensor, rows: Rows, problem: FitProblem, chain: SmoothnessChain, iterations: int
    ) -> torch.Tensor:
        """Gauss–Newton/LM on per-frame pose and expression plus one shared identity. The normal
        equations are block pentadiagonal in the frames (the landmark acceleration couples each
        frame with two neighbours on either side) with a dense identity border; every step solves
        them exactly (:func:`bordered_banded_solve`)."""
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
        cost = self.joint_cost(params, rows, problem, chain)
        damping = 1e-3
        for _ in range(iterations):
            tracks, jacobian = self.projection.tracks(params, rows, free)
            tracks, jacobian = tracks.double(), jacobian.double()  # [T, 136], [T, 136, n + m]
            weighted = jacobian * row_weights.unsqueeze(-1)
            residual = (tracks - observed) * row_weights
            hessian = weighted.transpose(1, 2) @ weighted
            gradient = (weighted.transpose(1, 2) @ residual.unsqueeze(-1)).squeeze(-1)
            frame_jacobian, identity_jacobian = jacobian[..., :n_frame], jacobian[..., n_frame:]
            # Landmark acceleration a = D₂·L over anchors + window, and its derivatives.
            acceleration = torch.cat([chain.anchor_landmarks, tracks]).diff(n=2, dim=0)
            pulled_back = second_difference_transpose(acceleration, frames)  # (D₂ᵀa) per frame, [T, 136]
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
                coupling = coupling + smoothing * frame_jacobian.transpose(1, 2) @ second_difference_transpose(
                    identity_acceleration, frames
                )
            while True:
                frame_step, identity_step = bordered_banded_solve(
                    frame_hessian, next_coupling, skip_coupling, frame_gradient, coupling, identity_hessian,
                    identity_gradient, damping,
                )
                candidate = params.clone()
                candidate[:, free] += torch.cat([frame_step, identity_step.expand(frames, -1)], -1).float()
                new_cost = self.joint_cost(candidate, rows, problem, chain)
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
