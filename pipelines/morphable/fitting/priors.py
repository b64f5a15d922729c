"""The regularisers of the landmark fit: Gaussian priors on the coefficients (they are ~N(0, 1) in
these models) and, optionally, on the pose, bundled with the observations into one problem."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..model import NUM_LANDMARKS
from .config import FitConfig
from .parameters import ParameterLayout
from .projection import LandmarkProjection, Rows


@dataclass
class FitProblem:
    """The fixed data of one batch: observed landmarks, weights, priors, which columns move."""

    observed: torch.Tensor  # [B, L, 2]
    sqrt_weights: torch.Tensor  # [B, L]
    prior_weight: torch.Tensor  # [P]
    prior_mean: torch.Tensor  # [B, P]
    free: torch.Tensor  # [Pf] indices into the parameter vector

    def rows(self, index: torch.Tensor) -> FitProblem:
        return FitProblem(self.observed[index], self.sqrt_weights[index], self.prior_weight, self.prior_mean[index], self.free)

    def prior_cost(self, params: torch.Tensor) -> torch.Tensor:
        """``[B]``: Σ prior weight · (parameter − prior mean)²."""
        return (self.prior_weight * (params - self.prior_mean).square()).sum(-1)

    def cost(self, projection: LandmarkProjection, params: torch.Tensor, rows: Rows) -> torch.Tensor:
        """Per-face cost: weighted squared landmark residuals plus priors, ``[B]`` float64."""
        residual, _ = projection.residuals(params, rows, self.observed, self.sqrt_weights, None)
        return residual.square().sum(-1).double() + self.prior_cost(params).double()


def fit_problem(
    config: FitConfig, layout: ParameterLayout, pixels_per_unit: torch.Tensor, landmarks: torch.Tensor,
    weights: torch.Tensor, params: torch.Tensor,
) -> FitProblem:
    """Observations and priors (the pose prior pulls towards the pose in ``params``, scaled by the
    landmark motion each pose parameter causes); the caller sets which columns are free for each stage."""
    prior_weight = params.new_zeros(layout.size)
    prior_weight[layout.slice("identity")] = config.identity_prior
    prior_weight[layout.slice("expression")] = config.expression_prior
    prior_weight[:6] = config.pose_prior * NUM_LANDMARKS * pixels_per_unit[:6].square()
    prior_mean = torch.zeros_like(params)
    prior_mean[:, :6] = params[:, :6]
    return FitProblem(landmarks, weights.sqrt(), prior_weight, prior_mean, layout.columns([]))
