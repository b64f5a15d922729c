"""Image faces as independent problems solved side by side by batched Levenberg–Marquardt: one
dense ``P × P`` system per face and iteration, with a damping factor of its own."""
from __future__ import annotations

import torch

from .config import FitConfig
from .parameters import POSE_GROUPS, ParameterLayout
from .priors import FitProblem
from .projection import Correspondence, LandmarkProjection, Rows


class FaceSolver:
    def __init__(self, projection: LandmarkProjection, layout: ParameterLayout, config: FitConfig) -> None:
        self.projection = projection
        self.layout = layout
        self.config = config

    def solve(self, params: torch.Tensor, problem: FitProblem, optimize: frozenset[str]) -> tuple[torch.Tensor, Correspondence]:
        """Fit the ``optimize`` groups of every face: the pose alone first (so the shape does not bend
        to make up for a rough initial pose), then rounds of contour re-selection and LM steps.
        Returns the parameters and the landmark correspondence of the last round."""
        pose_groups = optimize & set(POSE_GROUPS)
        if pose_groups and optimize != pose_groups and self.config.pose_iterations > 0:
            params = self.fit_pose(params, problem, pose_groups)
        problem.free = self.layout.columns(optimize)
        rounds, iterations = self.config.schedule()
        correspondence = None
        for _ in range(rounds):
            previous, correspondence = correspondence, self.projection.select_contour(params, problem.observed)
            # A face whose correspondences did not change has already converged on this problem.
            moved = correspondence.changed(previous)
            if not moved.any():
                break
            faces = torch.nonzero(moved).flatten()
            params = self.levenberg_marquardt(params, self.projection.rows(correspondence), problem, iterations, faces)
        return params, correspondence

    def fit_pose(self, params: torch.Tensor, problem: FitProblem, pose_groups: set[str] | frozenset[str]) -> torch.Tensor:
        """``config.pose_iterations`` LM steps on the pose groups alone."""
        problem.free = self.layout.columns(pose_groups)
        rows = self.projection.rows(self.projection.select_contour(params, problem.observed))
        return self.levenberg_marquardt(params, rows, problem, self.config.pose_iterations)

    def levenberg_marquardt(
        self,
        params: torch.Tensor,
        rows: Rows,
        problem: FitProblem,
        iterations: int,
        faces: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Damped Gauss–Newton steps, each face with its own damping, accepted only if they help.

        Only ``faces`` (default all) take steps; converged faces drop out of the batch, so the work
        follows the slowest faces only.
        """
        projection = self.projection
        params = params.clone()
        free = problem.free
        prior_weight = problem.prior_weight[free]
        cost = problem.cost(projection, params, rows)
        damping = torch.full_like(cost, 1e-3)
        active = torch.arange(params.shape[0], device=params.device) if faces is None else faces
        tolerance = self.config.tolerance
        for _ in range(iterations):
            part, part_rows = problem.rows(active), rows.take(active)
            current, current_cost = params[active], cost[active]
            residual, jacobian = projection.residuals(current, part_rows, part.observed, part.sqrt_weights, free)
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
            step = scale * damped_step(hessian, scale * gradient, damping[active])
            # Decrease promised by the quadratic model of cost = |r|² + prior: −2gᵀδ − δᵀHδ.
            scaled_step = step / scale
            model_curvature = (scaled_step.unsqueeze(1) @ hessian @ scaled_step.unsqueeze(-1)).flatten()
            predicted = -(2 * (gradient * step).sum(-1) + model_curvature)
            candidate = current.clone()
            candidate[:, free] += step
            new_cost = part.cost(projection, candidate, part_rows)
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


def damped_step(hessian: torch.Tensor, gradient: torch.Tensor, damping: torch.Tensor) -> torch.Tensor:
    """Solve (H + λ·diag(H)) δ = −g per face for a system already scaled to a unit diagonal."""
    damped = hessian.clone()
    damped.diagonal(dim1=-2, dim2=-1).add_(damping.unsqueeze(-1))
    factor, info = torch.linalg.cholesky_ex(damped)
    step = -torch.cholesky_solve(gradient.unsqueeze(-1), factor).squeeze(-1)
    # A face whose system is not positive definite takes no step; its damping then grows.
    return torch.where((info == 0).unsqueeze(-1) & torch.isfinite(step), step, torch.zeros_like(step))
